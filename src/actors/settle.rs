//! Making a message's outcome durable: its processed event or dead letter is published with a
//! confirm, retried briefly (a confirm timeout, a nack, the publisher channel reopening). Only
//! then is the message acked. A caller that still gets an error must not move on: it closes its
//! consumer channel, so the broker redelivers the message (and all after it) in order.

use crate::broker::{BrokerError, Publish, SharedBroker};
use crate::retry::Backoff;
use std::time::Duration;

/// Publishes tried before giving up: with this backoff, about 6 s at most.
const TRIES: u32 = 6;
const BACKOFF: Backoff = Backoff::jittered(Duration::from_millis(100), Duration::from_secs(2));

/// Publishes `message` until the broker confirms it, up to [`TRIES`] times.
pub async fn publish_confirmed(broker: &SharedBroker, message: Publish) -> Result<(), BrokerError> {
    let mut failures = 0;
    loop {
        match broker.publish(message.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                failures += 1;
                if failures >= TRIES {
                    return Err(e);
                }
                let delay = BACKOFF.delay(failures, None);
                tracing::warn!(exchange = %message.exchange, error = %e, ?delay, "publish not confirmed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
