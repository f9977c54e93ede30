//! Dead-letter administration (list, show, replay, purge), shared by `cio-gateway dlq` and the
//! `/admin/dlq` routes. The actor that writes dead letters is `actors::DlqActor`.
//!
//! Reading never loses a message: the classic queue `customerio.dlq` is consumed with manual
//! acks, the wanted deliveries are held unacked, and the consumer is then closed and awaited,
//! which returns every one of them to the queue before the call returns (so listing twice shows
//! the same thing). Only replay and purge ack, and replay acks a dead letter only after its
//! republished envelope was confirmed by RabbitMQ.

use crate::broker::topology::{
    DLQ_EXCHANGE, DLQ_QUEUE, HEADER_DEAD_LETTERED_AT, HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_ROUTING_KEY, IDENTIFY_EXCHANGE, TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE,
    WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE, exchange_for,
};
use crate::broker::{BrokerError, Delivery, DeliveryStream, Publish, SharedBroker};
use crate::domain::MessageType;
use crate::telemetry::events;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The fields the gateway adds to an envelope when it dead-letters it (docs/reference.md §5).
pub const FAILURE_FIELDS: [&str; 5] =
    ["status", "error", "errorKind", "attempts", "processingTime"];

/// At most this many dead letters are held at once by one scan (show, replay by id, purge pass).
pub const MAX_SCAN: u32 = 10_000;

/// How long a scan waits for the next delivery before deciding the rest is held elsewhere
/// (by another reader) and settling for what it has.
const IDLE: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("no dead letter has correlationId {0:?}")]
    NotFound(String),
}

/// One dead letter as read from the queue.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub correlation_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<u64>,
    pub original_exchange: Option<String>,
    pub original_routing_key: Option<String>,
    /// When it was dead-lettered (ms since the epoch), where the gateway recorded it.
    pub dead_lettered_at: Option<i64>,
    /// Whether RabbitMQ delivered it before (to an earlier reader).
    pub redelivered: bool,
    /// The dead letter's body as stored: the envelope plus the failure fields, or `raw`.
    pub body: Value,
}

