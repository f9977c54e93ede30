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
//!
//! An operation whose shard lost its partition (its token fired) is left out of the batch
//! being cut, so it cannot reach Customer.io after the next consumer's; once its batch is on
//! the wire it is not recalled (the other users' operations share that request).

use super::messages::Failure;
use super::segments;
use crate::customerio::{
    CioError, CustomerIo, EncodedCall, Permit, TrackCall, unless_cancelled, wire,
};
use crate::domain::limits::MAX_V2_BATCH_BYTES;
use crate::telemetry::events;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

pub(super) struct Job {
    pub(super) call: TrackCall,
    cancel: CancellationToken,
    done: oneshot::Sender<Result<(), Failure>>,
}

impl Job {
    pub(super) fn answer(self, result: Result<(), Failure>) {
        let _ = self.done.send(result);
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Sends Track operations: one request each (v1) or batched (v2); manual segment changes
/// many people per request, whichever API the rest takes.
#[derive(Clone)]
pub struct TrackSender {
    client: CustomerIo,
    /// Track v2's batches; `None` sends each call by v1 in a request of its own.
    batches: Option<Queue>,
    /// Manual segment changes (only v1 has them), grouped across people.
    segments: Queue,
}

/// A supervised loop's queue of operations, and its supervisor's view of it.
#[derive(Clone)]
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<Job>,
    watch: Arc<Watch>,
}

/// What the supervisor knows of the loop, for `/readyz` and `/healthz`.
#[derive(Default)]
struct Watch {
    /// The loop runs (false between its death and its restart).
    running: AtomicBool,
    /// The supervisor runs: while it does, a dead loop is restarted.
    supervised: AtomicBool,
    /// The current loop and the supervisor, to abort them (fault injection).
    current: parking_lot::Mutex<Option<AbortHandle>>,
    supervisor: std::sync::OnceLock<AbortHandle>,
}

/// Clears `supervised` however the supervisor ends (return, panic, abort).
struct Unsupervised(Arc<Watch>);

impl Drop for Unsupervised {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
        self.0.supervised.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_ops: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

/// The receiving end a loop reads, shared so that it outlives a loop that panicked (the lock
/// is released as it unwinds).
pub(super) type Jobs = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>;

impl Queue {
    /// Starts `run` on the current runtime, under a supervisor that restarts it if it dies (a
    /// panic): the queue outlives the loop, and the operations the dead loop held are answered
    /// "abandoned" (retryable), so their shards send them again.
    pub(super) fn start<F, Fut>(run: F) -> Self
    where
        F: Fn(Jobs) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = Arc::new(Watch::default());
        watch.supervised.store(true, Ordering::SeqCst);
        watch.running.store(true, Ordering::SeqCst);
        let supervisor = tokio::spawn(supervise(Arc::new(rx.into()), watch.clone(), run));
        let _ = watch.supervisor.set(supervisor.abort_handle());
        Self { tx, watch }
    }

    /// Queues `call` and waits for its answer, unless `cancel` fires first.
    async fn submit(&self, call: TrackCall, cancel: CancellationToken) -> Result<(), Failure> {
        let (done, result) = oneshot::channel();
        let job = Job {
            call,
            cancel: cancel.clone(),
            done,
        };
        self.tx
            .send(job)
            .map_err(|_| Failure::retryable("batcher stopped"))?;
        tokio::select! {
            result = result => result
                .unwrap_or_else(|_| Err(Failure::retryable("batch request abandoned"))),
            // The loop leaves the operation out when it cuts the next request.
            () = cancel.cancelled() => Err(cancelled()),
        }
    }

    fn is_running(&self) -> bool {
        self.watch.running.load(Ordering::SeqCst)
    }

    fn is_supervised(&self) -> bool {
        self.watch.supervised.load(Ordering::SeqCst)
    }

