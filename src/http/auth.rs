//! Bearer-token checks of the ingestion, preference and admin routes.
//!
//! - `ingest.token` guards `POST /v1/events` and the `/v1/users/...` routes. Without a token
//!   those routes do not exist (404), except in local mode in development, where they are
//!   open to loopback peers so a newcomer can try the gateway with nothing configured
//!   (configuration refuses local mode without a token in any other environment).
//! - `admin.token` guards `/admin/...`; without it those routes do not exist, in any mode.
//!
//! A wrong or missing token is 401 with `WWW-Authenticate: Bearer`. Tokens are compared in
//! constant time. The checks run as middleware ([`require_ingest`], [`require_admin`]) on the
//! routes' resources, before the handler's extractors: a refused request's body is never read.

use super::AppState;
use crate::config::Secret;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde_json::json;
use subtle::ConstantTimeEq;

/// Middleware of the ingestion and preference routes: `ingest.token` before the body.
pub async fn require_ingest(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    guard(req, next, ingest_refusal).await
}

/// Middleware of the admin routes: `admin.token` before the body.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    guard(req, next, admin_refusal).await
}

async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    refusal: fn(&HttpRequest, &AppState) -> Option<HttpResponse>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refused = match req.app_data::<web::Data<AppState>>() {
        Some(state) => refusal(req.request(), state),
        // Fail closed: a route without the gateway's state is not served.
        None => Some(HttpResponse::InternalServerError().finish()),
    };
    match refused {
        Some(response) => Ok(req.into_response(response)),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
    }
}

/// Checks the ingestion token; `Some` is the response to send instead.
pub fn ingest_refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let settings = &state.settings;
    let local_open = settings.is_local_mode() && settings.is_development() && peer_is_loopback(req);
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

/// The cookie the web console's login sets: the admin token itself, HttpOnly and
/// SameSite=Strict, so only the console's own pages send it.
pub const CONSOLE_COOKIE: &str = "cio_admin";

/// Whether the request is the admin's: the bearer token, or the console's cookie. `Err` (404)
/// while no `admin.token` is configured.
#[allow(clippy::result_large_err)]
pub fn console_session(req: &HttpRequest, state: &AppState) -> Result<bool, HttpResponse> {
    let Some(token) = state
        .settings
        .admin
        .token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    else {
        return Err(not_found());
    };
    if check(req, Some(token), false).is_ok() {
        return Ok(true);
    }
    Ok(req
        .cookie(CONSOLE_COOKIE)
        .is_some_and(|c| token_matches(token, c.value())))
}

/// Constant-time comparison of a presented token with the configured one.
pub fn token_matches(token: &Secret, presented: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
}

fn peer_is_loopback(req: &HttpRequest) -> bool {
    req.peer_addr().is_some_and(|a| a.ip().is_loopback())
}

/// What a route that is switched off answers: the same as a route that does not exist.
pub fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "not found"}))
}
