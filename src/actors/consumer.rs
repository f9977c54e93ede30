//! What the queue-consuming actors (ShardActor, WarehouseActor, WebhookActor) share: how they
//! subscribe, and what they do when the subscription ends.
//!
//! A consumer never reconnects by itself. When subscribing fails or its stream ends (the
//! connection or channel is gone), it stops and its supervisor restarts it; `started` then
//! subscribes again. Deliveries not acked return to the queue with the old channel, in order.

use crate::broker::{BrokerError, Delivery, SharedBroker};
use crate::retry::{Backoff, FailureStreak};
use actix::prelude::*;
use std::future::Future;
use std::time::Duration;

const BACKOFF: Backoff = Backoff::exact(Duration::from_millis(200), Duration::from_secs(5));

/// The pause before the next attempt to subscribe: doubles per failure, up to 5 s.
/// Kept in the actor, so it survives the supervisor's restarts.
#[derive(Debug)]
pub struct Resubscribe(FailureStreak);

impl Default for Resubscribe {
    fn default() -> Self {
        Self(BACKOFF.streak())
    }
}

impl Resubscribe {
    fn succeeded(&mut self) {
        self.0.succeeded();
    }

    fn failed(&mut self) -> Duration {
        self.0.failed()
    }
}

/// An actor fed by one queue.
pub trait QueueConsumer: Actor<Context = Context<Self>> + StreamHandler<Delivery> {
    fn resubscribe(&mut self) -> &mut Resubscribe;
}

/// Runs `ready` (e.g. preparing a sink), then consumes `queue` with `prefetch` unacked
/// deliveries at most. On failure, waits its backoff and stops the actor for a restart.
pub fn subscribe<A: QueueConsumer>(
    actor: &mut A,
    ctx: &mut Context<A>,
    broker: SharedBroker,
    queue: String,
    prefetch: u16,
    ready: impl Future<Output = Result<(), String>> + 'static,
) {
    let start = {
        let queue = queue.clone();
        async move {
            ready.await?;
            broker
                .consume(&queue, prefetch)
                .await
                .map_err(|e: BrokerError| e.to_string())
        }
    };
    ctx.spawn(
        start
            .into_actor(actor)
            .map(move |result, act, ctx| match result {
                Ok(stream) => {
                    act.resubscribe().succeeded();
                    tracing::info!(queue, "consuming");
                    ctx.add_stream(stream);
                }
                Err(error) => {
                    let delay = act.resubscribe().failed();
                    tracing::warn!(queue, error, ?delay, "cannot consume, will retry");
                    ctx.run_later(delay, |_, ctx| ctx.stop());
                }
            }),
    );
}

/// The stream of `queue` ended: unless the actor is draining (and ended it on purpose), the
/// connection or channel is gone, and the actor stops so its supervisor restarts it.
pub fn stream_ended<A: QueueConsumer>(ctx: &mut Context<A>, queue: &str, draining: bool) {
    if !draining {
        tracing::warn!(
            queue,
            "stream ended (connection lost?); restarting the consumer"
        );
        ctx.stop();
    }
}