    fn kill(&self, supervisor: bool) {
        if supervisor && let Some(supervising) = self.watch.supervisor.get() {
            supervising.abort();
        }
        if let Some(current) = self.watch.current.lock().as_ref() {
            current.abort();
        }
    }
}

impl TrackSender {
    /// Each call in a Track v1 request of its own (segment changes grouped).
    pub fn v1(client: CustomerIo, linger: Duration) -> Self {
        Self {
            segments: segments::queue(client.clone(), linger),
            batches: None,
            client,
        }
    }

    /// Calls batched into Track v2 requests, by the loops this starts on the current runtime.
    pub fn batched(client: CustomerIo, limits: BatchLimits) -> Self {
        let batches = Queue::start({
            let client = client.clone();
            move |jobs: Jobs| {
                let client = client.clone();
                async move { run(client, limits, &mut *jobs.lock().await).await }
            }
        });
        Self {
            segments: segments::queue(client.clone(), limits.linger),
            batches: Some(batches),
            client,
        }
    }

    fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.batches.iter().chain([&self.segments])
    }

    /// Whether operations are being sent: `/readyz` keeps it.
    pub fn is_running(&self) -> bool {
        self.queues().all(Queue::is_running)
    }

    /// Whether a dead batching loop would be restarted: `/healthz` keeps it.
    pub fn is_supervised(&self) -> bool {
        self.queues().all(Queue::is_supervised)
    }

    /// Fault injection for tests: kills the batching loops (`supervisor: false`, they are
    /// restarted) or their supervisors too (`true`, nothing restarts them).
    #[doc(hidden)]
    pub fn kill(&self, supervisor: bool) {
        self.queues().for_each(|queue| queue.kill(supervisor));
    }

    /// Sends `call`, unless `cancel` fires before it is on the wire.
    pub async fn send(&self, call: TrackCall, cancel: CancellationToken) -> Result<(), Failure> {
        if wire::SegmentChange::of(&call).is_some() {
            return self.segments.submit(call, cancel).await;
        }
        // Pipelines takes every other operation in its batches; Track v2 not all of them.
        let batched = self.client.delivers_by_pipelines() || !wire::by_v1_instead_of_v2(&call);
        match &self.batches {
            Some(batches) if batched => batches.submit(call, cancel).await,
            _ => one_request(&self.client, call, cancel).await,
        }
    }
}

/// A call in a request of its own (Track v1).
async fn one_request(
    client: &CustomerIo,
    call: TrackCall,
    cancel: CancellationToken,
) -> Result<(), Failure> {
    unless_cancelled(cancel, client.perform(&call))
        .await
        .map_err(Failure::from)
}

// Room for the `{"batch":[...]}` wrapper and separators.
const ENVELOPE_BYTES: usize = 64;

/// Runs a loop until every sender is gone, restarting it whenever it dies.
async fn supervise<F, Fut>(jobs: Jobs, watch: Arc<Watch>, run: F)
where
    F: Fn(Jobs) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _unsupervised = Unsupervised(watch.clone());
    loop {
        let task = tokio::spawn(run(jobs.clone()));
        *watch.current.lock() = Some(task.abort_handle());
        watch.running.store(true, Ordering::SeqCst);
        let ended = task.await;
        watch.running.store(false, Ordering::SeqCst);
        match ended {
            // Every sender is gone: the pipeline stopped.
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "a track batching loop died; restarting it");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn run(client: CustomerIo, limits: BatchLimits, rx: &mut mpsc::UnboundedReceiver<Job>) {
    let permits = Arc::new(Semaphore::new(limits.max_in_flight));
    // The job that did not fit the last batch, with its encoding: it starts the next one.
    let mut carried: Option<(Job, EncodedCall)> = None;
    loop {
        let (first, first_encoded) = match carried.take() {
            Some((job, encoded)) => (job, Some(encoded)),
            None => match rx.recv().await {
                Some(job) => (job, None),
                None => return,
            },
        };
        if first.is_cancelled() {
            first.answer(Err(cancelled()));
            continue;
        }
        let deadline = tokio::time::Instant::now() + limits.linger;
        // Wait for a free request slot and the request budget before cutting the batch:
        // while Customer.io's limit holds us back, operations keep joining it.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let leave = match client.batch_permit().await {
            Ok(leave) => leave,
            Err(e) => {
                give_back(first, rx, &e.to_string());
                continue;
            }
        };
        let encoded = first_encoded.unwrap_or_else(|| client.encode(&first.call));
        let mut size = ENVELOPE_BYTES + encoded.size();
        let mut batch = vec![(first, encoded)];
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
            let encoded = client.encode(&job.call);
            let op_size = encoded.size() + 1;
            // Track v2 and Pipelines both take 500 KB per batch.
            if size + op_size > MAX_V2_BATCH_BYTES {
                carried = Some((job, encoded));
                break;
            }
            size += op_size;
            batch.push((job, encoded));
        }
        // Waiting for the budget may have outlasted a shard's partition.
        let (stale, batch): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|(job, _)| job.is_cancelled());
        for (job, _) in stale {
            job.answer(Err(cancelled()));
        }
        if batch.is_empty() {
            continue;
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
    first.answer(Err(Failure::paused(reason)));
    while let Ok(job) = rx.try_recv() {
        job.answer(Err(Failure::paused(reason)));
    }
}

