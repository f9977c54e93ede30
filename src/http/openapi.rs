//! `GET /openapi.json`: the OpenAPI description of every gateway route.
//!
//! `docs/openapi.yaml` is the document people edit; `docs/openapi.json` is the same document as
//! JSON, compiled in here. `tests/openapi.rs` checks that the two agree and that every route
//! registered under `src/http/` is described.

use actix_web::{HttpResponse, get};

/// The OpenAPI document, as served.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

#[get("/openapi.json")]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI_JSON)
}

pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.service(openapi);
}
