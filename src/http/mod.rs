//! The HTTP edge: one module per route family, all sharing [`AppState`].

mod admin;
mod auth;
mod body;
mod console;
mod events;
mod health;
mod lanes;
pub mod openapi;
mod pipelines;
mod preferences;
pub mod slow_clients;
pub mod status;
pub mod webhooks;

use crate::broker::SharedBroker;
use crate::config::Settings;
use crate::preferences::PreferenceService;
use crate::publisher::Publisher;
use crate::recent::RecentSet;
use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What every handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub broker: SharedBroker,
    pub publisher: Publisher,
    pub metrics: PrometheusHandle,
    pub actors: Liveness,
    /// Closed once shutdown begins: routes that take work answer 503 from then on.
    pub intake: Intake,
    /// Webhook event ids confirmed recently (answering Customer.io's retries at once).
    pub recent_webhooks: Arc<RecentSet<String>>,
    /// The preferences store and its sync; `None` until [`AppState::with_preferences`].
    pub preferences: Option<Arc<PreferenceService>>,
    /// What `/admin/status` reads, once the pipeline runs.
    pub status: status::StatusSources,
}

impl AppState {
    pub fn new(settings: Arc<Settings>, broker: SharedBroker) -> Self {
        Self {
            publisher: Publisher::new(broker.clone()),
            settings,
            broker,
            metrics: crate::telemetry::metrics(),
            actors: Liveness::default(),
            intake: Intake::default(),
            recent_webhooks: Arc::new(RecentSet::new(webhooks::RECENT_CAPACITY)),
            preferences: None,
            status: status::StatusSources::default(),
        }
    }

    pub fn with_preferences(mut self, preferences: Arc<PreferenceService>) -> Self {
        self.preferences = Some(preferences);
        self
    }

    pub fn is_ready(&self) -> bool {
        self.broker.is_connected() && self.actors.alive()
    }
}

type AliveCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Whether every actor of the gateway is alive (readiness: watched once they run, cleared on
/// shutdown), and whether what dies is still restarted (liveness: healthy unless a watched
/// check says otherwise).
#[derive(Clone, Default)]
pub struct Liveness {
    ready: Arc<RwLock<Option<AliveCheck>>>,
    healthy: Arc<RwLock<Option<AliveCheck>>>,
}

impl Liveness {
    pub fn watch(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        *self.ready.write() = Some(Arc::new(check));
    }

    /// The check `/healthz` keeps: false only when something is dead for good.
    pub fn watch_health(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        *self.healthy.write() = Some(Arc::new(check));
    }

    pub fn clear(&self) {
        *self.ready.write() = None;
        *self.healthy.write() = None;
    }

    pub fn alive(&self) -> bool {
        self.ready.read().as_ref().is_some_and(|check| check())
    }

    pub fn healthy(&self) -> bool {
        self.healthy.read().as_ref().is_none_or(|check| check())
    }
}

/// Whether the edge still takes work (events, webhooks, preference changes, replays). Shutdown
/// closes it first, so nothing new is accepted while what is queued drains; the probes, the
/// metrics and, in local mode, the sandbox keep serving until the server stops.
#[derive(Clone, Default)]
pub struct Intake(Arc<AtomicBool>);

impl Intake {
    pub fn close(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// A 503 with `Retry-After` once closed: the client (or Customer.io) sends it again, to
    /// another replica or after the restart.
    pub fn refusal(&self) -> Option<HttpResponse> {
        self.0.load(Ordering::SeqCst).then(|| {
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(serde_json::json!({"error": "shutting down; send again later"}))
        })
    }
}

/// Registers every gateway route (not the sandbox's): one listener serves them all.
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_public(cfg);
    configure_admin(cfg);
}

/// The routes of `http.addr`: probes, ingestion (envelopes and the Pipelines API),
/// preferences, the webhook.
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    events::configure(cfg);
    pipelines::configure(cfg);
    preferences::configure(cfg);
    webhooks::configure(cfg);
}

/// The routes of `http.admin_addr` when it is set: `/admin/*`, `/metrics`, `/openapi.json`.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    health::configure_metrics(cfg);
    admin::configure(cfg);
    status::configure(cfg);
    console::configure(cfg);
    openapi::configure(cfg);
}
