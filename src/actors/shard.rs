//! ShardActor: consumes one partition queue and keeps each user's messages in order.
//!
//! Every user has a lane: the messages received for them, oldest first. Only the head of a
//! lane is ever being delivered, so a user's messages reach Customer.io one at a time, in
//! order, while other users' lanes proceed. A retry waits (unacked, bounded by
//! `delivery.max_attempts` and the backoff cap) at the head of its lane and holds back only
//! that user. A message is acked only after its outcome is durable: the processed event or
//! the dead letter is confirmed by the broker.
//!
//! When the stream ends (connection lost) the actor stops and its supervisor restarts it with
//! a new generation: lanes are emptied, since the broker redelivers every unacked message in
//! order. An attempt still in flight from the old generation keeps its lane busy until it
//! reports back, so no user ever has two attempts at once.

use super::consumer::{self, QueueConsumer, Resubscribe};
use super::messages::{AttemptDone, DeadLetter, Deliver, Drain, ErrorKind, Failure, FailureKind};
use super::retry::Backoff;
use super::{Dedup, DlqActor, IdentifyActor, TrackActor, TransactionalActor};
use crate::broker::topology::PROCESSED_EXCHANGE;
use crate::broker::{Acker, BrokerError, Delivery, Publish, SharedBroker};
use crate::domain::{Envelope, Route, UserId};
use actix::prelude::*;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// A processed event the broker did not confirm is published again for this long (first after
/// this pause, then doubling) before its message goes back to the queue.
const PROCESSED_RETRY_FOR: Duration = Duration::from_secs(1);
const PROCESSED_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What every shard shares: the broker, the delivering actors and the retry policy.
pub struct ShardDeps {
    pub broker: SharedBroker,
    pub identify: Addr<IdentifyActor>,
    pub track: Addr<TrackActor>,
    pub transactional: Addr<TransactionalActor>,
    pub dlq: Addr<DlqActor>,
    pub dedup: Arc<Dedup>,
    pub backoff: Backoff,
    pub max_attempts: u32,
    pub max_redeliveries: u32,
    pub prefetch: u16,
}

struct Pending {
    envelope: Envelope,
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    acker: Acker,
    attempts: u32,
    received: Instant,
}

