//! Bearer-token checks of the ingestion, preference and admin routes.
//!
//! - `ingest.token` guards `POST /v1/events` and the `/v1/users/...` routes. Without a token
//!   those routes do not exist (404), except in local mode, where they are open to loopback
//!   peers so a newcomer can try the gateway with nothing configured.
//! - `admin.token` guards `/admin/...`; without it those routes do not exist, in any mode.
//!
//! A wrong or missing token is 401 with `WWW-Authenticate: Bearer`. Tokens are compared in
//! constant time.

use super::AppState;
use crate::config::Secret;
use actix_web::{HttpRequest, HttpResponse, http::header};
use serde_json::json;
use subtle::ConstantTimeEq;

/// Checks the ingestion token; `Some` is the response to send instead.
pub fn ingest_refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let local_open = state.settings.is_local_mode() && peer_is_loopback(req);
    check(req, state.settings.ingest.token.as_ref(), local_open).err()
}

/// Checks the admin token; `Some` is the response to send instead.
pub fn admin_refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    check(req, state.settings.admin.token.as_ref(), false).err()
}

#[allow(clippy::result_large_err)] // private, and Err is what the caller returns at once
fn check(
    req: &HttpRequest,
    token: Option<&Secret>,
    open_without_token: bool,
) -> Result<(), HttpResponse> {
    let Some(token) = token.filter(|t| !t.expose().is_empty()) else {
        return if open_without_token {
            Ok(())
        } else {
            Err(not_found())
        };
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        });
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())) => Ok(()),
        _ => Err(HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": "missing or wrong bearer token"}))),
    }
}

fn peer_is_loopback(req: &HttpRequest) -> bool {
    req.peer_addr().is_some_and(|a| a.ip().is_loopback())
}

/// What a route that is switched off answers: the same as a route that does not exist.
pub fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "not found"}))
}
