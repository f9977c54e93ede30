//! Bearer-token checks of the ingestion, preference and admin routes.
//!
//! - `ingest.token` guards `POST /v1/events` and the `/v1/users/...` routes. Without a token
//!   those routes do not exist (404), except in local mode in development, where they are
//!   open to loopback peers so a newcomer can try the gateway with nothing configured
//!   (configuration refuses local mode without a token in any other environment).
//! - `admin.token` guards `/admin/...`; without it those routes do not exist, in any mode.
//!
//! The ingestion token may also come as HTTP Basic, as the user name with an empty password:
//! that is how Customer.io's and Segment's Pipelines SDKs send their write key (`/v1/batch`).
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
    check(
        req,
        state.settings.ingest.token.as_ref(),
        local_open,
        Schemes::BearerOrBasic,
    )
    .err()
}

/// Checks the admin token; `Some` is the response to send instead.
pub fn admin_refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    check(
        req,
        state.settings.admin.token.as_ref(),
        false,
        Schemes::Bearer,
    )
    .err()
}

/// How a token may be presented.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Schemes {
    /// `Authorization: Bearer <token>` only.
    Bearer,
    /// Also `Authorization: Basic base64(<token>:)`, the Pipelines SDKs' write key.
    BearerOrBasic,
}

#[allow(clippy::result_large_err)] // private, and Err is what the caller returns at once
fn check(
    req: &HttpRequest,
    token: Option<&Secret>,
    open_without_token: bool,
    schemes: Schemes,
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
        .and_then(|v| presented_token(v, schemes));
    match presented {
        Some(p) if token_matches(token, &p) => Ok(()),
        _ => Err(HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": "missing or wrong bearer token"}))),
    }
}

/// The token an `Authorization` header value presents under one of `schemes`, if any.
fn presented_token(authorization: &str, schemes: Schemes) -> Option<String> {
    let (scheme, value) = authorization.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_string());
    }
    if schemes == Schemes::BearerOrBasic && scheme.eq_ignore_ascii_case("basic") {
        return basic_user_without_password(value);
    }
    None
}

/// The user name of Basic credentials whose password is empty (`base64(<user>:)`); other
/// credentials present no token, so a token sent as the password is not accepted.
fn basic_user_without_password(encoded: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (user, password) = credentials.split_once(':')?;
    password.is_empty().then(|| user.to_string())
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
    if check(req, Some(token), false, Schemes::Bearer).is_ok() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_presents_the_user_name_only_with_an_empty_password_and_only_when_accepted() {
        // base64("key:"), base64("key:pw"), base64("key")
        let (user_only, with_password, no_colon) = ("a2V5Og==", "a2V5OnB3", "a2V5");
        let basic = |v: &str| presented_token(&format!("Basic {v}"), Schemes::BearerOrBasic);
        assert_eq!(basic(user_only).as_deref(), Some("key"));
        assert_eq!(basic(with_password), None);
        assert_eq!(basic(no_colon), None);
        assert_eq!(basic("not base64!"), None);
        assert_eq!(
            presented_token(&format!("Basic {user_only}"), Schemes::Bearer),
            None
        );
        assert_eq!(
            presented_token("bearer key ", Schemes::Bearer).as_deref(),
            Some("key")
        );
    }
}
