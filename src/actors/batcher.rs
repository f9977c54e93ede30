//! Puts many users' Track operations into one v2 `batch` request.
//!
//! Each user has at most one operation in flight (the shard guarantees it), so a batch never
//! holds two operations of the same user and order per user is kept. A batch is cut when it
//! reaches `batch_max_ops`, would pass Customer.io's 500 KB limit, or has waited
//! `batch_linger_ms`; at most `max_in_flight_requests` batches are on the wire at once.
//!
//! While the Track API's circuit is open the batcher waits for its permit, and operations keep
//! joining; if the circuit stays open for its longest backoff, the waiting operations are given
//! back as paused (no attempt spent), so a drain is never held up for a whole outage.

use super::messages::Failure;
use crate::customerio::{CustomerIo, Permit, TrackCall};
use crate::domain::limits::MAX_V2_BATCH_BYTES;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Job = (TrackCall, oneshot::Sender<Result<(), Failure>>);

/// Sends Track operations, one request each (v1) or batched (v2).
#[derive(Clone)]
pub enum TrackSender {
    V1(CustomerIo),
    V2(mpsc::UnboundedSender<Job>),
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_ops: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

impl TrackSender {
    /// Starts the batching task on the current runtime.
    pub fn batched(client: CustomerIo, limits: BatchLimits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, limits, rx));
        Self::V2(tx)
    }

    pub async fn send(&self, call: TrackCall) -> Result<(), Failure> {
        match self {
            TrackSender::V1(client) => client.perform(&call).await.map_err(Failure::from),
            TrackSender::V2(tx) => {
                let (done, result) = oneshot::channel();
                tx.send((call, done))
                    .map_err(|_| Failure::retryable("batcher stopped"))?;
                result
                    .await
                    .unwrap_or_else(|_| Err(Failure::retryable("batch request abandoned")))
            }
        }
    }
}

// Room for the `{"batch":[...]}` wrapper and separators.
const ENVELOPE_BYTES: usize = 64;

async fn run(client: CustomerIo, limits: BatchLimits, mut rx: mpsc::UnboundedReceiver<Job>) {
    let permits = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::now() + limits.linger;
        // Wait for a free request slot and the request budget before cutting the batch:
        // while Customer.io's limit holds us back, operations keep joining it.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let leave = match client.track_permit().await {
            Ok(leave) => leave,
            Err(e) => {
                give_back(first, &mut rx, &e.to_string());
                continue;
            }
        };
        let mut size = ENVELOPE_BYTES + CustomerIo::v2_operation_size(&first.0);
        let mut batch = vec![first];
        while batch.len() < limits.max_ops {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    job = rx.recv() => job,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
            };
            let Some(job) = next else { break };
            let op_size = CustomerIo::v2_operation_size(&job.0) + 1;
            if size + op_size > MAX_V2_BATCH_BYTES {
                carried = Some(job);
                break;
            }
            size += op_size;
            batch.push(job);
        }
        let client = client.clone();
        tokio::spawn(async move {
            send_batch(&client, leave, batch).await;
            drop(permit);
        });
    }
}

/// Answers `first` and every operation already queued as paused: their shards send them again.
fn give_back(first: Job, rx: &mut mpsc::UnboundedReceiver<Job>, reason: &str) {
    let _ = first.1.send(Err(Failure::paused(reason)));
    while let Ok((_, waiter)) = rx.try_recv() {
        let _ = waiter.send(Err(Failure::paused(reason)));
    }
}

async fn send_batch(client: &CustomerIo, permit: Permit, batch: Vec<Job>) {
    let (calls, waiters): (Vec<TrackCall>, Vec<_>) = batch.into_iter().unzip();
    metrics::histogram!("cio_gateway_batch_size").record(calls.len() as f64);
    match client.batch_with(permit, &calls).await {
        Ok(results) => {
            for (waiter, result) in waiters.into_iter().zip(results) {
                let _ = waiter.send(result.map_err(Failure::from));
            }
        }
        Err(e) => {
            let failure = Failure::from(e);
            for waiter in waiters {
                let _ = waiter.send(Err(failure.clone()));
            }
        }
    }
}
