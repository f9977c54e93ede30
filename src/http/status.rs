//! `GET /admin/status` (bearer `admin.token`): how this replica stands, in one JSON document.
//! Every partition (whether this replica receives from it, its ready and unacked messages, the
//! users held on a retry and the oldest of them), each Customer.io API's circuit and adaptive
//! rate, the warehouse queue's lag, the preferences sync backlog, and the build.
//! `cio-gateway status` prints the same as a table.

use super::{AppState, auth};
use crate::actors::Partitions;
use crate::actors::messages::PartitionStatus;
use crate::broker::topology::WEBHOOKS_WAREHOUSE_QUEUE;
use crate::customerio::{ApiStatus, CustomerIo};
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use parking_lot::RwLock;
use serde::Serialize;
use std::sync::Arc;

/// What the status is read from, set once the pipeline runs.
#[derive(Clone, Default)]
pub struct StatusSources(Arc<RwLock<Option<(Partitions, CustomerIo)>>>);

impl StatusSources {
    pub fn set(&self, partitions: Partitions, client: CustomerIo) {
        *self.0.write() = Some((partitions, client));
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: &'static str,
    pub revision: &'static str,
    pub partitions: Vec<PartitionRow>,
    pub apis: Vec<ApiStatus>,
    pub warehouse: QueueLag,
    pub preferences: PreferencesBacklog,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRow {
    #[serde(flatten)]
    pub shard: PartitionStatus,
    /// Ready in the queue, from a passive declare (`null` if RabbitMQ did not answer).
    pub ready: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueLag {
    pub queue: &'static str,
    pub ready: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferencesBacklog {
    /// Changes not yet synced to Customer.io (`null` if the store did not answer).
    pub sync_pending: Option<u64>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/status")
            .route(web::get().to(status).wrap(from_fn(auth::require_admin))),
    );
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    match collect(&state).await {
        Some(status) => HttpResponse::Ok().json(status),
        None => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "the pipeline is not running"})),
    }
}

/// The status now; `None` before the pipeline runs.
pub async fn collect(state: &AppState) -> Option<Status> {
    let (partitions, client) = state.status.0.read().clone()?;
    let mut rows = Vec::new();
    for shard in partitions.status().await {
        let ready = state.broker.queue_len(&shard.partition).await.ok();
        rows.push(PartitionRow { shard, ready });
    }
    let sync_pending = match &state.preferences {
        Some(preferences) => preferences.pending_count().await.ok(),
        None => None,
    };
    Some(Status {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("CIO_GATEWAY_REVISION"),
        partitions: rows,
        apis: client.status(),
        warehouse: QueueLag {
            queue: WEBHOOKS_WAREHOUSE_QUEUE,
            ready: state.broker.queue_len(WEBHOOKS_WAREHOUSE_QUEUE).await.ok(),
        },
        preferences: PreferencesBacklog { sync_pending },
    })
}
