//! `broker.partitioner = builtin`: the task that forwards the intake queue to the partitions.
//! Every replica runs one; the intake queue's single active consumer is the one that forwards,
//! the others stand by and take over when it goes.

use super::SharedBroker;
use super::topology::INTAKE_QUEUE;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deliveries forwarded per transaction, at most (the intake channel's prefetch).
const BATCH: u16 = 500;
/// Pause before forwarding again after the connection was lost (reconnecting is the
/// broker's own, with its backoff).
const RESUME_AFTER: Duration = Duration::from_millis(500);

pub struct Router {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Router {
    /// Starts forwarding on the current runtime.
    pub fn spawn(broker: SharedBroker, partitions: u16) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(broker, partitions, stop.clone()));
        Self { stop, task }
    }

    /// Stops forwarding; a transaction not committed is rolled back (its messages stay in the
    /// intake queue).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(broker: SharedBroker, partitions: u16, stop: CancellationToken) {
    loop {
        let ended = tokio::select! {
            ended = broker.forward(INTAKE_QUEUE, BATCH, partitions) => ended,
            () = stop.cancelled() => return,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "forwarding {INTAKE_QUEUE} stopped; resuming");
        }
        tokio::select! {
            () = tokio::time::sleep(RESUME_AFTER) => {}
            () = stop.cancelled() => return,
        }
    }
}
