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
//! The action ledger (in the preferences database, shared by replicas, kept across restarts)
//! stops two things over the whole horizon (`webhooks.tolerance_secs`, how long Customer.io
//! retries and the edge accepts a retry): acting twice on one event (a retry, a redelivery, a
//! replay), and acting on an event older than the person's last one of the same kind (a bounce
//! retried days later must not re-suppress someone a later `customer.subscribed` unsuppressed).
//! The order is check, publish (confirmed), record, then ack. A crash between publish and
//! record publishes the envelope again on redelivery; that is accepted, because its
//! correlation id is derived from the event id and the pipeline drops the copy. The other
//! order (record first) could lose the action. While the database is down nothing is acked:
//! the event is returned to the queue after a backoff, as on broker trouble.
//!
//! Subscription changes Customer.io reports (`*.subscribed`, `*.unsubscribed`,
//! `cio_subscription_preferences_changed`) update the local preferences store first, when
//! newer than its row (`src/preferences/remote.rs`); applying one twice changes nothing, so
//! it needs no ledger entry. A database error returns the event to the queue.
//!
//! An unparseable body (the edge validated it, so this is a bug or a foreign publisher) is
//! acked with an error log here; the warehouse actor dead-letters its copy of it.

use super::consumer::{self, QueueConsumer, Resubscribe};
use super::messages::Drain;
use crate::broker::topology::WEBHOOKS_ACTIONS_QUEUE;
use crate::broker::{Acker, Delivery, SharedBroker};
use crate::domain::ReportingEvent;
use crate::domain::webhook::{Action, Rules, action_envelope};
use crate::preferences::{
    ActionLedger, ActionRecord, PreferenceStore, RemoteChange, TopicMap, Verdict,
};
use crate::publisher::{PublishError, Publisher};
use crate::retry::{Backoff, FailureStreak};
use crate::telemetry::events;
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default horizon: `webhooks.tolerance_secs`' default, 7 days.
const DEFAULT_HORIZON: Duration = Duration::from_secs(604_800);
/// How often the ledger forgets what is older than the horizon (one indexed delete).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// One: a requeued event must not fall behind later ones already delivered to this consumer.
/// Actions are few (bounces, unsubscribes), so the round trip per event costs little.
const PREFETCH: u16 = 1;
/// Before an event that could not be settled goes back to the queue.
const REQUEUE_BACKOFF: Backoff = Backoff::exact(Duration::from_millis(200), Duration::from_secs(5));

pub struct WebhookActor {
    broker: SharedBroker,
    publisher: Publisher,
    rules: Arc<Rules>,
    ledger: Arc<dyn ActionLedger>,
    /// The preferences that follow Customer.io's subscription webhooks, when wired.
    preferences: Option<Following>,
    /// How long an event acted on is remembered.
    horizon: Duration,
    last_prune: Option<Instant>,
    resubscribe: Resubscribe,
    /// Events returned to the queue in a row (broker or database trouble).
    settle_failures: FailureStreak,
    draining: bool,
}

/// The local preferences store and the topic mapping its remote changes are read with.
#[derive(Clone)]
pub struct Following {
    pub store: Arc<dyn PreferenceStore>,
    pub topics: Arc<TopicMap>,
}

/// What became of one event.
enum Outcome {
    Published(Action),
    Skipped(&'static str),
    /// Not acted on for sure (broker or database trouble): return it to the queue after a pause.
    Retry(String),
}

impl WebhookActor {
    pub fn new(
        broker: SharedBroker,
        publisher: Publisher,
        rules: Rules,
        ledger: Arc<dyn ActionLedger>,
    ) -> Self {
        Self {
            broker,
            publisher,
            rules: Arc::new(rules),
            ledger,
            preferences: None,
            horizon: DEFAULT_HORIZON,
            last_prune: None,
            resubscribe: Resubscribe::default(),
            settle_failures: REQUEUE_BACKOFF.streak(),
            draining: false,
        }
    }

    /// Remember events acted on for `horizon` (`webhooks.tolerance_secs`).
    pub fn with_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Apply Customer.io's subscription changes to this preferences store.
    pub fn following(mut self, preferences: Following) -> Self {
        self.preferences = Some(preferences);
        self
    }

    /// The time before which the ledger may forget, when a prune is due.
    fn prune_due(&mut self) -> Option<i64> {
        if self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return None;
        }
        self.last_prune = Some(Instant::now());
        let horizon = i64::try_from(self.horizon.as_secs()).unwrap_or(i64::MAX);
        Some(chrono::Utc::now().timestamp().saturating_sub(horizon))
    }

