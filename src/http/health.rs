//! Liveness, readiness and Prometheus metrics.

use super::AppState;
use actix_web::{HttpResponse, get, web};
use serde_json::json;

#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
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
    cfg.service(healthz).service(readyz).service(metrics);
}
