//! What IdentifyActor and TrackActor share: an actor that turns each envelope into a Track API
//! call (the shape is the only difference between them) and hands it to the batcher.

use super::batcher::TrackSender;
use super::messages::{Deliver, Delivered, Failure};
use super::panic_guard::{fault_hook, guarded};
use crate::customerio::TrackCall;
use crate::domain::Envelope;
use actix::prelude::*;
use std::marker::PhantomData;

/// How one kind of envelope becomes a Track API call.
pub trait CallShape: Unpin + 'static {
    fn to_call(envelope: Envelope, environment: &str) -> TrackCall;
}

/// Delivers envelopes of one [`CallShape`] to the Track API.
pub struct TrackApiActor<S: CallShape> {
    sender: TrackSender,
    environment: String,
    shape: PhantomData<S>,
}

impl<S: CallShape> TrackApiActor<S> {
    pub fn new(sender: TrackSender, environment: String) -> Self {
        Self {
            sender,
            environment,
            shape: PhantomData,
        }
    }
}

impl<S: CallShape> Actor for TrackApiActor<S> {
    type Context = Context<Self>;
}

impl<S: CallShape> Supervised for TrackApiActor<S> {}

impl<S: CallShape> Handler<Deliver> for TrackApiActor<S> {
    type Result = ResponseFuture<Result<Delivered, Failure>>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        guarded(|| {
            fault_hook(msg.envelope.user.as_str());
            let call = S::to_call(msg.envelope, &self.environment);
            let sender = self.sender.clone();
            async move {
                sender.send(call, msg.cancel).await?;
                Ok(Delivered::default())
            }
        })
    }
}
