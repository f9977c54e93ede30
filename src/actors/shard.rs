//! ShardActor: consumes one partition queue and keeps each user's messages in order.
//!
//! Every user has a lane: the messages received for them, oldest first. Only the head of a
//! lane is ever being delivered, so a user's messages reach Customer.io one at a time, in
//! order, while other users' lanes proceed. A retry waits (unacked, bounded by
//! `delivery.max_attempts` and the backoff cap) at the head of its lane and holds back only
//! that user. A message is acked only after its outcome is durable: the processed event or
//! the dead letter is confirmed by the broker, and only then does its lane move on. An outcome
//! that cannot be confirmed stops the actor, which closes its channel: the broker redelivers
//! the message and every one after it, in order.
//!
//! When the stream ends (connection lost) the actor stops and its supervisor restarts it with
//! a new generation: lanes are emptied, since the broker redelivers every unacked message in
//! order. An attempt still in flight from the old generation keeps its lane busy until it
//! reports back, so no user ever has two attempts at once.

use super::ack_window::{ACK_WAIT, AckJob, AckWindow};
use super::consumer::{self, QueueConsumer, Resubscribe};
use super::dedup::DedupKey;
use super::ledger::AttemptLedger;
use super::messages::{
    AcksWritten, AttemptDone, DeadLetter, Deliver, Delivered, Drain, ErrorKind, Failure,
    FailureKind, PartitionStatus, Settled, Status,
};
use super::processed::processed_body;
use super::settle::publish_confirmed;
use super::{Dedup, DlqActor, IdentifyActor, TrackActor, TransactionalActor};
use crate::broker::topology::PROCESSED_EXCHANGE;
use crate::broker::{Acker, Delivery, Publish, SharedBroker};
use crate::domain::{Envelope, Route, UserId};
use crate::retry::Backoff;
use crate::telemetry::{events, otlp};
use actix::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// What every shard shares: the broker, the delivering actors and the retry policy.
pub struct ShardDeps {
    pub broker: SharedBroker,
    pub identify: Addr<IdentifyActor>,
    pub track: Addr<TrackActor>,
    pub transactional: Addr<TransactionalActor>,
    pub dlq: Addr<DlqActor>,
    pub dedup: Arc<Dedup>,
    pub ledger: Arc<AttemptLedger>,
    pub backoff: Backoff,
    pub max_attempts: u32,
    pub max_redeliveries: u32,
    pub prefetch: u16,
}

struct Pending {
    /// Which of its generation's deliveries it is, in the order received.
    seq: u64,
    envelope: Envelope,
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    acker: Acker,
    attempts: u32,
    received: Instant,
    /// Set when delivered: what Customer.io answered that the processed event carries.
    delivered: Delivered,
    /// Its last failed attempt's error, while it waits for a retry.
    last_error: Option<String>,
    /// The producer's trace (`traceparent` header), which this message's spans continue.
    /// (Boxed: most messages carry none, and a Context is large.)
    trace: Option<Box<opentelemetry::Context>>,
}

impl Pending {
    /// The span of this message's attempt: every log line about it carries its ids, and a
    /// trace exporter gets OpenTelemetry's messaging attributes. It continues the producer's
    /// trace where the message carried one.
    fn span(&self, partition: &str) -> tracing::Span {
        let envelope = &self.envelope;
        let span = tracing::info_span!(
            "message",
            "otel.name" = format!("process {partition}"),
            "otel.kind" = "consumer",
            "messaging.system" = "rabbitmq",
            "messaging.operation.type" = "process",
            "messaging.destination.name" = %self.exchange,
            "messaging.rabbitmq.destination.routing_key" = %self.routing_key,
            "messaging.message.id" = envelope.correlation_id.as_ref().map_or("", |id| id.as_str()),
            user = %envelope.user.as_str(),
            r#type = envelope.kind.as_str(),
            correlation_id = envelope.correlation_id.as_ref().map_or("", |id| id.as_str()),
            partition,
            attempt = self.attempts,
        );
        if let Some(trace) = &self.trace
            && !span.is_disabled()
        {
            let _ = span.set_parent(trace.as_ref().clone());
        }
        span
    }

