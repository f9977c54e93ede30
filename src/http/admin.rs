//! `GET /admin/dlq` and `POST /admin/dlq/replay`: the dead-letter tooling of `src/dlq_admin.rs`
//! over HTTP, guarded by `admin.token` (the routes answer 404 while no token is configured).

use super::{AppState, auth};
use crate::dlq_admin::{self as dlq, DlqError, Selection};
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest `limit` of one listing.
const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 50;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The token is checked by route middleware, before a body is read.
    let admin = || from_fn(auth::require_admin);
    cfg.service(web::resource("/admin/dlq").route(web::get().to(list).wrap(admin())))
        .service(web::resource("/admin/dlq/replay").route(web::post().to(replay).wrap(admin())));
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

fn dlq_error(e: DlqError) -> HttpResponse {
    match e {
        DlqError::NotFound(_) => HttpResponse::NotFound().json(json!({"error": e.to_string()})),
        DlqError::Broker(e) => {
            HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()}))
        }
    }
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    match dlq::list(&state.broker, limit).await {
        Ok(listing) => HttpResponse::Ok().json(listing),
        Err(e) => dlq_error(e),
    }
}

async fn replay(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let selection = match parse_selection(&body) {
        Ok(s) => s,
        Err(reason) => {
            return HttpResponse::BadRequest()
                .json(json!({"errors": [{"field": "", "reason": reason}]}));
        }
    };
    match dlq::replay(&state.broker, &selection).await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(e) => dlq_error(e),
    }
}

/// `{"count": n}` (n >= 1) or `{"correlationId": "..."}`, exactly one of them.
fn parse_selection(body: &[u8]) -> Result<Selection, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = value.as_object().ok_or("body must be a JSON object")?;
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "count" | "correlationId"))
    {
        return Err(format!(
            "unknown field {key:?} (expected count or correlationId)"
        ));
    }
    match (obj.get("count"), obj.get("correlationId")) {
        (Some(count), None) => count
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| Selection::Count(n.min(u64::from(dlq::MAX_SCAN)) as u32))
            .ok_or_else(|| "count must be a positive integer".to_string()),
        (None, Some(Value::String(id))) if !id.is_empty() => {
            Ok(Selection::CorrelationId(id.clone()))
        }
        (None, Some(_)) => Err("correlationId must be a non-empty string".into()),
        _ => Err("give exactly one of count or correlationId".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_count_or_correlation_id() {
        assert_eq!(parse_selection(br#"{"count": 3}"#), Ok(Selection::Count(3)));
        assert_eq!(
            parse_selection(br#"{"correlationId": "x"}"#),
            Ok(Selection::CorrelationId("x".into()))
        );
        assert!(parse_selection(br#"{"count": 0}"#).is_err());
        assert!(parse_selection(br#"{"count": 1, "correlationId": "x"}"#).is_err());
        assert!(parse_selection(br#"{}"#).is_err());
        assert!(parse_selection(br#"{"all": true}"#).is_err());
    }
}
