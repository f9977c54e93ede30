//! Dead-letter administration (list, show, replay, purge), shared by `cio-gateway dlq` and the
//! `/admin/dlq` routes. The actor that writes dead letters is `actors::DlqActor`.
//!
//! Reading never loses a message: the classic queue `customerio.dlq` is consumed with manual
//! acks, the wanted deliveries are held unacked, and the consumer is then closed and awaited,
//! which returns every one of them to the queue before the call returns (so listing twice shows
//! the same thing). Only replay and purge ack, and replay acks a dead letter only after its
//! republished envelope was confirmed by RabbitMQ.

use crate::broker::topology::{
    DLQ_QUEUE, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY, IDENTIFY_EXCHANGE,
    TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE, WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE,
    exchange_for,
};
use crate::broker::{BrokerError, Delivery, DeliveryStream, Publish, SharedBroker};
use crate::domain::MessageType;
use crate::telemetry::events;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
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
            redelivered: delivery.redelivered,
            body,
        }
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

/// What `list` saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// Dead letters ready in the queue.
    pub total: u32,
    pub dead_letters: Vec<DeadLetter>,
}

/// The first `limit` dead letters, left in the queue.
pub async fn list(broker: &SharedBroker, limit: u32) -> Result<Listing, DlqError> {
    let held = hold(broker, limit).await?;
    let listing = Listing {
        total: held.total,
        dead_letters: held
            .deliveries
            .iter()
            .map(DeadLetter::from_delivery)
            .collect(),
    };
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

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The oldest `n`.
    Count(u32),
    /// Every dead letter with this correlation id.
    CorrelationId(String),
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

/// [`replay`], calling `progress` after each dead letter it holds has been handled.
pub async fn replay_with_progress(
    broker: &SharedBroker,
    selection: &Selection,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ReplayReport, DlqError> {
    let scan = match selection {
        Selection::Count(n) => (*n).min(MAX_SCAN),
        Selection::CorrelationId(_) => MAX_SCAN,
    };
    let mut held = hold(broker, scan).await?;
    let mut report = ReplayReport::default();
    let mut matched = 0;
    let of = held.deliveries.len() as u64;
    for (done, delivery) in (1..).zip(std::mem::take(&mut held.deliveries)) {
        progress(Progress { done, of });
        let letter = DeadLetter::from_delivery(&delivery);
        let selected = match selection {
            Selection::Count(_) => true,
            Selection::CorrelationId(id) => letter.correlation_id.as_deref() == Some(id.as_str()),
        };
        if !selected {
            held.deliveries.push(delivery);
            continue;
        }
        matched += 1;
        if report.error.is_some() {
            held.deliveries.push(delivery);
            continue;
        }
        let Some(message) = letter.original_message() else {
            events::dead_letter_replay_refused(
                letter.correlation_id.as_deref(),
                letter.original_exchange.as_deref(),
            );
            report.skipped.push(letter.correlation_id);
            held.deliveries.push(delivery);
            continue;
        };
        let outcome = match broker.publish(message).await {
            Ok(()) => delivery.acker.ack().await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                events::dead_letter_replayed();
                if is_timestamped_identify(&letter) {
                    report
                        .timestamped_identifies
                        .push(letter.correlation_id.clone());
                }
                report.replayed.push(letter.correlation_id);
            }
            Err(e) => {
                report.error = Some(e.to_string());
                held.deliveries.push(delivery);
            }
        }
    }
    held.release().await;
    if let Selection::CorrelationId(id) = selection
        && matched == 0
    {
        return Err(DlqError::NotFound(id.clone()));
    }
    report.remaining = broker.queue_len(DLQ_QUEUE).await?;
    Ok(report)
}

/// Deletes the dead letters that are in the queue now; returns how many.
pub async fn purge(broker: &SharedBroker) -> Result<u64, DlqError> {
    purge_with_progress(broker, &mut |_| {}).await
}

/// [`purge`], calling `progress` after each dead letter deleted.
pub async fn purge_with_progress(
    broker: &SharedBroker,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64, DlqError> {
    let mut left = broker.queue_len(DLQ_QUEUE).await?;
    let of = u64::from(left);
    let mut purged = 0u64;
    while left > 0 {
        let mut held = hold(broker, left.min(MAX_SCAN)).await?;
        let mut acked = 0u32;
        for delivery in std::mem::take(&mut held.deliveries) {
            delivery.acker.ack().await?;
            acked += 1;
            progress(Progress {
                done: purged + u64::from(acked),
                of: of.max(purged + u64::from(acked)),
            });
        }
        held.release().await;
        if acked == 0 {
            break;
        }
        purged += u64::from(acked);
        left = left.saturating_sub(acked);
    }
    Ok(purged)
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
        let report = replay(&broker, &Selection::Count(2)).await.unwrap();
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
            let listing = list(&broker, 3).await.unwrap();
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

        let report = replay(&broker, &Selection::CorrelationId("c3".into()))
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

        let report = replay(&broker, &Selection::Count(2)).await.unwrap();
        assert_eq!(report.replayed.len(), 2);
        assert_eq!(report.remaining, 2);
        assert_eq!(purge(&broker).await.unwrap(), 2);
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