    fn dead_lettered(self, error: String, kind: ErrorKind) -> Outcome {
        Outcome::DeadLettered {
            seq: self.seq,
            message_type: self.envelope.kind.as_str(),
            key: Dedup::key_of(&self.envelope),
            letter: self.into_dead_letter(error, kind),
        }
    }

    fn into_dead_letter(self, error: String, kind: ErrorKind) -> DeadLetter {
        DeadLetter {
            correlation_id: self
                .envelope
                .correlation_id
                .as_ref()
                .map(|id| id.to_string()),
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
    /// The previous head's outcome is being confirmed by the broker; the next one waits.
    Settling(u64),
}

/// What is made durable before a message is acked.
enum Outcome {
    Delivered(Pending),
    DeadLettered {
        seq: u64,
        letter: DeadLetter,
        message_type: &'static str,
        /// Its failures in the ledger, forgotten once it is dead-lettered.
        key: Option<DedupKey>,
    },
}

impl Outcome {
    /// A message refused before it joined a lane.
    fn refused(seq: u64, letter: DeadLetter, message_type: &'static str) -> Self {
        Outcome::DeadLettered {
            seq,
            letter,
            message_type,
            key: None,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Outcome::Delivered(pending) => pending.seq,
            Outcome::DeadLettered { seq, .. } => *seq,
        }
    }
}

struct Lane {
    pending: VecDeque<Pending>,
    state: LaneState,
    _active: ActiveUser,
}

/// A lane's share of `cio_gateway_active_users`: counted while the lane exists, however it
/// goes (forgotten when idle, dropped on a consumer restart), so the gauge is the lanes'.
struct ActiveUser;

impl ActiveUser {
    fn counted() -> Self {
        events::lane(true);
        Self
    }
}

impl Drop for ActiveUser {
    fn drop(&mut self) {
        events::lane(false);
    }
}

/// How often the unacked gauge is set: cheap enough, and finer than Prometheus scrapes.
const UNACKED_EVERY: Duration = Duration::from_secs(5);

pub struct ShardActor {
    queue: String,
    deps: Arc<ShardDeps>,
    generation: u64,
    lanes: HashMap<UserId, Lane>,
    settles: TaskTracker,
    /// Fired when this generation's subscription is gone: its attempts not yet on the wire
    /// are dropped, so none lands after the partition's next consumer's.
    cancel: CancellationToken,
    resubscribe: Resubscribe,
    /// Whether a delivery arrived since the last subscribe (only the active consumer's do).
    receiving: bool,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    /// The next delivery's place in this generation's order.
    next_seq: u64,
    /// This generation's deliveries not acked yet; a settled one's lane waits for its ack.
    acks: AckWindow<(Acker, UserId)>,
    /// Whether a flush of acks waiting behind an unsettled delivery is scheduled.
    ack_timer: bool,
}

impl ShardActor {
    pub fn new(queue: String, deps: Arc<ShardDeps>) -> Self {
        Self {
            queue,
            deps,
            generation: 0,
            lanes: HashMap::new(),
            settles: TaskTracker::new(),
            cancel: CancellationToken::new(),
            resubscribe: Resubscribe::default(),
            receiving: false,
            draining: false,
            drained: Vec::new(),
            next_seq: 0,
            acks: AckWindow::default(),
            ack_timer: false,
        }
    }

    fn receive(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let received = Instant::now();
        self.receiving = true;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.acks.received(seq);
        let refuse =
            |delivery: Delivery, error: String, kind: ErrorKind, attempts: u32| DeadLetter {
                correlation_id: None,
                body: delivery.body,
                original_exchange: delivery.exchange,
                original_routing_key: delivery.routing_key,
                error,
                kind,
                attempts,
                processing_time_ms: received.elapsed().as_millis() as u64,
                acker: delivery.acker,
            };
        let envelope = match Envelope::parse(&delivery.body) {
            Ok(envelope) => envelope,
            Err(e) => {
                events::envelope_received("invalid");
                let letter = refuse(delivery, e.to_string(), ErrorKind::Invalid, 0);
                return self.settle(None, Outcome::refused(seq, letter, "unparsed"), ctx);
            }
        };
        let kind = envelope.kind.as_str();
        events::envelope_received(kind);
        if delivery.delivery_count > self.deps.max_redeliveries {
            // Returned to its queue this often with no outcome: something about it keeps its
            // consumer from finishing (a crash, a hang). Bounded here, never by the broker.
            let error = format!(
                "returned to its queue {} times without an outcome (delivery.max_redeliveries = {})",
                delivery.delivery_count, self.deps.max_redeliveries
            );
            let count = delivery.delivery_count;
            let mut letter = refuse(delivery, error, ErrorKind::Exhausted, count);
            letter.correlation_id = envelope.correlation_id.map(|id| id.to_string());
            return self.settle(None, Outcome::refused(seq, letter, kind), ctx);
        }
        if delivery.routing_key != envelope.user.as_str() {
            // Partitions are chosen by routing key, lanes by userId: a mismatch would split
            // the user across shards and break their order.
            let error = format!(
                "routing key {:?} is not the envelope's userId {:?}; publish with the userId as routing key",
                delivery.routing_key,
                envelope.user.as_str()
            );
            let mut letter = refuse(delivery, error, ErrorKind::Invalid, 0);
            letter.correlation_id = envelope.correlation_id.map(|id| id.to_string());
            return self.settle(None, Outcome::refused(seq, letter, kind), ctx);
        }
        let user = envelope.user.clone();
        let pending = Pending {
            seq,
            envelope,
            body: delivery.body,
            exchange: delivery.exchange,
            routing_key: delivery.routing_key,
            acker: delivery.acker,
            attempts: 0,
            received,
            delivered: Delivered::default(),
            last_error: None,
            trace: otlp::producer_context(&delivery.headers).map(Box::new),
        };
        let idle = {
            let lane = self.lanes.entry(user.clone()).or_insert_with(|| Lane {
                pending: VecDeque::new(),
                state: LaneState::Idle,
                _active: ActiveUser::counted(),
            });
            lane.pending.push_back(pending);
            lane.state == LaneState::Idle
        };
        if idle {
            self.dispatch(user, ctx);
        }
    }

    /// Starts an attempt for the head of the user's lane, or forgets an empty idle lane. A
    /// head already delivered (a redelivered copy), or out of attempts, is settled instead.
    fn dispatch(&mut self, user: UserId, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let generation = self.generation;
        let next = {
            let Some(lane) = self.lanes.get_mut(&user) else {
                return;
            };
            if lane.state != LaneState::Idle {
                return;
            }
            let Some(head) = lane.pending.front_mut() else {
                return self.forget_if_idle(&user);
            };
            let key = Dedup::key_of(&head.envelope);
            let failures = key.as_ref().and_then(|k| self.deps.ledger.get(k));
            if let Some(failures) = &failures {
                head.attempts = head.attempts.max(failures.count);
            }
            if key.as_ref().is_some_and(|k| self.deps.dedup.contains(k)) {
                // A redelivered copy of what this replica delivered (perhaps while it queued
                // behind the old generation's attempt): settle, never send it again.
                let head = lane.pending.pop_front().expect("the head exists");
                Err(Outcome::Delivered(head))
            } else if head.attempts >= self.deps.max_attempts {
                // Its earlier deliveries spent every attempt before the channel was lost.
                let head = lane.pending.pop_front().expect("the head exists");
                let error = failures.map_or_else(String::new, |f| f.last_error);
                Err(head.dead_lettered(error, ErrorKind::Exhausted))
            } else {
                head.attempts += 1;
                lane.state = LaneState::Attempting(generation);
                Ok((
                    head.envelope.clone(),
                    key,
                    head.attempts,
                    head.span(&self.queue),
                ))
            }
        };
        let (envelope, dedup_key, attempt, span) = match next {
            Ok(attempt) => attempt,
            Err(outcome) => return self.settle(Some(user), outcome, ctx),
        };
        let me = ctx.address();
        let deps = self.deps.clone();
        let cancel = self.cancel.clone();
        // Detached from this actor's context: the result must come back even across a restart.
        actix::spawn(async move {
            let route = envelope.kind.route();
            let message = Deliver { envelope, cancel };
            let sent = match route {
                Route::Identify => deps.identify.send(message).await,
                Route::Track => deps.track.send(message).await,
                Route::Transactional => deps.transactional.send(message).await,
            };
            let result = sent.unwrap_or_else(|e| Err(Failure::retryable(e.to_string())));
            if let Err(failure) = &result {
                tracing::debug!(error = %failure.message, kind = ?failure.kind, "attempt failed");
            }
            me.do_send(AttemptDone {
                user,
                generation,
                attempt,
                dedup_key,
                result,
            });
        }
        .instrument(span));
    }

    fn forget_if_idle(&mut self, user: &UserId) {
        let idle = self
            .lanes
            .get(user)
            .is_some_and(|lane| lane.state == LaneState::Idle && lane.pending.is_empty());
        if idle {
            self.lanes.remove(user);
        }
    }

    fn attempt_done(&mut self, done: AttemptDone, ctx: &mut Context<Self>) {
        match (&done.result, &done.dedup_key) {
            (Ok(_), Some(key)) => self.deps.dedup.insert(key.clone()),
            // Counted even when this attempt's generation is gone: the redelivered copy
            // carries on from here.
            (Err(f), Some(key)) if matches!(f.kind, FailureKind::Retryable { .. }) => self
                .deps
                .ledger
                .failed(key.clone(), done.attempt, &f.message),
            _ => {}
        }
        let user = done.user;
        let current = done.generation == self.generation;
        let outcome = {
            let Some(lane) = self.lanes.get_mut(&user) else {
                return;
            };
            lane.state = LaneState::Idle;
            if !current {
                // The message is redelivered (and deduplicated if this attempt succeeded).
                None
            } else {
                let attempts = lane.pending.front().map_or(0, |p| p.attempts);
                let dead = |lane: &mut Lane, kind: ErrorKind, error: &str| {
                    lane.pending
                        .pop_front()
                        .map(|p| p.dead_lettered(error.to_string(), kind))
                };
                match &done.result {
                    Ok(delivered) => lane.pending.pop_front().map(|mut pending| {
                        pending.delivered = delivered.clone();
                        Outcome::Delivered(pending)
                    }),
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
                            if let Some(head) = lane.pending.front_mut() {
                                head.last_error = Some(failure.message.clone());
                            }
                            let delay = self.deps.backoff.delay(attempts, retry_after);
                            let kind = lane
                                .pending
                                .front()
                                .map_or("unknown", |p| p.envelope.kind.as_str());
                            let correlation_id = lane
                                .pending
                                .front()
                                .and_then(|p| p.envelope.correlation_id.as_ref());
                            events::delivery_retried(
                                kind,
                                &user,
                                correlation_id.map(|id| id.as_str()),
                                attempts,
                                delay,
                                &failure.message,
                            );
                            let user = user.clone();
                            ctx.run_later(delay, move |act, ctx| act.retry(user, ctx));
                            return;
                        }
                        FailureKind::Retryable { .. } => {
                            dead(lane, ErrorKind::Exhausted, &failure.message)
                        }
                        FailureKind::Rejected => dead(lane, ErrorKind::Rejected, &failure.message),
                        FailureKind::Invalid => dead(lane, ErrorKind::Invalid, &failure.message),
                    },
                }
            }
        };
        match outcome {
            Some(outcome) => self.settle(Some(user), outcome, ctx),
            None => self.dispatch(user, ctx),
        }
        self.check_drained();
    }

