//! IdentifyActor: person operations (identify, delete, suppress, devices, merge) and object
//! operations to the Track API.

use super::track_api::{CallShape, TrackApiActor};
use crate::customerio::TrackCall;
use crate::domain::{Envelope, ObjectAction, Operation};

pub type IdentifyActor = TrackApiActor<PersonCall>;

/// A person operation; identify attributes carry `_env` and `_updated_at` (docs/reference.md §4),
/// an identify carries the envelope's `timestamp` as Customer.io's ordering timestamp, and its
/// `anonymousId` as the `anonymous_id` attribute by which Customer.io merges anonymous activity.
pub struct PersonCall;

impl CallShape for PersonCall {
    fn to_call(envelope: Envelope, environment: &str) -> TrackCall {
        let message_id = envelope.correlation_id.as_ref().map(|id| id.to_string());
        let mut timestamp = None;
        let operation = match envelope.operation {
            Operation::Identify(mut attributes) => {
                attributes.insert("_env", environment);
                attributes.insert("_updated_at", chrono::Utc::now().timestamp());
                timestamp = envelope.timestamp.map(|ms| ms / 1000);
                // Customer.io merges the anonymous events carrying this id into the person.
                if let Some(anonymous) = &envelope.anonymous_id {
                    attributes.insert("anonymous_id", anonymous.as_str());
                }
                Operation::Identify(attributes)
            }
            Operation::Object(mut object) if object.action == ObjectAction::Identify => {
                object.attributes.insert("_env", environment);
                Operation::Object(object)
            }
            other => other,
        };
        TrackCall {
            user: envelope.user,
            person: envelope.person,
            operation,
            event_id: None,
            timestamp,
            message_id,
            published_ms: envelope.timestamp,
        }
    }
}
