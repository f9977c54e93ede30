//! TrackActor: events and page views to the Track API, with the correlation ULID as event `id`
//! so Customer.io de-duplicates a redelivered event.

use super::batcher::TrackSender;
use super::messages::{Deliver, Failure};
use super::panic_guard::{fault_hook, guarded};
use crate::customerio::TrackCall;
use crate::domain::{Envelope, Operation};
use actix::prelude::*;

pub struct TrackActor {
    sender: TrackSender,
    environment: String,
}

impl TrackActor {
    pub fn new(sender: TrackSender, environment: String) -> Self {
        Self {
            sender,
            environment,
        }
    }

    fn to_call(&self, envelope: Envelope) -> TrackCall {
        let published_secs = envelope.timestamp.map(|ms| ms / 1000);
        let operation = match envelope.operation {
            Operation::Track(mut event) => {
                event.data.insert("_env", self.environment.as_str());
                // Without its own timestamp, the event happened when it was published.
                event.timestamp = event.timestamp.or(published_secs);
                Operation::Track(event)
            }
            Operation::Page(mut page) => {
                page.data.insert("_env", self.environment.as_str());
                Operation::Page(page)
            }
            other => other,
        };
        TrackCall {
            user: envelope.user,
            operation,
            event_id: envelope.correlation_id.and_then(|id| id.as_ulid()),
        }
    }
}

impl Actor for TrackActor {
    type Context = Context<Self>;
}

impl Supervised for TrackActor {}

impl Handler<Deliver> for TrackActor {
    type Result = ResponseFuture<Result<(), Failure>>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        guarded(|| {
            fault_hook(msg.envelope.user.as_str());
            let call = self.to_call(msg.envelope);
            let sender = self.sender.clone();
            async move { sender.send(call, msg.cancel).await }
        })
    }
}
