//! Domain types: everything a producer can say, parsed once into validated values.
//!
//! Nothing here does I/O or knows about RabbitMQ, HTTP or Customer.io's wire format;
//! the edges translate these types, the core only ever sees valid ones.

mod attributes;
mod broadcast;
mod correlation_id;
mod envelope;
mod error;
mod event;
mod identifier;
pub mod limits;
mod object;
mod transactional;
mod user_id;
pub mod webhook;

pub use attributes::Attributes;
pub use broadcast::BroadcastTrigger;
pub use correlation_id::CorrelationId;
pub use envelope::{Envelope, MessageType, Operation, Route};
pub use error::ParseError;
pub use event::{Device, Event, EventName, PersonRef, View};
pub use object::{ObjectAction, ObjectOp, Relationship};
pub use transactional::{Channel, TemplateRef, TransactionalRequest};
pub use user_id::UserId;
pub use webhook::{EventId, Metric, ObjectType, ReceivedEvent, ReportingEvent, Row};
