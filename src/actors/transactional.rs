//! TransactionalActor: App API sends, with template names resolved from `[templates]`, and
//! API-triggered broadcasts.

use super::messages::{Deliver, Delivered, Failure};
use super::panic_guard::{fault_hook, guarded};
use crate::customerio::{CustomerIo, unless_cancelled};
use crate::domain::{Operation, TemplateRef};
use actix::prelude::*;
use futures::FutureExt as _;
use serde_json::Value;
use std::collections::BTreeMap;

pub struct TransactionalActor {
    client: CustomerIo,
    templates: BTreeMap<String, Value>,
}

impl TransactionalActor {
    pub fn new(client: CustomerIo, templates: BTreeMap<String, Value>) -> Self {
        Self { client, templates }
    }

    fn message_id(&self, template: &TemplateRef) -> Result<Option<Value>, Failure> {
        match template {
            TemplateRef::Id(id) => Ok(Some(id.clone())),
            TemplateRef::Named(name) => self
                .templates
                .get(name)
                .cloned()
                .map(Some)
                .ok_or_else(|| Failure::invalid(format!("unknown template {name:?}"))),
            TemplateRef::Inline => Ok(None),
        }
    }
}

impl Actor for TransactionalActor {
    type Context = Context<Self>;
}

impl Supervised for TransactionalActor {}

impl Handler<Deliver> for TransactionalActor {
    type Result = ResponseFuture<Result<Delivered, Failure>>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        guarded(|| {
            fault_hook(msg.envelope.user.as_str());
            let client = self.client.clone();
            let cancel = msg.cancel;
            match msg.envelope.operation {
                Operation::Transactional(request) => {
                    let message_id = self.message_id(&request.template);
                    async move {
                        let message_id = message_id?;
                        unless_cancelled(cancel, client.send(&request, message_id.as_ref()))
                            .await
                            .map(|receipt| Delivered {
                                delivery_id: Some(receipt.delivery_id).filter(|id| !id.is_empty()),
                            })
                            .map_err(Failure::from)
                    }
                    .boxed_local()
                }
                Operation::Broadcast(trigger) => async move {
                    unless_cancelled(cancel, client.trigger_broadcast(&trigger))
                        .await
                        .map(|()| Delivered::default())
                        .map_err(Failure::from)
                }
                .boxed_local(),
                _ => std::future::ready(Err(Failure::invalid("not a transactional message")))
                    .boxed_local(),
            }
        })
    }
}
