//! TrackActor: events, page and screen views to the Track API, with the correlation ULID as event `id`
//! so Customer.io de-duplicates a redelivered event.

use super::track_api::{CallShape, TrackApiActor};
use crate::customerio::TrackCall;
use crate::domain::{Envelope, MessageType, Operation};

pub type TrackActor = TrackApiActor<EventCall>;

/// An event or a page or screen view, tagged with `_env`; a view carries the envelope's `timestamp`.
pub struct EventCall;

impl CallShape for EventCall {
    fn to_call(envelope: Envelope, environment: &str) -> TrackCall {
        let message_id = envelope.correlation_id.as_ref().map(|id| id.to_string());
        let published_secs = envelope.timestamp.map(|ms| ms / 1000);
        let mut timestamp = None;
        let operation = match envelope.operation {
            Operation::Track(mut event) => {
                event.data.insert("_env", environment);
                // Without its own timestamp, the event happened when it was published.
                event.timestamp = event.timestamp.or(published_secs);
                Operation::Track(event)
            }
            Operation::Page(mut view) | Operation::Screen(mut view) => {
                view.data.insert("_env", environment);
                timestamp = published_secs;
                if envelope.kind == MessageType::Screen {
                    Operation::Screen(view)
                } else {
                    Operation::Page(view)
                }
            }
            other => other,
        };
        TrackCall {
            user: envelope.user,
            person: envelope.person,
            operation,
            event_id: envelope.correlation_id.and_then(|id| id.as_ulid()),
            timestamp,
            message_id,
            published_ms: envelope.timestamp,
        }
    }
}
