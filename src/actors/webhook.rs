//! WebhookActor: acts on reporting events from `customerio.webhooks.actions`.
//!
//! Each event's `<object_type>.<metric>` is matched against `webhooks.rules`; a `suppress` or
//! `unsubscribe` becomes an envelope published through the ordered pipeline (so it reaches
//! Customer.io after everything already queued for that person), with a correlation id derived
//! from the event id, so a retried webhook yields the same id and is de-duplicated downstream.
//! A delivery is acked only after its envelope is confirmed by the broker. Deliveries are
//! handled one at a time, in queue order, so two events of one person are acted on in order:
//! the queue has a single active consumer (one replica at a time), and this actor takes one
//! delivery at a time (prefetch 1), so an event it returns to the queue after a failed publish
//! comes back before the next one (RabbitMQ redelivers returned messages first) instead of
//! behind events already prefetched.
//!
//! An unparseable body (the edge validated it, so this is a bug or a foreign publisher) is
//! acked with an error log here; the warehouse actor dead-letters its copy of it.

use super::consumer::{self, QueueConsumer, Resubscribe};
use super::messages::Drain;
use crate::broker::topology::WEBHOOKS_ACTIONS_QUEUE;
use crate::broker::{Delivery, SharedBroker};
use crate::domain::webhook::{Action, Rules, action_envelope};
use crate::domain::{EventId, ReportingEvent};
use crate::publisher::{PublishError, Publisher};
use crate::telemetry::metric;
use actix::prelude::*;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Event ids acted on recently; a redelivered event found here is acked without publishing.
const DONE_CAPACITY: usize = 100_000;
/// One: a requeued event must not fall behind later ones already delivered to this consumer.
/// Actions are few (bounces, unsubscribes), so the round trip per event costs little.
const PREFETCH: u16 = 1;

pub struct WebhookActor {
    broker: SharedBroker,
    publisher: Publisher,
    rules: Arc<Rules>,
    done: Arc<Mutex<LruCache<EventId, ()>>>,
    resubscribe: Resubscribe,
    retry_delay: Duration,
    draining: bool,
}

/// What became of one event.
enum Outcome {
    Published(Action),
    Skipped(&'static str),
    /// Not published (broker trouble): return it to the queue after a pause.
    Retry(String),
}

impl WebhookActor {
    pub fn new(broker: SharedBroker, publisher: Publisher, rules: Rules) -> Self {
        Self {
            broker,
            publisher,
            rules: Arc::new(rules),
            done: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(DONE_CAPACITY).expect("not zero"),
            ))),
            resubscribe: Resubscribe::default(),
            retry_delay: Duration::from_millis(200),
            draining: false,
        }
    }

    fn receive(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let received = Instant::now();
        let event = match ReportingEvent::parse(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                // The warehouse actor dead-letters its copy; one dead letter per bad message.
                tracing::error!(error = %e, "unparseable webhook event; no action taken");
                metrics::counter!(metric::WEBHOOK_ACTIONS,
                    "action" => "none", "outcome" => "invalid")
                .increment(1);
                let acker = delivery.acker;
                ctx.wait(
                    async move {
                        if let Err(e) = acker.ack().await {
                            tracing::warn!(error = %e, "ack failed");
                        }
                    }
                    .into_actor(self),
                );
                return;
            }
        };
        let action = self.rules.action_for(&event.routing_key());
        let envelope = action_envelope(&event, action);
        let publisher = self.publisher.clone();
        let done = self.done.clone();
        let acker = delivery.acker;
        let work = async move {
            let outcome = if done.lock().contains(&event.event_id) {
                Outcome::Skipped("duplicate")
            } else if action == Action::None {
                Outcome::Skipped("no_rule")
            } else if let Some(envelope) = envelope {
                match publisher.publish(envelope).await {
                    Ok(_) => {
                        done.lock().put(event.event_id.clone(), ());
                        Outcome::Published(action)
                    }
                    Err(PublishError::Invalid(e)) => {
                        tracing::warn!(event_id = %event.event_id, error = %e,
                            "webhook action cannot be expressed as an envelope; skipped");
                        Outcome::Skipped("invalid")
                    }
                    Err(PublishError::Broker(e)) => Outcome::Retry(e.to_string()),
                }
            } else {
                tracing::info!(event_id = %event.event_id, action = action.as_str(),
                    "webhook event names no customer_id; nothing to do");
                Outcome::Skipped("no_customer")
            };
            let (action_label, outcome_label) = match &outcome {
                Outcome::Published(a) => (a.as_str(), "published"),
                Outcome::Skipped(why) => (action.as_str(), *why),
                Outcome::Retry(_) => (action.as_str(), "retry"),
            };
            metrics::counter!(metric::WEBHOOK_ACTIONS,
                "action" => action_label, "outcome" => outcome_label)
            .increment(1);
            tracing::debug!(event_id = %event.event_id, action = action_label,
                outcome = outcome_label, took = ?received.elapsed(), "webhook event handled");
            (outcome, acker)
        };
        ctx.wait(work.into_actor(self).then(|(outcome, acker), act, _| {
            let delay = match &outcome {
                Outcome::Retry(e) => {
                    let delay = act.retry_delay;
                    act.retry_delay = (delay * 2).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, "webhook action not confirmed; will requeue");
                    Some(delay)
                }
                _ => {
                    act.retry_delay = Duration::from_millis(200);
                    None
                }
            };
            async move {
                let settled = match delay {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        acker.requeue().await
                    }
                    None => acker.ack().await,
                };
                if let Err(e) = settled {
                    tracing::warn!(error = %e, "settling a webhook event failed; it will be redelivered");
                }
            }
            .into_actor(act)
        }));
    }
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.draining {
            let (broker, queue) = (self.broker.clone(), WEBHOOKS_ACTIONS_QUEUE.to_string());
            consumer::subscribe(self, ctx, broker, queue, PREFETCH, async { Ok(()) });
        }
    }
}

impl Supervised for WebhookActor {}

impl QueueConsumer for WebhookActor {
    fn resubscribe(&mut self) -> &mut Resubscribe {
        &mut self.resubscribe
    }
}

impl StreamHandler<Delivery> for WebhookActor {
    fn handle(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        if self.draining {
            // Left unacked: it returns to the queue when the connection closes.
            return;
        }
        self.receive(delivery, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        consumer::stream_ended(ctx, WEBHOOKS_ACTIONS_QUEUE, self.draining);
    }
}

impl Handler<Drain> for WebhookActor {
    type Result = ();

    /// Runs after the event in hand has settled (handling one blocks the mailbox).
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {
        self.draining = true;
    }
}
