//! DLQActor: writes dead letters to `customerio.dlq` with a publisher confirm (retried briefly),
//! then acks. An error means the message is neither dead-lettered nor acked.

use super::messages::{DeadLetter, ErrorKind};
use super::settle::publish_confirmed;
use crate::broker::topology::{
    DLQ_EXCHANGE, HEADER_DEAD_LETTERED_AT, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY,
};
use crate::broker::{BrokerError, Publish, SharedBroker};
use crate::telemetry::events;
use actix::prelude::*;
use serde_json::{Map, Value, json};

pub struct DlqActor {
    broker: SharedBroker,
}

impl DlqActor {
    pub fn new(broker: SharedBroker) -> Self {
        Self { broker }
    }
}

/// The dead-letter body of docs/reference.md §5: the envelope (or `raw` text) plus the failure.
pub fn dead_letter_body(letter: &DeadLetter) -> Vec<u8> {
    let body = match serde_json::from_slice::<Value>(&letter.body) {
        Ok(Value::Object(map)) => map,
        _ => raw_body(&letter.body),
    };
    with_failure(
        body,
        &letter.error,
        letter.kind,
        letter.attempts,
        letter.processing_time_ms,
    )
}

/// A dead letter that keeps `body` as `raw` text whatever it holds, so a replay republishes
/// exactly those bytes: for a webhook event that could not be parsed (it never was an envelope).
pub fn raw_dead_letter(
    body: &[u8],
    error: &str,
    kind: ErrorKind,
    original_exchange: &str,
    original_routing_key: &str,
) -> Publish {
    let body = with_failure(raw_body(body), error, kind, 0, 0);
    Publish::new(DLQ_EXCHANGE, original_routing_key, body)
        .header(HEADER_DEAD_LETTERED_AT, now_ms())
        .header(HEADER_ORIGINAL_EXCHANGE, original_exchange.to_string())
        .header(
            HEADER_ORIGINAL_ROUTING_KEY,
            original_routing_key.to_string(),
        )
}

/// Now, for [`HEADER_DEAD_LETTERED_AT`]: what `dlq --since/--until` select by.
fn now_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

fn raw_body(body: &[u8]) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(
        "raw".into(),
        Value::String(String::from_utf8_lossy(body).into_owned()),
    );
    map
}

fn with_failure(
    mut body: Map<String, Value>,
    error: &str,
    kind: ErrorKind,
    attempts: u32,
    processing_time_ms: u64,
) -> Vec<u8> {
    body.insert("status".into(), json!("failed"));
    body.insert("error".into(), json!(error));
    body.insert("errorKind".into(), json!(kind.as_str()));
    body.insert("attempts".into(), json!(attempts));
    body.insert("processingTime".into(), json!(processing_time_ms));
    serde_json::to_vec(&body).unwrap_or_default()
}

impl Actor for DlqActor {
    type Context = Context<Self>;
}

impl Supervised for DlqActor {}

impl Handler<DeadLetter> for DlqActor {
    type Result = ResponseFuture<Result<(), BrokerError>>;

    fn handle(&mut self, letter: DeadLetter, _: &mut Context<Self>) -> Self::Result {
        let broker = self.broker.clone();
        Box::pin(async move {
            let message = Publish::new(
                DLQ_EXCHANGE,
                &letter.original_routing_key,
                dead_letter_body(&letter),
            )
            .header(HEADER_DEAD_LETTERED_AT, now_ms())
            .header(HEADER_ORIGINAL_EXCHANGE, letter.original_exchange.clone())
            .header(
                HEADER_ORIGINAL_ROUTING_KEY,
                letter.original_routing_key.clone(),
            );
            publish_confirmed(&broker, message).await?;
            events::dead_lettered(
                letter.kind.as_str(),
                letter.correlation_id.as_deref(),
                &letter.original_routing_key,
                &letter.error,
            );
            letter.acker.ack().await
        })
    }
}
