//! Publishing envelopes the way producers must: validated, with a correlation id, to the
//! exchange of their type, routed by user id, confirmed by the broker. Used by the HTTP
//! ingestion, the CLI, webhook actions and preference syncs — and by Rust producers.

use crate::broker::topology::exchange_for;
use crate::broker::{BrokerError, Publish, SharedBroker};
use crate::domain::{CorrelationId, Envelope, ParseError};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid envelope: {0}")]
    Invalid(#[from] ParseError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

#[derive(Clone)]
pub struct Publisher {
    broker: SharedBroker,
}

impl Publisher {
    pub fn new(broker: SharedBroker) -> Self {
        Self { broker }
    }

    /// Completes (correlation id, timestamp) and validates an envelope, without publishing.
    pub fn prepare(&self, mut envelope: Value) -> Result<(Envelope, Vec<u8>), ParseError> {
        if let Value::Object(map) = &mut envelope {
            if !map.get("correlationId").is_some_and(Value::is_string) {
                map.insert(
                    "correlationId".into(),
                    CorrelationId::generate().as_str().into(),
                );
            }
            if map.get("timestamp").is_none_or(Value::is_null) {
                map.insert(
                    "timestamp".into(),
                    chrono::Utc::now().timestamp_millis().into(),
                );
            }
        }
        let parsed = Envelope::from_value(&envelope)?;
        let body = serde_json::to_vec(&envelope).map_err(|e| ParseError::new("", e.to_string()))?;
        Ok((parsed, body))
    }

    /// Publishes an already prepared envelope and waits for the broker's confirm.
    pub async fn publish_prepared(&self, envelope: &Envelope, body: Vec<u8>) -> Result<(), BrokerError> {
        let exchange = exchange_for(envelope.kind.route());
        self.broker
            .publish(Publish::new(exchange, envelope.user.as_str(), body))
            .await
    }

    /// Validates, completes and publishes one envelope; returns its correlation id.
    pub async fn publish(&self, envelope: Value) -> Result<CorrelationId, PublishError> {
        let (parsed, body) = self.prepare(envelope)?;
        self.publish_prepared(&parsed, body).await?;
        Ok(parsed
            .correlation_id
            .expect("prepare always sets a correlation id"))
    }
}