impl DeadLetter {
    pub fn from_delivery(delivery: &Delivery) -> Self {
        let body = match serde_json::from_slice::<Value>(&delivery.body) {
            Ok(value @ Value::Object(_)) => value,
            _ => {
                let mut map = Map::new();
                map.insert(
                    "raw".into(),
                    String::from_utf8_lossy(&delivery.body).into_owned().into(),
                );
                Value::Object(map)
            }
        };
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
        // The ordering key: the user, or the anonymous id of an anonymous event.
        let key = |field: &str| match body.get(field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let user_id = key("userId").or_else(|| key("anonymousId"));
        Self {
            correlation_id: text("correlationId"),
            kind: text("type"),
            user_id,
            error_kind: text("errorKind"),
            error: text("error"),
            attempts: body.get("attempts").and_then(Value::as_u64),
            original_exchange: delivery.headers.get(HEADER_ORIGINAL_EXCHANGE).cloned(),
            original_routing_key: delivery.headers.get(HEADER_ORIGINAL_ROUTING_KEY).cloned(),
            dead_lettered_at: delivery
                .headers
                .get(HEADER_DEAD_LETTERED_AT)
                .and_then(|ms| ms.parse().ok()),
            redelivered: delivery.redelivered,
            body,
        }
    }

    /// The time `since` / `until` compare: when it was dead-lettered, else (a dead letter
    /// from before that was recorded) the envelope's own `timestamp`.
    fn time(&self) -> Option<i64> {
        self.dead_lettered_at
            .or_else(|| self.body.get("timestamp").and_then(Value::as_i64))
    }

    /// What to republish: the original exchange, routing key and body (the envelope without
    /// the failure fields, or the raw text as it was received). The routing key is the
    /// envelope's user id, else the original one; without the header, the exchange follows
    /// from the envelope's type.
    pub fn original_message(&self) -> Option<Publish> {
        let obj = self.body.as_object()?;
        let body = match obj.get("raw") {
            Some(Value::String(raw)) if obj.len() <= FAILURE_FIELDS.len() + 1 => {
                raw.as_bytes().to_vec()
            }
            _ => {
                let mut envelope = obj.clone();
                for field in FAILURE_FIELDS {
                    envelope.remove(field);
                }
                serde_json::to_vec(&envelope).ok()?
            }
        };
        let exchange = self.original_exchange.clone().or_else(|| {
            let kind = MessageType::parse(self.kind.as_deref()?)?;
            Some(exchange_for(kind.route()).to_string())
        })?;
        // The envelope's user, not the header: a producer's routing key may name someone else,
        // and the shard (hence the order) follows the user.
        let routing_key = self
            .user_id
            .clone()
            .or_else(|| self.original_routing_key.clone())?;
        let (exchange, routing_key) = replay_target(&exchange, &routing_key)?;
        Some(Publish::new(&exchange, &routing_key, body))
    }
}

/// Where a dead letter may be replayed to, by the exchange it was dead-lettered from. Anyone
/// able to publish to `customerio.dlq` controls its headers, so replay trusts no exchange name:
/// only the producer exchanges (the delivery pipeline dead-letters what came through them) and
/// `customerio.webhooks` (the warehouse dead-letters rows it cannot store) are allowed. A
/// reporting event goes back to the warehouse queue alone (AMQP's default exchange), never to
/// the actions queue: a forged dead letter must not become a suppress. Everything else stays in
/// the queue, and no publish to an undeclared exchange can close the shared publisher channel.
pub fn replay_target(original_exchange: &str, routing_key: &str) -> Option<(String, String)> {
    match original_exchange {
        IDENTIFY_EXCHANGE | TRACK_EXCHANGE | TRANSACTIONAL_EXCHANGE => {
            Some((original_exchange.to_string(), routing_key.to_string()))
        }
        WEBHOOKS_EXCHANGE => Some((String::new(), WEBHOOKS_WAREHOUSE_QUEUE.to_string())),
        _ => None,
    }
}

/// Dead letters held unacked by one reader; `release` puts back whatever was not acked.
struct Held {
    stream: Option<DeliveryStream>,
    deliveries: Vec<Delivery>,
    /// Ready messages in the queue when the scan began.
    total: u32,
}

impl Held {
    async fn release(mut self) {
        self.deliveries.clear();
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
    }
}

/// Takes up to `max` of the dead letters ready now, oldest first, without settling any.
async fn hold(broker: &SharedBroker, max: u32) -> Result<Held, BrokerError> {
    let total = broker.queue_len(DLQ_QUEUE).await?;
    let want = total.min(max);
    if want == 0 {
        return Ok(Held {
            stream: None,
            deliveries: Vec::new(),
            total,
        });
    }
    let prefetch = u16::try_from(want).unwrap_or(u16::MAX);
    let mut stream = broker.consume(DLQ_QUEUE, prefetch).await?;
    let mut deliveries = Vec::with_capacity(want as usize);
    while deliveries.len() < want as usize {
        match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(delivery)) => deliveries.push(delivery),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(Held {
        stream: Some(stream),
        deliveries,
        total,
    })
}

/// Which dead letters an operation is about: every criterion given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    pub error_kind: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The user (or anonymous id) the envelope was about.
    pub user: Option<String>,
    pub correlation_id: Option<String>,
    /// Dead-lettered at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Dead-lettered before this time (ms since the epoch).
    pub until: Option<i64>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let same = |wanted: &Option<String>, got: &Option<String>| {
            wanted.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        same(&self.error_kind, &letter.error_kind)
            && same(&self.kind, &letter.kind)
            && same(&self.user, &letter.user_id)
            && same(&self.correlation_id, &letter.correlation_id)
            && self
                .since
                .is_none_or(|t| letter.time().is_some_and(|at| at >= t))
            && self
                .until
                .is_none_or(|t| letter.time().is_some_and(|at| at < t))
    }
}

/// A time given to `since` / `until`: RFC 3339 (`2026-12-07T10:00:00Z`) or ms since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    text.parse::<i64>().or_else(|_| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("{text:?} is neither RFC 3339 nor milliseconds: {e}"))
    })
}

/// Dead letters counted by `errorKind` and by `type` (`-` where there is none).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub by_error_kind: BTreeMap<String, u64>,
    pub by_type: BTreeMap<String, u64>,
}

