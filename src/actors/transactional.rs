//! TransactionalActor: App API sends, with template names resolved from `[templates]`.

use super::messages::{Deliver, Failure};
use crate::customerio::{CustomerIo, unless_cancelled};
use crate::domain::{Operation, TemplateRef};
use actix::prelude::*;
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
    type Result = ResponseFuture<Result<(), Failure>>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        let Operation::Transactional(request) = msg.envelope.operation else {
            return Box::pin(async { Err(Failure::invalid("not a transactional message")) });
        };
        let message_id = self.message_id(&request.template);
        let client = self.client.clone();
        Box::pin(async move {
            let message_id = message_id?;
            unless_cancelled(msg.cancel, client.send(&request, message_id.as_ref()))
                .await
                .map(drop)
                .map_err(Failure::from)
        })
    }
}
