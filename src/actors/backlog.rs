//! Reports each partition queue's ready messages (`cio_gateway_partition_messages_ready`), for
//! the dashboard's backlog panel and the backlog alert. Read by a passive declare, which
//! RabbitMQ answers whoever consumes the queue, so every replica reports the same figure.

use crate::broker::SharedBroker;
use crate::telemetry::events;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the queues are counted: Prometheus scrapes every 15-30 s.
pub const EVERY: Duration = Duration::from_secs(15);

/// Counts `queues` every [`EVERY`] until the handle is aborted. A queue that cannot be
/// counted (broker down) keeps its last figure; the broker gauge says why.
pub fn watch(broker: SharedBroker, queues: Vec<String>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for queue in &queues {
                if let Ok(ready) = broker.queue_len(queue).await {
                    events::partition_ready(queue, ready);
                }
            }
        }
    })
}