    fn retry(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let waiting = self.lanes.get_mut(&user).map(|lane| {
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

    /// Makes the outcome durable, then acks: the processed event is published (or the dead
    /// letter handed to the DLQ actor, which acks it) with a confirm. The user's lane, if any,
    /// waits for it and for its ack.
    fn settle(&mut self, user: Option<UserId>, outcome: Outcome, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let seq = outcome.seq();
        let span = match &outcome {
            Outcome::Delivered(pending) => pending.span(&self.queue),
            Outcome::DeadLettered { letter, .. } => tracing::info_span!(
                "message",
                correlation_id = letter.correlation_id.as_deref().unwrap_or(""),
                routing_key = %letter.original_routing_key,
                partition = %self.queue,
            ),
        };
        if let Some(user) = &user
            && let Some(lane) = self.lanes.get_mut(user)
        {
            lane.state = LaneState::Settling(generation);
        }
        let (durable, ack) = match outcome {
            Outcome::Delivered(pending) => {
                if let Some(key) = Dedup::key_of(&pending.envelope) {
                    self.deps.ledger.forget(&key);
                }
                let ack = pending.acker.clone();
                (self.delivered(pending), Some(ack))
            }
            Outcome::DeadLettered {
                letter,
                message_type,
                key,
                ..
            } => {
                if let Some(key) = key {
                    self.deps.ledger.forget(&key);
                }
                events::delivery_dead_lettered(message_type);
                let dlq = self.deps.dlq.clone();
                let durable: futures::future::BoxFuture<'static, bool> = Box::pin(async move {
                    match dlq.send(letter).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "dead letter not confirmed");
                            false
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "DLQ actor unavailable");
                            false
                        }
                    }
                });
                (durable, None)
            }
        };
        let me = ctx.address();
        actix::spawn(
            self.settles.track_future(
                async move {
                    let confirmed = durable.await;
                    me.do_send(Settled {
                        user,
                        generation,
                        seq,
                        confirmed,
                        ack,
                    });
                }
                .instrument(span),
            ),
        );
    }

    /// Publishes the processed event; true once the broker confirmed it.
    fn delivered(&self, pending: Pending) -> futures::future::BoxFuture<'static, bool> {
        let kind = pending.envelope.kind.as_str();
        events::delivered(kind, pending.envelope.timestamp);
        let body = processed_body(
            &pending.body,
            pending.attempts,
            pending.received.elapsed(),
            &pending.delivered,
        );
        let message = Publish::new(PROCESSED_EXCHANGE, &pending.routing_key, body).optional_route();
        let broker = self.deps.broker.clone();
        Box::pin(async move {
            let confirmed = publish_confirmed(&broker, message).await;
            if let Err(e) = &confirmed {
                tracing::error!(error = %e, "processed event not confirmed");
            }
            confirmed.is_ok()
        })
    }

    fn settled(&mut self, settled: Settled, ctx: &mut Context<Self>) {
        let current = settled.generation == self.generation;
        if !settled.confirmed && current && !self.draining {
            if let Some(user) = &settled.user {
                self.idle(user, settled.generation);
            }
            return self.restart_unsettled(ctx);
        }
        match (settled.ack, settled.user) {
            // Its lane moves on once the ack is written: a user's next message is never
            // delivered while the one before it can still come back.
            (Some(acker), Some(user)) if current && settled.confirmed => {
                self.acks
                    .settled(settled.seq, (acker, user), Instant::now());
            }
            (ack, user) => {
                // Acked by the DLQ actor; or never to be acked, since its outcome is not
                // durable (its slot stays open, so no `multiple` ack covers it).
                if current && settled.confirmed && ack.is_none() {
                    self.acks.forget(settled.seq);
                }
                if let Some(user) = user {
                    self.release(user, settled.generation, ctx);
                }
            }
        }
        self.send_acks(ctx);
        self.check_drained();
    }

    /// Moving on would let the next message overtake this one: close the channel so the
    /// broker redelivers all of them, in order, to the next generation.
    fn restart_unsettled(&mut self, ctx: &mut Context<Self>) {
        tracing::error!(queue = %self.queue, "an outcome could not be made durable; restarting the consumer");
        ctx.stop();
    }

    /// The user's settling message is done with: their next one may go.
    fn release(&mut self, user: UserId, generation: u64, ctx: &mut Context<Self>) {
        self.idle(&user, generation);
        self.dispatch(user, ctx);
    }

    /// Ends the lane's settling of `generation`'s message, without dispatching the next.
    fn idle(&mut self, user: &UserId, generation: u64) {
        if let Some(lane) = self.lanes.get_mut(user)
            && lane.state == LaneState::Settling(generation)
        {
            lane.state = LaneState::Idle;
        }
    }

    /// Writes the acks that are due, one job at a time; those waiting behind an unsettled
    /// delivery get another look after [`ACK_WAIT`]. A drain writes them all.
    fn send_acks(&mut self, ctx: &mut Context<Self>) {
        if let Some(AckJob { oldest, singles }) = self.acks.next_job(Instant::now(), self.draining)
        {
            let (generation, me) = (self.generation, ctx.address());
            actix::spawn(self.settles.track_future(async move {
                let (oldest, mut users): (Vec<Acker>, Vec<UserId>) = oldest.into_iter().unzip();
                let mut written = Acker::ack_oldest(&oldest).await;
                for (acker, user) in singles {
                    if written.is_ok() {
                        written = acker.ack().await;
                    }
                    users.push(user);
                }
                if let Err(e) = &written {
                    tracing::warn!(error = %e, "ack failed; the messages will be redelivered");
                }
                me.do_send(AcksWritten {
                    generation,
                    users,
                    written: written.is_ok(),
                });
            }));
        }
        if self.acks.waiting() && !self.ack_timer {
            self.ack_timer = true;
            ctx.run_later(ACK_WAIT, |act, ctx| {
                act.ack_timer = false;
                act.send_acks(ctx);
            });
        }
    }

    fn acks_written(&mut self, done: AcksWritten, ctx: &mut Context<Self>) {
        let current = done.generation == self.generation;
        if current {
            self.acks.written();
            if !done.written && !self.draining {
                for user in &done.users {
                    self.idle(user, done.generation);
                }
                return self.restart_unsettled(ctx);
            }
        }
        for user in done.users {
            self.release(user, done.generation, ctx);
        }
        self.send_acks(ctx);
        self.check_drained();
    }

    fn status(&self) -> PartitionStatus {
        // Held: the head failed and is being retried (waiting for its timer or attempted again).
        let held: Vec<&Pending> = self
            .lanes
            .values()
            .filter_map(|lane| lane.pending.front())
            .filter(|head| head.last_error.is_some())
            .collect();
        let oldest = held.iter().max_by_key(|p| p.received.elapsed());
        PartitionStatus {
            partition: self.queue.clone(),
            receiving: self.receiving,
            unacked: self.unacked(),
            lanes: self.lanes.len(),
            held_lanes: held.len(),
            oldest_held_age_ms: oldest.map(|p| p.received.elapsed().as_millis() as u64),
            oldest_held_error: oldest.and_then(|p| p.last_error.clone()),
        }
    }

    /// Messages received and not yet acked: those in lanes, and each lane's one settling.
    fn unacked(&self) -> usize {
        self.lanes
            .values()
            .map(|lane| {
                lane.pending.len() + usize::from(matches!(lane.state, LaneState::Settling(_)))
            })
            .sum()
    }

    fn in_flight(&self) -> bool {
        self.lanes.values().any(|lane| {
            matches!(
                lane.state,
                LaneState::Attempting(_) | LaneState::Settling(_)
            )
        })
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

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.receiving = false;
        self.cancel = CancellationToken::new();
        self.next_seq = 0;
        self.ack_timer = false;
        // Whatever was received before is redelivered by the broker, in order; so are those
        // settled whose ack was not written yet.
        for (_, user) in self.acks.abandon() {
            if let Some(lane) = self.lanes.get_mut(&user) {
                lane.state = LaneState::Idle;
            }
        }
        self.lanes.retain(|_, lane| {
            lane.pending.clear();
            if lane.state == LaneState::Waiting {
                lane.state = LaneState::Idle;
            }
            lane.state != LaneState::Idle
        });
        ctx.run_interval(UNACKED_EVERY, |act, _| {
            events::partition_unacked(&act.queue, act.unacked());
        });
        if !self.draining {
            let (broker, queue) = (self.deps.broker.clone(), self.queue.clone());
            let prefetch = self.deps.prefetch;
            consumer::subscribe(self, ctx, broker, queue, prefetch, async { Ok(()) });
        }
    }
}

impl Supervised for ShardActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The partition may already be another replica's.
        self.cancel.cancel();
    }
}

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

impl Handler<Settled> for ShardActor {
    type Result = ();

    fn handle(&mut self, settled: Settled, ctx: &mut Context<Self>) {
        self.settled(settled, ctx);
    }
}

impl Handler<AcksWritten> for ShardActor {
    type Result = ();

    fn handle(&mut self, done: AcksWritten, ctx: &mut Context<Self>) {
        self.acks_written(done, ctx);
    }
}

impl Handler<AttemptDone> for ShardActor {
    type Result = ();

    fn handle(&mut self, done: AttemptDone, ctx: &mut Context<Self>) {
        self.attempt_done(done, ctx);
    }
}

impl Handler<Status> for ShardActor {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<Drain> for ShardActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        self.send_acks(ctx);
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.check_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