pub(super) fn cancelled() -> Failure {
    Failure::from(CioError::cancelled())
}

async fn send_batch(client: &CustomerIo, permit: Permit, batch: Vec<(Job, EncodedCall)>) {
    let mut calls = Vec::with_capacity(batch.len());
    let mut encoded = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for (job, call) in batch {
        calls.push(job.call);
        encoded.push(call);
        waiters.push(job.done);
    }
    events::batch_sent(calls.len());
    match client.batch_encoded(permit, &calls, encoded).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CustomerIoSettings, Region};
    use crate::domain::{Operation, UserId};
    use crate::sandbox::{self, Faults, SandboxConfig};

    fn delete(user: &str) -> TrackCall {
        TrackCall::new(UserId::parse(user).unwrap(), Operation::Delete)
    }

    /// An operation waiting for the open circuit when its shard loses the partition is
    /// answered at once, and left out of the batch that goes once the circuit closes.
    #[tokio::test]
    async fn a_cancelled_operation_is_left_out_of_the_next_batch() {
        let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
        let client = CustomerIo::new(&CustomerIoSettings {
            region: Region::Sandbox,
            track_url: Some(sb.track_url()),
            app_url: Some(sb.app_url()),
            site_id: None,
            api_key: None,
            app_api_key: None,
            track_rps: 1000,
            app_rps: 1000,
            broadcast_interval_ms: 10,
            timeout_ms: 5000,
            circuit_max_backoff_ms: 2000,
            circuit_failure_threshold: 3,
            ..CustomerIoSettings::default()
        })
        .unwrap();
        sb.sandbox.set_faults(Faults {
            outage_ms: 60_000,
            outage_status: 401,
            ..Faults::default()
        });
        let sender = TrackSender::batched(
            client.clone(),
            BatchLimits {
                max_ops: 100,
                linger: Duration::from_millis(5),
                max_in_flight: 1,
            },
        );
        let opened = sender.send(delete("u1"), CancellationToken::new()).await;
        assert!(
            opened.is_err() && client.circuit_open("track"),
            "{opened:?}"
        );

        let cancel = CancellationToken::new();
        let stale = tokio::spawn({
            let sender = sender.clone();
            let cancel = cancel.clone();
            async move { sender.send(delete("u2"), cancel).await }
        });
        cancel.cancel();
        let answered = tokio::time::timeout(Duration::from_millis(400), stale).await;
        let failure = answered.expect("answered before the next probe").unwrap();
        assert_eq!(failure.unwrap_err(), cancelled());

        sb.sandbox.set_faults(Faults::default());
        sender
            .send(delete("u3"), CancellationToken::new())
            .await
            .expect("delivered once the circuit closes");
        assert_eq!(sb.sandbox.records_for("u3").len(), 1);
        assert!(
            sb.sandbox.records_for("u2").is_empty(),
            "the cancelled operation was never sent"
        );
    }
}
