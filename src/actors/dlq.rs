//! DLQActor: writes dead letters to `customerio.dlq` with a publisher confirm (retried briefly),
//! then acks. An error means the message is neither dead-lettered nor acked.

use super::messages::DeadLetter;
use super::settle::publish_confirmed;
use crate::broker::topology::{
    DLQ_EXCHANGE, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY,
};
use crate::broker::{BrokerError, Publish, SharedBroker};
use crate::telemetry::metric;
use actix::prelude::*;
use serde_json::{Value, json};

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
    let mut body = match serde_json::from_slice::<Value>(&letter.body) {
        Ok(Value::Object(map)) => map,
        _ => {
            let mut map = serde_json::Map::new();
            map.insert(
                "raw".into(),
                Value::String(String::from_utf8_lossy(&letter.body).into_owned()),
            );
            map
        }
    };
    body.insert("status".into(), json!("failed"));
    body.insert("error".into(), json!(letter.error));
    body.insert("errorKind".into(), json!(letter.kind.as_str()));
    body.insert("attempts".into(), json!(letter.attempts));
    body.insert("processingTime".into(), json!(letter.processing_time_ms));
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
            .header(HEADER_ORIGINAL_EXCHANGE, letter.original_exchange.clone())
            .header(
                HEADER_ORIGINAL_ROUTING_KEY,
                letter.original_routing_key.clone(),
            );
            publish_confirmed(&broker, message).await?;
            metrics::counter!(metric::DEAD_LETTERS, "error_kind" => letter.kind.as_str())
                .increment(1);
            tracing::warn!(
                correlation_id = letter.correlation_id.as_deref().unwrap_or(""),
                kind = letter.kind.as_str(),
                routing_key = %letter.original_routing_key,
                error = %letter.error,
                "dead-lettered"
            );
            letter.acker.ack().await
        })
    }
}