impl Summary {
    fn count(&mut self, letter: &DeadLetter) {
        let name = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        *self
            .by_error_kind
            .entry(name(&letter.error_kind))
            .or_default() += 1;
        *self.by_type.entry(name(&letter.kind)).or_default() += 1;
    }
}

/// What `list` saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// Dead letters ready in the queue.
    pub total: u32,
    /// Of those, how many were looked at: the oldest [`MAX_SCAN`] at most.
    pub scanned: u32,
    /// How many of the scanned ones match the filter (all of them, counted in `summary`).
    pub matched: u32,
    pub summary: Summary,
    /// The first `limit` that match.
    pub dead_letters: Vec<DeadLetter>,
}

/// The first `limit` dead letters that match, and a summary of all that match among the oldest
/// [`MAX_SCAN`]; all left in the queue.
pub async fn list(broker: &SharedBroker, filter: &Filter, limit: u32) -> Result<Listing, DlqError> {
    let held = hold(broker, MAX_SCAN).await?;
    let mut listing = Listing {
        total: held.total,
        scanned: held.deliveries.len() as u32,
        matched: 0,
        summary: Summary::default(),
        dead_letters: Vec::new(),
    };
    for letter in held.deliveries.iter().map(DeadLetter::from_delivery) {
        if !filter.matches(&letter) {
            continue;
        }
        listing.matched += 1;
        listing.summary.count(&letter);
        if listing.dead_letters.len() < limit as usize {
            listing.dead_letters.push(letter);
        }
    }
    held.release().await;
    Ok(listing)
}

/// The dead letter with this correlation id (the first, if several), left in the queue.
pub async fn show(broker: &SharedBroker, correlation_id: &str) -> Result<DeadLetter, DlqError> {
    let held = hold(broker, MAX_SCAN).await?;
    let found = held
        .deliveries
        .iter()
        .map(DeadLetter::from_delivery)
        .find(|d| d.correlation_id.as_deref() == Some(correlation_id));
    held.release().await;
    found.ok_or_else(|| DlqError::NotFound(correlation_id.to_string()))
}

/// Which dead letters to replay or purge: those matching `filter`, the oldest `limit` of them
/// if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub filter: Filter,
    pub limit: Option<u32>,
}

impl Selection {
    /// The oldest `n`.
    pub fn count(n: u32) -> Self {
        Self {
            filter: Filter::default(),
            limit: Some(n),
        }
    }

    /// Every dead letter with this correlation id.
    pub fn correlation_id(id: &str) -> Self {
        Self {
            filter: Filter {
                correlation_id: Some(id.to_string()),
                ..Filter::default()
            },
            limit: None,
        }
    }

    /// Everything in the queue.
    pub fn all() -> Self {
        Self::default()
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Republished (confirmed), then removed from the queue; correlation ids, `null` for none.
    pub replayed: Vec<Option<String>>,
    /// Selected but left in the queue: no original exchange could be told, or it is not one
    /// replay may publish to (see [`replay_target`]).
    pub skipped: Vec<Option<String>>,
    /// Why the replay stopped early; the rest stays in the queue.
    pub error: Option<String>,
    /// Dead letters in the queue afterwards.
    pub remaining: u32,
    /// Replayed identifies that carry a `timestamp`: Customer.io ignores (while answering 200)
    /// an identify older than the last one it applied to the person, so these may change
    /// nothing. Publish a fresh identify to change the person now.
    pub timestamped_identifies: Vec<Option<String>>,
}

impl ReplayReport {
    /// The warning for [`ReplayReport::timestamped_identifies`], if any were replayed.
    pub fn timestamp_warning(&self) -> Option<String> {
        let n = self.timestamped_identifies.len();
        (n > 0).then(|| {
            format!(
                "{n} replayed identify(s) carry a timestamp: Customer.io silently ignores an \
                 identify older than the last one it applied to that person"
            )
        })
    }
}

/// An identify with an ordering timestamp, which Customer.io may drop as stale.
fn is_timestamped_identify(letter: &DeadLetter) -> bool {
    letter.kind.as_deref() == Some("identify")
        && letter.body.get("timestamp").is_some_and(|t| !t.is_null())
}

/// How far a replay or purge has got: `done` of the `of` dead letters it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub of: u64,
}

