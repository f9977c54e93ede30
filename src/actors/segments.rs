//! Puts many people's changes to one manual segment into one Track v1 request.
//!
//! Each person has at most one operation in flight (the shard guarantees it), so a request that
//! holds one change of each of many people keeps every person's order. The changes that arrive
//! within `batch_linger_ms` of each other are grouped by segment, action and identifier kind
//! (Customer.io's `id_type`), at most 1000 ids per request, and a request's answer is each of
//! its people's.
//!
//! As in the v2 batcher, the request's permit (circuit and budget) is taken before its people
//! are chosen: a change whose shard lost its partition meanwhile is left out, so it cannot reach
//! Customer.io after the next consumer's.

use super::batcher::{Job, Jobs, Queue, cancelled};
use super::messages::Failure;
use crate::customerio::{CustomerIo, wire};
use crate::domain::limits::MAX_SEGMENT_IDS;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// The supervised loop that sends segment changes.
pub(super) fn queue(client: CustomerIo, linger: Duration) -> Queue {
    Queue::start(move |jobs: Jobs| {
        let client = client.clone();
        async move { run(client, linger, &mut *jobs.lock().await).await }
    })
}

async fn run(client: CustomerIo, linger: Duration, rx: &mut mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + linger;
        let mut arrived = vec![first];
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => arrived.push(job),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        for (change, people) in by_change(arrived) {
            let mut people = people.into_iter().peekable();
            while people.peek().is_some() {
                let request: Vec<Job> = people.by_ref().take(MAX_SEGMENT_IDS).collect();
                let client = client.clone();
                tokio::spawn(async move { send(&client, change, request).await });
            }
        }
    }
}

/// The changes grouped by request, each group in arrival order.
fn by_change(jobs: Vec<Job>) -> Vec<(wire::SegmentChange, Vec<Job>)> {
    let mut groups: Vec<(wire::SegmentChange, Vec<Job>)> = Vec::new();
    let mut index: HashMap<wire::SegmentChange, usize> = HashMap::new();
    for job in jobs {
        let Some(change) = wire::SegmentChange::of(&job.call) else {
            job.answer(Err(Failure::from(crate::customerio::CioError::invalid(
                "not a manual segment change",
            ))));
            continue;
        };
        let at = *index.entry(change).or_insert_with(|| {
            groups.push((change, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(job);
    }
    groups
}

/// One request for `people`; each is answered with its outcome.
async fn send(client: &CustomerIo, change: wire::SegmentChange, people: Vec<Job>) {
    let people: Vec<Job> = people
        .into_iter()
        .filter_map(|job| match wire::check_limits(&job.call) {
            Ok(()) => Some(job),
            Err(e) => {
                job.answer(Err(Failure::from(e)));
                None
            }
        })
        .collect();
    if people.is_empty() {
        return;
    }
    let permit = match client.track_permit().await {
        Ok(permit) => permit,
        Err(e) => {
            for job in people {
                job.answer(Err(Failure::paused(e.to_string())));
            }
            return;
        }
    };
    // Waiting for the permit may have outlasted a shard's partition.
    let (stale, sending): (Vec<Job>, Vec<Job>) = people.into_iter().partition(Job::is_cancelled);
    for job in stale {
        job.answer(Err(cancelled()));
    }
    if sending.is_empty() {
        return;
    }
    let ids: Vec<&str> = sending
        .iter()
        .map(|job| job.call.person.value.as_str())
        .collect();
    let result = client
        .change_segment(permit, &change, &ids)
        .await
        .map_err(Failure::from);
    for job in sending {
        job.answer(result.clone());
    }
}
