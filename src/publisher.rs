//! Publishing envelopes the way producers must: validated, with a correlation id, to the
//! exchange of their type, routed by user id, confirmed by the broker. Used by the HTTP
//! ingestion, the CLI, webhook actions and preference syncs — and by Rust producers.
//!
//! For Rust producers this is the producer kit: the envelope is checked by the very types the
//! gateway parses with, so what [`Publisher::publish`] accepts the gateway delivers (or
//! dead-letters only for Customer.io's own reasons). Producers in other languages follow
//! `docs/envelope.schema.json` and `examples/python/publish.py` / `examples/node/publish.js`.
//!
//! ```no_run
//! use cio_gateway::broker::{self, Topology};
//! use cio_gateway::publisher::Publisher;
//! use serde_json::json;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let broker = broker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Topology::new(8)).await?;
//! let publisher = Publisher::new(broker.clone());
//! let id = publisher
//!     .publish(json!({"type": "track", "userId": "42", "payload": {"name": "signup"}}))
//!     .await?; // returns once RabbitMQ confirmed the message
//! println!("published {id}");
//! broker.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! The routing key is the user id, so all of a user's messages, from any exchange, reach
//! Customer.io in the order their `publish` calls returned. To keep that order, publish one
//! user's messages one after the other (await each), not concurrently.

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

/// Publishes envelopes (docs/reference.md §4) with publisher confirms. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    broker: SharedBroker,
}

impl Publisher {
    pub fn new(broker: SharedBroker) -> Self {
        Self { broker }
    }

    /// Completes and validates an envelope, without publishing: a missing `correlationId`
    /// becomes a fresh ULID, a missing `timestamp` the current time in milliseconds. Returns the
    /// parsed envelope and the body to publish, or the first problem with its JSON path
    /// (`payload.name`).
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
    pub async fn publish_prepared(
        &self,
        envelope: &Envelope,
        body: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let exchange = exchange_for(envelope.kind.route());
        self.broker
            .publish(Publish::new(exchange, envelope.user.as_str(), body))
            .await
    }

    /// Validates, completes and publishes one envelope to the exchange of its type
    /// (`customerio.identify`, `customerio.track` or `customerio.transactional`) with its user id
    /// as routing key, persistent and mandatory; returns its correlation id once RabbitMQ
    /// confirmed it. An invalid envelope is refused before anything is sent.
    pub async fn publish(&self, envelope: Value) -> Result<CorrelationId, PublishError> {
        let (parsed, body) = self.prepare(envelope)?;
        self.publish_prepared(&parsed, body).await?;
        Ok(parsed
            .correlation_id
            .expect("prepare always sets a correlation id"))
    }
}