/// Republishes the selected dead letters to their original exchange with their original
/// routing key, each acked only after RabbitMQ confirmed its republish. Everything else stays.
pub async fn replay(
    broker: &SharedBroker,
    selection: &Selection,
) -> Result<ReplayReport, DlqError> {
    replay_with_progress(broker, selection, &mut |_| {}).await
}

/// [`replay`], calling `progress` after each dead letter it looked at.
pub async fn replay_with_progress(
    broker: &SharedBroker,
    selection: &Selection,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ReplayReport, DlqError> {
    let report = pass(broker, selection, Act::Replay, progress).await?;
    if let Some(id) = &selection.filter.correlation_id
        && report.replayed.is_empty()
        && report.skipped.is_empty()
        && report.error.is_none()
    {
        return Err(DlqError::NotFound(id.clone()));
    }
    Ok(report)
}

/// Deletes the selected dead letters; returns how many.
pub async fn purge(broker: &SharedBroker, selection: &Selection) -> Result<u64, DlqError> {
    purge_with_progress(broker, selection, &mut |_| {}).await
}

/// [`purge`], calling `progress` after each dead letter it looked at.
pub async fn purge_with_progress(
    broker: &SharedBroker,
    selection: &Selection,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64, DlqError> {
    let report = pass(broker, selection, Act::Purge, progress).await?;
    match report.error {
        Some(error) => Err(DlqError::Broker(BrokerError::Unavailable(error))),
        None => Ok(report.replayed.len() as u64),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Replay,
    Purge,
}

/// One pass over the dead letters in the queue now, oldest first, acting on the selected ones
/// (`replayed` lists what was replayed or purged). Up to [`MAX_SCAN`] the others are held and
/// returned in place. Past it, a scan cannot see further while holding them, so each one not
/// selected is moved to the back instead (republished to the DLQ with its headers, confirmed,
/// then acked): once the pass has gone through all of them they are in their old order again.
/// A pass stopped by an error leaves the ones it moved behind the rest: none is lost.
async fn pass(
    broker: &SharedBroker,
    selection: &Selection,
    act: Act,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ReplayReport, DlqError> {
    let total = broker.queue_len(DLQ_QUEUE).await?;
    let rotate = total > MAX_SCAN;
    let mut report = ReplayReport::default();
    let (mut seen, mut chosen) = (0u32, 0u32);
    while seen < total && report.error.is_none() {
        let mut held = hold(broker, (total - seen).min(MAX_SCAN)).await?;
        if held.deliveries.is_empty() {
            break;
        }
        for delivery in std::mem::take(&mut held.deliveries) {
            seen += 1;
            progress(Progress {
                done: u64::from(seen),
                of: u64::from(total),
            });
            let letter = DeadLetter::from_delivery(&delivery);
            let selected = report.error.is_none()
                && selection.filter.matches(&letter)
                && selection.limit.is_none_or(|n| chosen < n);
            let acted = if selected {
                chosen += 1;
                act_on(broker, act, &letter, &delivery, &mut report).await
            } else {
                false
            };
            if acted {
                continue;
            }
            if rotate && report.error.is_none() {
                match move_to_back(broker, &delivery).await {
                    Ok(()) => continue,
                    Err(e) => report.error = Some(e.to_string()),
                }
            }
            held.deliveries.push(delivery);
        }
        held.release().await;
        if !rotate {
            break;
        }
    }
    report.remaining = broker.queue_len(DLQ_QUEUE).await?;
    Ok(report)
}

/// Replays or purges one selected dead letter; true once it is gone from the queue.
async fn act_on(
    broker: &SharedBroker,
    act: Act,
    letter: &DeadLetter,
    delivery: &Delivery,
    report: &mut ReplayReport,
) -> bool {
    let outcome = match act {
        Act::Purge => delivery.acker.ack().await,
        Act::Replay => {
            let Some(message) = letter.original_message() else {
                events::dead_letter_replay_refused(
                    letter.correlation_id.as_deref(),
                    letter.original_exchange.as_deref(),
                );
                report.skipped.push(letter.correlation_id.clone());
                return false;
            };
            match broker.publish(message).await {
                Ok(()) => delivery.acker.ack().await,
                Err(e) => Err(e),
            }
        }
    };
    match outcome {
        Ok(()) => {
            if act == Act::Replay {
                events::dead_letter_replayed();
                if is_timestamped_identify(letter) {
                    report
                        .timestamped_identifies
                        .push(letter.correlation_id.clone());
                }
            }
            report.replayed.push(letter.correlation_id.clone());
            true
        }
        Err(e) => {
            report.error = Some(e.to_string());
            false
        }
    }
}

/// Republishes a dead letter as it is to the back of the queue, then acks this copy.
async fn move_to_back(broker: &SharedBroker, delivery: &Delivery) -> Result<(), BrokerError> {
    let mut message = Publish::new(DLQ_EXCHANGE, &delivery.routing_key, delivery.body.clone());
    message.headers = delivery.headers.clone();
    broker.publish(message).await?;
    delivery.acker.ack().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::topology::{DLQ_EXCHANGE, IDENTIFY_EXCHANGE, TRACK_EXCHANGE};
    use crate::broker::{Broker, MemoryBroker, Topology};
    use serde_json::json;
    use std::sync::Arc;

    async fn broker_with_letters(n: usize) -> SharedBroker {
        let broker = MemoryBroker::new();
        broker.declare(&Topology::new(2)).await.unwrap();
        for i in 0..n {
            let body = json!({"type": "track", "userId": format!("u{i}"), "correlationId": format!("c{i}"),
                "payload": {"name": "x"}, "status": "failed", "error": "400", "errorKind": "rejected",
                "attempts": 1, "processingTime": 3});
            broker
                .publish(
                    Publish::new(
                        DLQ_EXCHANGE,
                        &format!("u{i}"),
                        serde_json::to_vec(&body).unwrap(),
                    )
                    .header(HEADER_ORIGINAL_EXCHANGE, TRACK_EXCHANGE)
                    .header(HEADER_ORIGINAL_ROUTING_KEY, format!("u{i}")),
                )
                .await
                .unwrap();
        }
        Arc::new(broker)
    }

    /// Dead letter `c<i>` of user `u<i>`, of `kind`, dead-lettered as `error_kind` at `at` ms.
    async fn add_letter(broker: &SharedBroker, i: usize, kind: &str, error_kind: &str, at: i64) {
        let body = json!({"type": kind, "userId": format!("u{i}"), "correlationId": format!("c{i}"),
            "payload": {"name": "x"}, "status": "failed", "error": "e", "errorKind": error_kind,
            "attempts": 1, "processingTime": 3});
        let exchange = exchange_for(MessageType::parse(kind).unwrap().route());
        broker
            .publish(
                Publish::new(
                    DLQ_EXCHANGE,
                    &format!("u{i}"),
                    serde_json::to_vec(&body).unwrap(),
                )
                .header(HEADER_DEAD_LETTERED_AT, at.to_string())
                .header(HEADER_ORIGINAL_EXCHANGE, exchange)
                .header(HEADER_ORIGINAL_ROUTING_KEY, format!("u{i}")),
            )
            .await
            .unwrap();
    }

    async fn ids_in_queue(broker: &SharedBroker) -> Vec<String> {
        let listing = list(broker, &Filter::default(), MAX_SCAN).await.unwrap();
        listing
            .dead_letters
            .into_iter()
            .filter_map(|d| d.correlation_id)
            .collect()
    }

    #[tokio::test]
    async fn filters_select_exactly_and_leave_the_rest_in_order() {
        let broker: SharedBroker = Arc::new(MemoryBroker::new());
        broker.declare(&Topology::new(2)).await.unwrap();
        for i in 0..12 {
            let kind = if i % 3 == 0 { "identify" } else { "track" };
            let error_kind = if i % 2 == 0 { "rejected" } else { "invalid" };
            add_letter(&broker, i, kind, error_kind, 1000 * i as i64).await;
        }
        let invalid = Filter {
            error_kind: Some("invalid".into()),
            ..Filter::default()
        };
        let listing = list(&broker, &invalid, 2).await.unwrap();
        assert_eq!(
            (listing.total, listing.scanned, listing.matched),
            (12, 12, 6)
        );
        assert_eq!(listing.dead_letters.len(), 2);
        assert_eq!(listing.summary.by_error_kind.get("invalid"), Some(&6));
        assert_eq!(listing.summary.by_type.get("identify"), Some(&2));
        let everything = list(&broker, &Filter::default(), 50).await.unwrap();
        assert_eq!(everything.summary.by_error_kind.get("rejected"), Some(&6));

        // The identifies dead-lettered in [3 s, 9 s): c3 and c6.
        let window = Selection {
            filter: Filter {
                kind: Some("identify".into()),
                since: Some(3000),
                until: Some(9000),
                ..Filter::default()
            },
            limit: None,
        };
        assert_eq!(purge(&broker, &window).await.unwrap(), 2);
        let left: Vec<String> = [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
            .iter()
            .map(|i| format!("c{i}"))
            .collect();
        assert_eq!(ids_in_queue(&broker).await, left);

        let report = replay(
            &broker,
            &Selection {
                filter: Filter {
                    user: Some("u5".into()),
                    ..Filter::default()
                },
                limit: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(report.replayed, [Some("c5".to_string())]);
        assert_eq!(report.remaining, 9);
        let left: Vec<String> = left.into_iter().filter(|id| id != "c5").collect();
        assert_eq!(ids_in_queue(&broker).await, left);
    }

    #[tokio::test]
    async fn past_max_scan_a_pass_pages_through_the_queue_and_keeps_the_order() {
        let broker: SharedBroker = Arc::new(MemoryBroker::new());
        broker.declare(&Topology::new(2)).await.unwrap();
        let n = MAX_SCAN as usize + 10;
        for i in 0..n {
            // Only the last ten, beyond the first scan's reach, are invalid.
            let error_kind = if i >= MAX_SCAN as usize {
                "invalid"
            } else {
                "rejected"
            };
            add_letter(&broker, i, "track", error_kind, 0).await;
        }
        let selection = Selection {
            filter: Filter {
                error_kind: Some("invalid".into()),
                ..Filter::default()
            },
            limit: Some(4),
        };
        let report = replay(&broker, &selection).await.unwrap();
        let replayed: Vec<String> = (MAX_SCAN as usize..MAX_SCAN as usize + 4)
            .map(|i| format!("c{i}"))
            .collect();
        assert_eq!(
            report.replayed,
            replayed.iter().cloned().map(Some).collect::<Vec<_>>()
        );
        assert_eq!(report.remaining as usize, n - 4);
        assert!(report.error.is_none());
        // Everything else is there, in its old order.
        let expected: Vec<String> = (0..n)
            .filter(|i| !(MAX_SCAN as usize..MAX_SCAN as usize + 4).contains(i))
            .map(|i| format!("c{i}"))
            .collect();
        assert_eq!(ids_in_queue(&broker).await, expected[..MAX_SCAN as usize]);
        assert_eq!(
            purge(
                &broker,
                &Selection {
                    filter: selection.filter.clone(),
                    limit: None
                }
            )
            .await
            .unwrap(),
            6
        );
        assert_eq!(broker.queue_len(DLQ_QUEUE).await.unwrap(), MAX_SCAN);
        assert_eq!(ids_in_queue(&broker).await, expected[..MAX_SCAN as usize]);
    }

    #[tokio::test]
    async fn a_replayed_identify_with_a_timestamp_is_reported_as_possibly_ignored() {
        let broker = broker_with_letters(1).await;
        let identify = json!({"type": "identify", "userId": "u9", "correlationId": "c9",
            "timestamp": 1_764_115_200_000i64, "payload": {"plan": "pro"},
            "status": "failed", "errorKind": "exhausted"});
        broker
            .publish(
                Publish::new(DLQ_EXCHANGE, "u9", serde_json::to_vec(&identify).unwrap())
                    .header(HEADER_ORIGINAL_EXCHANGE, IDENTIFY_EXCHANGE)
                    .header(HEADER_ORIGINAL_ROUTING_KEY, "u9"),
            )
            .await
            .unwrap();
        let report = replay(&broker, &Selection::count(2)).await.unwrap();
        assert_eq!(report.replayed.len(), 2);
        assert_eq!(report.timestamped_identifies, [Some("c9".to_string())]);
        assert!(
            report
                .timestamp_warning()
                .unwrap()
                .contains("silently ignores")
        );
    }

    #[tokio::test]
    async fn list_leaves_everything_and_replay_acks_only_the_chosen() {
        let broker = broker_with_letters(5).await;
        for _ in 0..2 {
            let listing = list(&broker, &Filter::default(), 3).await.unwrap();
            assert_eq!(listing.total, 5);
            assert_eq!(listing.dead_letters.len(), 3);
            assert_eq!(broker.queue_len(DLQ_QUEUE).await.unwrap(), 5);
        }
        let letter = show(&broker, "c3").await.unwrap();
        assert_eq!(letter.user_id.as_deref(), Some("u3"));
        assert!(matches!(
            show(&broker, "nope").await,
            Err(DlqError::NotFound(_))
        ));

        let report = replay(&broker, &Selection::correlation_id("c3"))
            .await
            .unwrap();
        assert_eq!(report.replayed, [Some("c3".to_string())]);
        assert_eq!(report.remaining, 4);
        let total: u32 = futures::future::join_all(Topology::new(2).partition_queues().map(|q| {
            let b = broker.clone();
            async move { b.queue_len(&q).await.unwrap() }
        }))
        .await
        .into_iter()
        .sum();
        assert_eq!(total, 1, "the replayed envelope is back on its way");

        let report = replay(&broker, &Selection::count(2)).await.unwrap();
        assert_eq!(report.replayed.len(), 2);
        assert_eq!(report.remaining, 2);
        assert_eq!(purge(&broker, &Selection::all()).await.unwrap(), 2);
        assert_eq!(broker.queue_len(DLQ_QUEUE).await.unwrap(), 0);
    }

    #[test]
    fn original_message_strips_the_failure() {
        let delivery_body = json!({"type": "identify", "userId": "7", "payload": {}, "status": "failed",
            "error": "e", "errorKind": "invalid", "attempts": 1, "processingTime": 2});
        let letter = DeadLetter {
            correlation_id: None,
            kind: Some("identify".into()),
            user_id: Some("7".into()),
            error_kind: None,
            error: None,
            attempts: None,
            original_exchange: None,
            original_routing_key: None,
            dead_lettered_at: None,
            redelivered: false,
            body: delivery_body,
        };
        let message = letter.original_message().unwrap();
        assert_eq!(message.exchange, "customerio.identify");
        assert_eq!(message.routing_key, "7");
        let body: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            json!({"type": "identify", "userId": "7", "payload": {}})
        );

        // A header naming another user does not reroute the envelope.
        let misrouted = DeadLetter {
            original_exchange: Some("customerio.identify".into()),
            original_routing_key: Some("someone-else".into()),
            ..letter.clone()
        };
        assert_eq!(misrouted.original_message().unwrap().routing_key, "7");

        let raw = DeadLetter {
            body: json!({"raw": "{not json", "status": "failed", "error": "e", "errorKind": "invalid",
                "attempts": 1, "processingTime": 0}),
            original_exchange: Some("customerio.track".into()),
            original_routing_key: Some("9".into()),
            ..letter
        };
        assert_eq!(raw.original_message().unwrap().body, b"{not json");

        // A reporting event goes back to the warehouse queue only; unknown exchanges nowhere.
        let webhook = DeadLetter {
            original_exchange: Some(WEBHOOKS_EXCHANGE.into()),
            original_routing_key: Some("email.bounced".into()),
            ..raw.clone()
        };
        let message = webhook.original_message().unwrap();
        assert_eq!(
            (message.exchange.as_str(), message.routing_key.as_str()),
            ("", WEBHOOKS_WAREHOUSE_QUEUE)
        );
        for exchange in [
            "customerio.partitioner",
            "customerio.dlq",
            "amq.topic",
            "nope",
        ] {
            let forged = DeadLetter {
                original_exchange: Some(exchange.into()),
                ..raw.clone()
            };
            assert!(forged.original_message().is_none(), "{exchange}");
        }
    }
}
