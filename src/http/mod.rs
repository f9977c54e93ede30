//! The HTTP edge: one module per route family, all sharing [`AppState`].

mod admin;
mod auth;
mod events;
mod health;
pub mod openapi;
mod preferences;
pub mod webhooks;

use crate::broker::SharedBroker;
use crate::config::Settings;
use crate::preferences::PreferenceService;
use crate::publisher::Publisher;
use actix_web::web;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What every handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub broker: SharedBroker,
    pub publisher: Publisher,
    pub metrics: PrometheusHandle,
    pub actors_up: Arc<AtomicBool>,
    /// The preferences store and its sync; `None` until [`AppState::with_preferences`].
    pub preferences: Option<Arc<PreferenceService>>,
}

impl AppState {
    pub fn new(settings: Arc<Settings>, broker: SharedBroker) -> Self {
        Self {
            publisher: Publisher::new(broker.clone()),
            settings,
            broker,
            metrics: crate::telemetry::metrics(),
            actors_up: Arc::new(AtomicBool::new(false)),
            preferences: None,
        }
    }

    pub fn with_preferences(mut self, preferences: Arc<PreferenceService>) -> Self {
        self.preferences = Some(preferences);
        self
    }

    pub fn is_ready(&self) -> bool {
        self.broker.is_connected() && self.actors_up.load(Ordering::Relaxed)
    }
}

/// Registers every gateway route (not the sandbox's).
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    events::configure(cfg);
    preferences::configure(cfg);
    admin::configure(cfg);
    openapi::configure(cfg);
    webhooks::configure(cfg);
}
