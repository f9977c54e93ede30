//! The reporting side: what happens to webhook events after the edge stored them.
//!
//! ```text
//! POST /webhooks/customerio ──> customerio.webhooks (topic, key <object_type>.<metric>)
//!     ├── customerio.webhooks.actions ──> WebhookActor ──suppress / identify──> ordered pipeline
//!     └── customerio.webhooks.warehouse ──> WarehouseActor ──batches──> file | postgres | bigquery
//! ```

use super::messages::Drain;
use super::webhook::Following;
use super::{DlqActor, WarehouseActor, WebhookActor};
use crate::broker::SharedBroker;
use crate::config::Settings;
use crate::domain::webhook::Rules;
use crate::preferences::{Stores, TopicMap};
use crate::publisher::Publisher;
use actix::{Addr, Supervisor};
use std::sync::Arc;
use std::time::Duration;

/// The running reporting actors.
pub struct Reporting {
    webhook: Addr<WebhookActor>,
    warehouse: Addr<WarehouseActor>,
}

/// Starts both actors under supervisors; must run inside an actix `System`. Fails on a sink
/// configuration that cannot work (missing URL, project); connecting happens in the actors.
pub fn start_reporting(
    settings: &Settings,
    broker: SharedBroker,
    publisher: Publisher,
    stores: Stores,
) -> anyhow::Result<Reporting> {
    let rules = Rules::parse(&settings.webhooks.rules)
        .map_err(|e| anyhow::anyhow!("configuration key `webhooks.rules`: {e}"))?;
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let sink = crate::warehouse::from_settings(&settings.warehouse)?;
    if settings.webhooks.signing_secrets.is_empty() {
        tracing::warn!(
            "webhooks.signing_secrets is empty: POST /webhooks/customerio refuses every request"
        );
    }
    let warehouse_settings = &settings.warehouse;
    let (batch_size, flush) = (
        warehouse_settings.batch_size,
        Duration::from_millis(warehouse_settings.flush_ms.max(1)),
    );
    let dlq = {
        let broker = broker.clone();
        Supervisor::start(move |_| DlqActor::new(broker))
    };
    let warehouse = {
        let broker = broker.clone();
        Supervisor::start(move |_| WarehouseActor::new(broker, sink, dlq, batch_size, flush))
    };
    let horizon = Duration::from_secs(settings.webhooks.tolerance_secs);
    let following = Following {
        store: stores.preferences,
        topics: Arc::new(
            TopicMap::parse(&settings.preferences.subscription_topics).map_err(|e| {
                anyhow::anyhow!("configuration key `preferences.subscription_topics`: {e}")
            })?,
        ),
    };
    let ledger = stores.actions;
    let webhook = Supervisor::start(move |_| {
        WebhookActor::new(broker, publisher, rules, ledger)
            .with_horizon(horizon)
            .following(following.clone())
    });
    Ok(Reporting { webhook, warehouse })
}

impl Reporting {
    /// Whether the reporting actors are alive, as a check `/readyz` can keep.
    pub fn liveness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (webhook, warehouse) = (self.webhook.clone(), self.warehouse.clone());
        move || webhook.connected() && warehouse.connected()
    }

    pub fn is_running(&self) -> bool {
        self.webhook.connected() && self.warehouse.connected()
    }

    /// Stops taking events; the warehouse writes what it buffered, the actions settle the
    /// event in hand. Whatever is unsettled at `deadline` is redelivered after the restart.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let both = futures::future::join(self.webhook.send(Drain), self.warehouse.send(Drain));
        tokio::time::timeout(deadline, both).await.is_ok()
    }
}
