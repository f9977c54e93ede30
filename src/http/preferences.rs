//! `GET/PUT/PATCH /v1/users/{id}/preferences` and `POST /v1/users/{id}/sync`.
//!
//! A change is answered once it is stored: 200 with the preferences and `syncPending`, which
//! is false when the identify carrying them was already confirmed by RabbitMQ, true when the
//! re-sync task will publish it later (RabbitMQ down). Guarded by `ingest.token` (see `auth`).

use super::{AppState, auth};
use crate::domain::UserId;
use crate::preferences::{PreferenceService, PreferencesChange, StoredPreferences, SyncError};
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // On each route, so that a method the resource does not serve stays 405; before the body.
    let ingest = || from_fn(auth::require_ingest);
    cfg.service(
        web::resource("/v1/users/{id}/preferences")
            .app_data(web::PayloadConfig::new(64 * 1024))
            .route(web::get().to(get_preferences).wrap(ingest()))
            .route(web::put().to(put_preferences).wrap(ingest()))
            .route(web::patch().to(patch_preferences).wrap(ingest())),
    )
    .service(web::resource("/v1/users/{id}/sync").route(web::post().to(sync_user).wrap(ingest())));
}

/// The user id and the service, or the response that stops the request (auth is the
/// resources' middleware, before any body is read).
fn prelude(
    state: &AppState,
    id: &str,
) -> Result<(UserId, Arc<PreferenceService>), Box<HttpResponse>> {
    let user = UserId::parse(id).map_err(|e| {
        Box::new(
            HttpResponse::BadRequest()
                .json(json!({"errors": [{"field": "id", "reason": e.reason}]})),
        )
    })?;
    let service = state.preferences.clone().ok_or_else(|| {
        Box::new(
            HttpResponse::ServiceUnavailable()
                .json(json!({"error": "the preferences store is not running"})),
        )
    })?;
    Ok((user, service))
}

fn view(stored: &StoredPreferences) -> Value {
    let p = stored.preferences;
    json!({
        "userId": stored.user_id,
        "email": p.email,
        "push": p.push,
        "sms": p.sms,
        "inApp": p.in_app,
        "syncPending": stored.sync_pending,
        "updatedAt": (stored.updated_at > 0)
            .then(|| chrono::DateTime::from_timestamp_millis(stored.updated_at))
            .flatten()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    })
}

fn store_unavailable(e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "preferences store failed");
    HttpResponse::ServiceUnavailable()
        .json(json!({"error": "the preferences store is unavailable"}))
}

async fn get_preferences(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let (user, service) = match prelude(&state, &id) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    match service.get(&user).await {
        Ok(stored) => HttpResponse::Ok().json(view(&stored)),
        Err(e) => store_unavailable(e),
    }
}

async fn put_preferences(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    change(state, id, body, true).await
}

async fn patch_preferences(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    change(state, id, body, false).await
}

async fn change(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
    full: bool,
) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let (user, service) = match prelude(&state, &id) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"errors": [{"field": "", "reason": format!("invalid JSON: {e}")}]}));
        }
    };
    let change = match PreferencesChange::parse(&value, full) {
        Ok(c) => c,
        Err(errors) => {
            let errors: Vec<_> = errors
                .into_iter()
                .map(|(field, reason)| json!({"field": field, "reason": reason}))
                .collect();
            return HttpResponse::BadRequest().json(json!({ "errors": errors }));
        }
    };
    match service.change(&user, change).await {
        Ok(stored) => HttpResponse::Ok().json(view(&stored)),
        Err(e) => store_unavailable(e),
    }
}

async fn sync_user(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let (user, service) = match prelude(&state, &id) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    match service.sync_user(&user).await {
        Ok(synced) => HttpResponse::Accepted().json(json!({
            "userId": user.as_str(),
            "correlationId": synced.correlation_id,
            "attributes": synced.attributes,
            "userSource": synced.from_user_source,
        })),
        Err(SyncError::UnknownUser(_)) => HttpResponse::NotFound()
            .json(json!({"error": format!("user {:?} is not in the user source", user.as_str())})),
        Err(SyncError::Invalid(e)) => HttpResponse::UnprocessableEntity().json(json!({
            "errors": [{"field": e.field, "reason": e.reason}],
        })),
        Err(e @ (SyncError::Broker(_) | SyncError::Timeout(_))) => {
            HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()}))
        }
        Err(e @ (SyncError::Store(_) | SyncError::UserSource(_))) => store_unavailable(e),
    }
}
