//! IdentifyActor: person operations (identify, delete, suppress, devices, merge) to the Track API.

use super::batcher::TrackSender;
use super::messages::{Deliver, Failure};
use super::panic_guard::{fault_hook, guarded};
use crate::customerio::TrackCall;
use crate::domain::{Envelope, Operation};
use actix::prelude::*;

pub struct IdentifyActor {
    sender: TrackSender,
    environment: String,
}

impl IdentifyActor {
    pub fn new(sender: TrackSender, environment: String) -> Self {
        Self {
            sender,
            environment,
        }
    }

    /// Identify attributes carry `_env` and `_updated_at` (docs/reference.md §4).
    fn to_call(&self, envelope: Envelope) -> TrackCall {
        let operation = match envelope.operation {
            Operation::Identify(mut attributes) => {
                attributes.insert("_env", self.environment.as_str());
                attributes.insert("_updated_at", chrono::Utc::now().timestamp());
                Operation::Identify(attributes)
            }
            other => other,
        };
        TrackCall {
            user: envelope.user,
            operation,
            event_id: None,
        }
    }
}

impl Actor for IdentifyActor {
    type Context = Context<Self>;
}

impl Supervised for IdentifyActor {}

impl Handler<Deliver> for IdentifyActor {
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
