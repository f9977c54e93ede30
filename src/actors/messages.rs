//! The typed messages the actors exchange, and the one failure type of a delivery attempt.

use super::dedup::DedupKey;
use crate::broker::{Acker, BrokerError};
use crate::domain::{Envelope, UserId};
use actix::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Deliver one envelope to Customer.io: one attempt, no retries (the shard owns retrying).
#[derive(Message)]
#[rtype(result = "Result<Delivered, Failure>")]
pub struct Deliver {
    pub envelope: Envelope,
    /// Fired when the shard that asked loses its partition: an attempt not yet on the wire is
    /// dropped, so it cannot land after the next consumer's.
    pub cancel: CancellationToken,
}

/// What Customer.io said of a delivered envelope that its processed event carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivered {
    /// The App API's `delivery_id` of a transactional send: every later reporting webhook of
    /// that message carries it, so a warehouse can join the send to its opens and bounces.
    pub delivery_id: Option<String>,
}

/// What went wrong with an attempt, as the pipeline needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureKind {
    /// Worth another attempt, after at least `retry_after` when Customer.io said so.
    Retryable { retry_after: Option<Duration> },
    /// Customer.io answered 4xx: the same request will fail again.
    Rejected,
    /// The gateway refused it before sending (a limit, an unknown template).
    Invalid,
    /// The workspace failed, not this message (circuit open, rate limited): send it again
    /// without spending an attempt; the client holds it back until the API recovers.
    Paused,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable { retry_after: None },
            message: message.into(),
        }
    }

    pub fn paused(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Paused,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Invalid,
            message: message.into(),
        }
    }
}

impl From<crate::customerio::CioError> for Failure {
    fn from(e: crate::customerio::CioError) -> Self {
        let kind = if e.is_workspace() {
            FailureKind::Paused
        } else if e.is_retryable() {
            FailureKind::Retryable {
                retry_after: e.retry_after(),
            }
        } else if matches!(e, crate::customerio::CioError::Invalid(_)) {
            FailureKind::Invalid
        } else {
            FailureKind::Rejected
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

/// The `errorKind` of a dead letter (docs/reference.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    Invalid,
    Rejected,
    Exhausted,
    /// The warehouse refused the row for good (e.g. a value its column type cannot hold).
    WarehouseRejected,
    /// An authentic reporting webhook (or one event of it) that could not be parsed: kept
    /// here, since refusing it would stall Customer.io's stream to the endpoint.
    WebhookUnparsable,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::WarehouseRejected => "warehouse_rejected",
            ErrorKind::WebhookUnparsable => "webhook_unparsable",
        }
    }
}

/// Dead-letter a message, then ack it: handled by the DLQ actor.
#[derive(Message)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct DeadLetter {
    /// For the logs: the message's correlationId (or the webhook's event_id), when known.
    pub correlation_id: Option<String>,
    /// The body as received; parsed again only to embed it as JSON when it is JSON.
    pub body: Vec<u8>,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub error: String,
    pub kind: ErrorKind,
    pub attempts: u32,
    pub processing_time_ms: u64,
    pub acker: Acker,
}

/// The result of an attempt, reported back to the shard that started it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttemptDone {
    pub user: UserId,
    pub generation: u64,
    /// Which attempt of the message this was (1-based).
    pub attempt: u32,
    /// So a success that arrives after a restart still fills the dedup window.
    pub dedup_key: Option<DedupKey>,
    pub result: Result<Delivered, Failure>,
}

/// A message's outcome is durable (or could not be made so): its lane may move on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settled {
    /// The lane the message headed; none for a message refused before it joined one.
    pub user: Option<UserId>,
    pub generation: u64,
    /// Which of its generation's deliveries it is, in the order received.
    pub seq: u64,
    pub confirmed: bool,
    /// The ack still to write once confirmed (a dead letter's is written by the DLQ actor).
    pub ack: Option<Acker>,
}

/// Acks of settled messages are written (or failed): their lanes may move on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AcksWritten {
    pub generation: u64,
    pub users: Vec<UserId>,
    pub written: bool,
}

/// Stop taking new work; resolves when in-flight attempts are settled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// What a shard reports of its partition for `/admin/status`.
#[derive(Message)]
#[rtype(result = "PartitionStatus")]
pub struct Status;

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: String,
    /// Whether this replica received from the partition since it last subscribed: with
    /// single-active-consumer only the active consumer does (an idle queue shows false).
    pub receiving: bool,
    /// Messages held unacked here: in lanes, and each lane's one settling.
    pub unacked: usize,
    /// Users with a lane, and of them those whose head failed and is being retried.
    pub lanes: usize,
    pub held_lanes: usize,
    /// The oldest held head: how long ago it was received, and its last failure.
    pub oldest_held_age_ms: Option<u64>,
    pub oldest_held_error: Option<String>,
}