    fn receive(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let acker = delivery.acker;
        let event = match ReportingEvent::parse(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                // The warehouse actor dead-letters its copy; one dead letter per bad message.
                events::webhook_action_unparsable(&e);
                ctx.wait(settle(acker, None).into_actor(self));
                return;
            }
        };
        let work = handle_event(
            event,
            self.preferences.clone(),
            self.rules.clone(),
            self.publisher.clone(),
            self.ledger.clone(),
            self.prune_due(),
        );
        ctx.wait(work.into_actor(self).then(move |outcome, act, _| {
            let delay = match &outcome {
                Outcome::Retry(e) => {
                    let delay = act.settle_failures.failed();
                    tracing::warn!(error = %e, ?delay, "webhook action not settled; will requeue");
                    Some(delay)
                }
                _ => {
                    act.settle_failures.succeeded();
                    None
                }
            };
            settle(acker, delay).into_actor(act)
        }));
    }
}

/// Acts on one event as the rules say (at most once, never out of date), prunes the ledger
/// when due, and counts the outcome.
async fn handle_event(
    event: ReportingEvent,
    preferences: Option<Following>,
    rules: Arc<Rules>,
    publisher: Publisher,
    ledger: Arc<dyn ActionLedger>,
    prune_before: Option<i64>,
) -> Outcome {
    let received = Instant::now();
    if let Some(preferences) = &preferences
        && let Err(e) = follow(preferences, &event).await
    {
        return Outcome::Retry(format!("applying a subscription change: {e}"));
    }
    let action = rules.action_for(&event.routing_key());
    let outcome = match (
        action_envelope(&event, action),
        ActionRecord::of(&event, action),
    ) {
        _ if action == Action::None => Outcome::Skipped("no_rule"),
        (Some(envelope), Some(record)) => {
            act_once(&ledger, &publisher, envelope, &record, action).await
        }
        _ => {
            tracing::info!(event_id = %event.event_id, action = action.as_str(),
                "webhook event names no customer_id; nothing to do");
            Outcome::Skipped("no_customer")
        }
    };
    if let Some(before) = prune_before {
        match ledger.prune(before).await {
            Ok(n) => tracing::debug!(removed = n, "webhook action ledger pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the webhook action ledger failed"),
        }
    }
    let (action_label, outcome_label) = match &outcome {
        Outcome::Published(a) => (a.as_str(), "published"),
        Outcome::Skipped(why) => (action.as_str(), *why),
        Outcome::Retry(_) => (action.as_str(), "retry"),
    };
    events::webhook_action(
        &event.event_id,
        action_label,
        outcome_label,
        received.elapsed(),
    );
    outcome
}

/// Applies the subscription change the event reports, if any, when newer than the local row.
async fn follow(
    preferences: &Following,
    event: &ReportingEvent,
) -> Result<(), crate::preferences::StoreError> {
    let Some(remote) = RemoteChange::of(event, &preferences.topics) else {
        return Ok(());
    };
    let applied = preferences
        .store
        .apply_remote(&remote.user, &remote.change, remote.at_ms)
        .await?;
    let outcome = if applied.is_some() {
        "applied"
    } else {
        "superseded"
    };
    events::preferences_remote_change(&event.event_id, &remote.user, outcome);
    Ok(())
}

/// Acks the event, or after `delay` returns it to the queue.
async fn settle(acker: Acker, delay: Option<Duration>) {
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

/// Check, publish, record (see the module comment for why in this order).
async fn act_once(
    ledger: &Arc<dyn ActionLedger>,
    publisher: &Publisher,
    envelope: serde_json::Value,
    record: &ActionRecord,
    action: Action,
) -> Outcome {
    match ledger.check(record).await {
        Err(e) => return Outcome::Retry(format!("checking the action ledger: {e}")),
        Ok(Verdict::Duplicate) => return Outcome::Skipped("duplicate"),
        Ok(Verdict::Superseded { latest_at }) => {
            tracing::info!(event_id = %record.event_id, action = action.as_str(),
                event_at = record.event_at, latest_at, kind = record.kind.as_str(),
                "webhook event older than the last action of its kind for this person; dropped");
            return Outcome::Skipped("superseded");
        }
        Ok(Verdict::New) => {}
    }
    match publisher.publish(envelope).await {
        Ok(_) => {}
        Err(PublishError::Invalid(e)) => {
            tracing::warn!(event_id = %record.event_id, error = %e,
                "webhook action cannot be expressed as an envelope; skipped");
            return Outcome::Skipped("invalid");
        }
        Err(PublishError::Broker(e)) => return Outcome::Retry(e.to_string()),
    }
    // Published but not recorded: returned to the queue, the redelivery publishes again (same
    // correlation id, dropped downstream) rather than leave the ledger without it.
    match ledger.record(record, chrono::Utc::now().timestamp()).await {
        Ok(()) => Outcome::Published(action),
        Err(e) => Outcome::Retry(format!("recording in the action ledger: {e}")),
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
