//! Publishing a request's messages in order per key (a user), keys concurrently, each
//! publish waiting for RabbitMQ's confirm. Shared by `POST /v1/events` and the inbound
//! Pipelines API.

use crate::broker::BrokerError;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// How long one publish may wait for RabbitMQ's confirm before the request fails with 503.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys published concurrently (each key's messages stay sequential).
const CONCURRENT_KEYS: usize = 32;

/// What a request could not publish: the indexes not published (sorted) and the first error.
#[derive(Debug, Default)]
pub struct Unpublished {
    pub indexes: Vec<usize>,
    pub error: Option<String>,
}

/// Publishes `items` (ordering key, message) with `publish`: one lane per key in the items'
/// order, lanes concurrently. Indexes are positions in `items`.
pub async fn publish_in_lanes<T, F, Fut>(items: Vec<(String, T)>, publish: F) -> Unpublished
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let mut lanes: BTreeMap<String, Vec<(usize, T)>> = BTreeMap::new();
    for (index, (key, item)) in items.into_iter().enumerate() {
        lanes.entry(key).or_default().push((index, item));
    }
    let outcomes: Vec<Unpublished> = futures::stream::iter(lanes.into_values())
        .map(|lane| publish_lane(lane, &publish))
        .buffer_unordered(CONCURRENT_KEYS)
        .collect()
        .await;
    let mut indexes: Vec<usize> = outcomes
        .iter()
        .flat_map(|o| o.indexes.iter().copied())
        .collect();
    indexes.sort_unstable();
    let error = outcomes.into_iter().find_map(|o| o.error);
    Unpublished { indexes, error }
}

/// One key's messages in order; after a failure the rest are not published, since they
/// would overtake the failed one.
async fn publish_lane<T, F, Fut>(lane: Vec<(usize, T)>, publish: &F) -> Unpublished
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let mut outcome = Unpublished::default();
    for (index, item) in lane {
        if outcome.error.is_some() {
            outcome.indexes.push(index);
            continue;
        }
        if let Err(error) = confirmed_in_time(publish(item)).await {
            outcome.error = Some(error);
            outcome.indexes.push(index);
        }
    }
    outcome
}

async fn confirmed_in_time(
    publish: impl Future<Output = Result<(), BrokerError>>,
) -> Result<(), String> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "RabbitMQ did not confirm within {PUBLISH_TIMEOUT:?}"
        )),
    }
}
