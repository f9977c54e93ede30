//! Liveness, readiness and Prometheus metrics.

use super::AppState;
use actix_web::{HttpResponse, get, web};
use serde_json::json;

/// Live unless something that dies is no longer restarted (the track batcher's supervisor is
/// gone): then only a restart of the process helps.
#[get("/healthz")]
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.actors.healthy() {
        HttpResponse::Ok().json(json!({"status": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "a supervisor is gone"}))
    }
}

/// Ready when the broker is connected and every actor is alive (a shard or consumer whose
/// task died, e.g. its thread panicked, takes the replica out). Paused delivery (an open
/// circuit) is not unreadiness: the webhook endpoint keeps serving.
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = state.broker.is_connected();
    let actors = state.actors.alive();
    let body = json!({"broker": broker, "actors": actors});
    if state.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[get("/metrics")]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

/// `/metrics`: on the admin listener when `http.admin_addr` is set.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(metrics);
}