impl Pending {
    fn into_dead_letter(self, error: String, kind: ErrorKind) -> DeadLetter {
        DeadLetter {
            processing_time_ms: self.received.elapsed().as_millis() as u64,
            body: self.body,
            original_exchange: self.exchange,
            original_routing_key: self.routing_key,
            error,
            kind,
            attempts: self.attempts,
            acker: self.acker,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LaneState {
    Idle,
    /// An attempt started by this generation is in flight.
    Attempting(u64),
    /// The head failed and waits for its retry timer.
    Waiting,
}

struct Lane {
    pending: VecDeque<Pending>,
    state: LaneState,
}

pub struct ShardActor {
    queue: String,
    deps: Arc<ShardDeps>,
    generation: u64,
    lanes: DashMap<UserId, Lane>,
    settles: TaskTracker,
    resubscribe: Resubscribe,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
}

impl ShardActor {
    pub fn new(queue: String, deps: Arc<ShardDeps>) -> Self {
        Self {
            queue,
            deps,
            generation: 0,
            lanes: DashMap::new(),
            settles: TaskTracker::new(),
            resubscribe: Resubscribe::default(),
            draining: false,
            drained: Vec::new(),
        }
    }

    fn receive(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let received = Instant::now();
        let envelope = match Envelope::parse(&delivery.body) {
            Ok(envelope) => envelope,
            Err(e) => {
                metrics::counter!("cio_gateway_envelopes_received_total", "type" => "invalid")
                    .increment(1);
                let letter = DeadLetter {
                    body: delivery.body,
                    original_exchange: delivery.exchange,
                    original_routing_key: delivery.routing_key,
                    error: e.to_string(),
                    kind: ErrorKind::Invalid,
                    attempts: 0,
                    processing_time_ms: received.elapsed().as_millis() as u64,
                    acker: delivery.acker,
                };
                self.dead_letter(letter, "unparsed");
                return;
            }
        };
        metrics::counter!("cio_gateway_envelopes_received_total", "type" => envelope.kind.as_str())
            .increment(1);
        if delivery.delivery_count > self.deps.max_redeliveries {
            // Returned to its queue this often with no outcome: something about it keeps its
            // consumer from finishing (a crash, a hang). Bounded here, never by the broker.
            let letter = DeadLetter {
                error: format!(
                    "returned to its queue {} times without an outcome (delivery.max_redeliveries = {})",
                    delivery.delivery_count, self.deps.max_redeliveries
                ),
                body: delivery.body,
                original_exchange: delivery.exchange,
                original_routing_key: delivery.routing_key,
                kind: ErrorKind::Exhausted,
                attempts: delivery.delivery_count,
                processing_time_ms: received.elapsed().as_millis() as u64,
                acker: delivery.acker,
            };
            self.dead_letter(letter, envelope.kind.as_str());
            return;
        }
        if delivery.routing_key != envelope.user.as_str() {
            // Partitions are chosen by routing key, lanes by userId: a mismatch would split
            // the user across shards and break their order.
            let letter = DeadLetter {
                error: format!(
                    "routing key {:?} is not the envelope's userId {:?}; publish with the userId as routing key",
                    delivery.routing_key,
                    envelope.user.as_str()
                ),
                body: delivery.body,
                original_exchange: delivery.exchange,
                original_routing_key: delivery.routing_key,
                kind: ErrorKind::Invalid,
                attempts: 0,
                processing_time_ms: received.elapsed().as_millis() as u64,
                acker: delivery.acker,
            };
            self.dead_letter(letter, envelope.kind.as_str());
            return;
        }
        let pending = Pending {
            envelope,
            body: delivery.body,
            exchange: delivery.exchange,
            routing_key: delivery.routing_key,
            acker: delivery.acker,
            attempts: 0,
            received,
        };
        if self.deps.dedup.contains_envelope(&pending.envelope) {
            // A redelivery of something this replica delivered: settle, do not send again.
            self.settle_delivered(pending);
            return;
        }
        let user = pending.envelope.user.clone();
        let idle = {
            let mut lane = self.lanes.entry(user.clone()).or_insert_with(|| {
                metrics::gauge!("cio_gateway_active_users").increment(1.0);
                Lane {
                    pending: VecDeque::new(),
                    state: LaneState::Idle,
                }
            });
            lane.pending.push_back(pending);
            lane.state == LaneState::Idle
        };
        if idle {
            self.dispatch(user, ctx);
        }
    }

    /// Starts an attempt for the head of the user's lane, or forgets an empty idle lane.
    fn dispatch(&mut self, user: UserId, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let generation = self.generation;
        let started = {
            let Some(mut guard) = self.lanes.get_mut(&user) else {
                return;
            };
            let lane = &mut *guard;
            if lane.state != LaneState::Idle {
                return;
            }
            // Checked again here: a redelivered copy that queued behind the old generation's
            // successful attempt must not be sent a second time.
            if lane
                .pending
                .front()
                .is_some_and(|head| self.deps.dedup.contains_envelope(&head.envelope))
            {
                let head = lane.pending.pop_front();
                drop(guard);
                if let Some(head) = head {
                    self.settle_delivered(head);
                }
                return self.dispatch(user, ctx);
            }
            match lane.pending.front_mut() {
                Some(head) => {
                    head.attempts += 1;
                    lane.state = LaneState::Attempting(generation);
                    Some((head.envelope.clone(), Dedup::key_of(&head.envelope)))
                }
                None => None,
            }
        };
        let Some((envelope, dedup_key)) = started else {
            self.forget_if_idle(&user);
            return;
        };
        let me = ctx.address();
        let deps = self.deps.clone();
        // Detached from this actor's context: the result must come back even across a restart.
        actix::spawn(async move {
            let route = envelope.kind.route();
            let message = Deliver { envelope };
            let sent = match route {
                Route::Identify => deps.identify.send(message).await,
                Route::Track => deps.track.send(message).await,
                Route::Transactional => deps.transactional.send(message).await,
            };
            let result = sent.unwrap_or_else(|e| Err(Failure::retryable(e.to_string())));
            me.do_send(AttemptDone {
                user,
                generation,
                dedup_key,
                result,
            });
        });
    }

    fn forget_if_idle(&self, user: &UserId) {
        let removed = self.lanes.remove_if(user, |_, lane| {
            lane.state == LaneState::Idle && lane.pending.is_empty()
        });
        if removed.is_some() {
            metrics::gauge!("cio_gateway_active_users").decrement(1.0);
        }
    }

    fn attempt_done(&mut self, done: AttemptDone, ctx: &mut Context<Self>) {
        if let (Ok(()), Some(key)) = (&done.result, &done.dedup_key) {
            self.deps.dedup.insert(key.clone());
        }
        let user = done.user;
        let current = done.generation == self.generation;
        let settled = {
            let Some(mut lane) = self.lanes.get_mut(&user) else {
                return;
            };
            lane.state = LaneState::Idle;
            if !current {
                // The message is redelivered (and deduplicated if this attempt succeeded).
                None
            } else {
                let attempts = lane.pending.front().map_or(0, |p| p.attempts);
                match &done.result {
                    Ok(()) => lane.pending.pop_front().map(|p| (p, None)),
                    Err(failure) => match failure.kind {
                        // Not this message's failure: give back the attempt `dispatch` counted
                        // and send it again (the client waits until the API recovers).
                        FailureKind::Paused => {
                            if let Some(head) = lane.pending.front_mut() {
                                head.attempts = head.attempts.saturating_sub(1);
                            }
                            None
                        }
                        FailureKind::Retryable { retry_after }
                            if attempts < self.deps.max_attempts =>
                        {
                            lane.state = LaneState::Waiting;
                            let delay = self.deps.backoff.delay(attempts, retry_after);
                            let kind = lane
                                .pending
                                .front()
                                .map_or("unknown", |p| p.envelope.kind.as_str());
                            metrics::counter!("cio_gateway_delivery_retries_total", "type" => kind)
                                .increment(1);
                            tracing::debug!(%user, attempts, ?delay, error = %failure.message, "retrying");
                            let user = user.clone();
                            ctx.run_later(delay, move |act, ctx| act.retry(user, ctx));
                            return;
                        }
                        FailureKind::Retryable { .. } => lane
                            .pending
                            .pop_front()
                            .map(|p| (p, Some(ErrorKind::Exhausted))),
                        FailureKind::Rejected => lane
                            .pending
                            .pop_front()
                            .map(|p| (p, Some(ErrorKind::Rejected))),
                        FailureKind::Invalid => lane
                            .pending
                            .pop_front()
                            .map(|p| (p, Some(ErrorKind::Invalid))),
                    },
                }
            }
        };
        match (settled, done.result) {
            (Some((pending, None)), _) => self.settle_delivered(pending),
            (Some((p, Some(kind))), Err(failure)) => {
                let message_type = p.envelope.kind.as_str();
                self.dead_letter(p.into_dead_letter(failure.message, kind), message_type);
            }
            _ => {}
        }
        self.dispatch(user, ctx);
        self.check_drained();
    }

    fn retry(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let waiting = self.lanes.get_mut(&user).map(|mut lane| {
            let waiting = lane.state == LaneState::Waiting;
            if waiting {
                lane.state = LaneState::Idle;
            }
            waiting
        });
        if waiting == Some(true) {
            self.dispatch(user, ctx);
        }
    }

    /// Publishes the processed event, then acks.
    fn settle_delivered(&self, pending: Pending) {
        let kind = pending.envelope.kind.as_str();
        metrics::counter!("cio_gateway_deliveries_total", "type" => kind, "outcome" => "success")
            .increment(1);
        if let Some(published) = pending.envelope.timestamp {
            let now = chrono::Utc::now().timestamp_millis();
            metrics::histogram!("cio_gateway_delivery_duration_seconds", "type" => kind)
                .record((now - published).max(0) as f64 / 1000.0);
        }
        let body = processed_body(&pending.body, pending.attempts, pending.received.elapsed());
        let message = Publish::new(PROCESSED_EXCHANGE, &pending.routing_key, body).optional_route();
        let broker = self.deps.broker.clone();
        let acker = pending.acker;
        self.settles.spawn(async move {
            let started = Instant::now();
            let mut pause = PROCESSED_RETRY_PAUSE;
            loop {
                match broker.publish(message.clone()).await {
                    Ok(()) => {
                        if let Err(e) = acker.ack().await {
                            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
                        }
                        return;
                    }
                    // Nacks come in bursts (a queue leader elected after a node was lost):
                    // try again shortly.
                    Err(BrokerError::NotConfirmed(e)) if started.elapsed() < PROCESSED_RETRY_FOR => {
                        tracing::debug!(error = %e, "processed event not confirmed; retrying");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                    // Returned to the queue, not left unacked: while its channel lives an
                    // unacked message is never redelivered. The redelivery finds it in the
                    // dedup window and publishes the processed event again, without a resend.
                    Err(e @ BrokerError::NotConfirmed(_)) => {
                        tracing::warn!(error = %e, "processed event not confirmed; requeued");
                        if let Err(e) = acker.requeue().await {
                            tracing::warn!(error = %e, "requeue failed; the message will be redelivered");
                        }
                        return;
                    }
                    // The connection is gone: the broker redelivers whatever it left unacked.
                    Err(e) => {
                        tracing::warn!(error = %e, "processed event not confirmed");
                        return;
                    }
                }
            }
        });
    }

    /// Hands a message to the DLQ actor, which acks it once the dead letter is confirmed.
    fn dead_letter(&self, letter: DeadLetter, message_type: &'static str) {
        metrics::counter!("cio_gateway_deliveries_total", "type" => message_type, "outcome" => "dead_letter")
            .increment(1);
        let dlq = self.deps.dlq.clone();
        self.settles.spawn(async move {
            match dlq.send(letter).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "dead letter not confirmed; left unacked")
                }
                Err(e) => tracing::error!(error = %e, "DLQ actor unavailable; left unacked"),
            }
        });
    }

    fn in_flight(&self) -> bool {
        self.lanes
            .iter()
            .any(|lane| matches!(lane.state, LaneState::Attempting(_)))
    }

    fn check_drained(&mut self) {
        if !self.draining || self.in_flight() || self.drained.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.drained);
        let settles = self.settles.clone();
        settles.close();
        actix::spawn(async move {
            settles.wait().await;
            for waiter in waiters {
                let _ = waiter.send(());
            }
        });
    }
}

