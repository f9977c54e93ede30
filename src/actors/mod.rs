//! The supervised actors of the delivery pipeline and how they are wired.
//!
//! ```text
//! partition queue ──> ShardActor (per-user lanes) ──Deliver──> IdentifyActor ─┐
//!                          │                       ──Deliver──> TrackActor ────┼─> Track API (v2 batch / v1)
//!                          │                       ──Deliver──> TransactionalActor ─> App API
//!                          ├── success ──> customerio.processed, then ack
//!                          └── failure ──DeadLetter──> DLQActor ──> customerio.dlq, then ack
//! ```

mod ack_window;
mod backlog;
mod batcher;
mod consumer;
mod dedup;
mod dlq;
mod identify;
mod ledger;
pub mod messages;
pub mod panic_guard;
mod processed;
mod reporting;
mod segments;
mod settle;
mod shard;
mod track;
mod track_api;
mod transactional;
mod warehouse;
mod webhook;

pub use crate::retry::Backoff;
pub use batcher::{BatchLimits, TrackSender};
pub use dedup::Dedup;
pub use dlq::{DlqActor, dead_letter_body, raw_dead_letter};
pub use identify::{IdentifyActor, PersonCall};
use ledger::AttemptLedger;
pub use reporting::{Reporting, start_reporting};
pub use shard::{ShardActor, ShardDeps};
pub use track::{EventCall, TrackActor};
pub use track_api::CallShape;
pub use transactional::TransactionalActor;
pub use warehouse::WarehouseActor;
pub use webhook::WebhookActor;

use crate::broker::{SharedBroker, Topology};
use crate::config::{Settings, TrackApi};
use crate::customerio::CustomerIo;
use actix::{Addr, Arbiter, Supervisor};
use messages::Drain;
use std::sync::Arc;
use std::time::Duration;

/// Asks the shards of a running pipeline for their [`PartitionStatus`].
#[derive(Clone)]
pub struct Partitions(Vec<Addr<ShardActor>>);

impl Partitions {
    /// One per partition, in order; a shard restarting right now is left out.
    pub async fn status(&self) -> Vec<messages::PartitionStatus> {
        let asked = self.0.iter().map(|shard| shard.send(messages::Status));
        futures::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }
}

/// The running delivery pipeline.
pub struct Pipeline {
    shards: Vec<Addr<ShardActor>>,
    deps: Arc<ShardDeps>,
    /// The Track API's sender (its batcher is a supervised task, not an actor).
    track_sender: TrackSender,
    /// Threads the shards run on, one per core: parsing and lane bookkeeping spread out.
    arbiters: Vec<Arbiter>,
    /// Counts the partition queues' backlog for the metrics.
    backlog: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    /// Starts every actor under a supervisor, one shard per partition queue.
    pub fn start(settings: &Settings, broker: SharedBroker, client: CustomerIo) -> Self {
        let delivery = &settings.delivery;
        // The Pipelines API is batched whatever `delivery.track_api` says.
        let track_api = match client.delivers_by_pipelines() {
            true => TrackApi::V2,
            false => delivery.track_api,
        };
        let sender = match track_api {
            TrackApi::V1 => TrackSender::v1(
                client.clone(),
                Duration::from_millis(delivery.batch_linger_ms),
            ),
            TrackApi::V2 => TrackSender::batched(
                client.clone(),
                BatchLimits {
                    max_ops: delivery.batch_max_ops,
                    linger: Duration::from_millis(delivery.batch_linger_ms),
                    max_in_flight: delivery.max_in_flight_requests,
                },
            ),
        };
        let track_sender = sender.clone();
        let environment = settings.app.environment.clone();
        let identify = {
            let (sender, environment) = (sender.clone(), environment.clone());
            Supervisor::start(move |_| IdentifyActor::new(sender, environment))
        };
        let track = Supervisor::start(move |_| TrackActor::new(sender, environment));
        let transactional = {
            let templates = settings.templates.clone();
            Supervisor::start(move |_| TransactionalActor::new(client, templates))
        };
        let dlq = {
            let broker = broker.clone();
            Supervisor::start(move |_| DlqActor::new(broker))
        };
        let deps = Arc::new(ShardDeps {
            broker,
            identify,
            track,
            transactional,
            dlq,
            dedup: Arc::new(Dedup::new(delivery.dedup_window)),
            ledger: Arc::new(AttemptLedger::new(delivery.dedup_window)),
            backoff: Backoff::jittered(
                Duration::from_millis(delivery.backoff_base_ms),
                Duration::from_millis(delivery.backoff_max_ms),
            ),
            max_attempts: delivery.max_attempts,
            max_redeliveries: delivery.max_redeliveries,
            prefetch: settings.broker.prefetch,
        });
        let queues: Vec<String> = Topology::new(settings.broker.partitions)
            .partition_queues()
            .collect();
        let backlog = backlog::watch(deps.broker.clone(), queues.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let shards = queues
            .into_iter()
            .zip(arbiters.iter().cycle())
            .map(|(queue, arbiter)| {
                let deps = deps.clone();
                Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                    ShardActor::new(queue, deps)
                })
            })
            .collect();
        Self {
            shards,
            deps,
            track_sender,
            arbiters,
            backlog,
        }
    }

    pub fn is_running(&self) -> bool {
        self.shards.iter().all(|s| s.connected())
    }

    /// Whether every shard, delivering actor and the track batcher is alive, as a check
    /// `/readyz` can keep.
    pub fn liveness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (shards, deps) = (self.shards.clone(), self.deps.clone());
        let track_sender = self.track_sender.clone();
        move || {
            shards.iter().all(Addr::connected)
                && deps.identify.connected()
                && deps.track.connected()
                && deps.transactional.connected()
                && deps.dlq.connected()
                && track_sender.is_running()
        }
    }

    /// Whether what dies is still restarted, as a check `/healthz` can keep: actors have
    /// actix supervisors; the track batcher has its own, and once that is gone nothing
    /// brings the batcher back but a restart of the process.
    pub fn health(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let track_sender = self.track_sender.clone();
        move || track_sender.is_supervised()
    }

    /// A handle that asks every shard how its partition stands, for `/admin/status`.
    pub fn partitions(&self) -> Partitions {
        Partitions(self.shards.clone())
    }

    /// The Track API's sender, for fault-injection tests.
    #[doc(hidden)]
    pub fn track_sender(&self) -> &TrackSender {
        &self.track_sender
    }

    /// Stops taking new messages and waits for in-flight ones to settle, up to `deadline`.
    /// Whatever is not settled by then stays unacked and is redelivered elsewhere.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let all = futures::future::join_all(self.shards.iter().map(|s| s.send(Drain)));
        tokio::time::timeout(deadline, all).await.is_ok()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.backlog.abort();
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