/// The processed event of docs/reference.md §5: the envelope plus the outcome.
fn processed_body(body: &[u8], attempts: u32, took: Duration) -> Vec<u8> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).unwrap_or_default();
    value.insert("status".into(), "success".into());
    value.insert("attempts".into(), attempts.into());
    value.insert("processingTime".into(), (took.as_millis() as u64).into());
    serde_json::to_vec(&value).unwrap_or_default()
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        // Whatever was received before is redelivered by the broker, in order.
        self.lanes.retain(|_, lane| {
            lane.pending.clear();
            if lane.state == LaneState::Waiting {
                lane.state = LaneState::Idle;
            }
            lane.state != LaneState::Idle
        });
        if !self.draining {
            let (broker, queue) = (self.deps.broker.clone(), self.queue.clone());
            let prefetch = self.deps.prefetch;
            consumer::subscribe(self, ctx, broker, queue, prefetch, async { Ok(()) });
        }
    }
}

impl Supervised for ShardActor {}

impl QueueConsumer for ShardActor {
    fn resubscribe(&mut self) -> &mut Resubscribe {
        &mut self.resubscribe
    }
}

impl StreamHandler<Delivery> for ShardActor {
    fn handle(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        self.receive(delivery, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        consumer::stream_ended(ctx, &self.queue, self.draining);
    }
}

impl Handler<AttemptDone> for ShardActor {
    type Result = ();

    fn handle(&mut self, done: AttemptDone, ctx: &mut Context<Self>) {
        self.attempt_done(done, ctx);
    }
}

impl Handler<Drain> for ShardActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.check_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
