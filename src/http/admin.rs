//! `GET /admin/dlq`, `POST /admin/dlq/replay` and `POST /admin/dlq/purge`: the dead-letter tooling of `src/dlq_admin.rs`
//! over HTTP, guarded by `admin.token` (the routes answer 404 while no token is configured).

use super::{AppState, auth};
use crate::dlq_admin::{self as dlq, DlqError, Filter, Selection};
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
        .service(web::resource("/admin/dlq/replay").route(web::post().to(replay).wrap(admin())))
        .service(web::resource("/admin/dlq/purge").route(web::post().to(purge).wrap(admin())));
}

/// `GET /admin/dlq`'s query: a filter (see [`dlq::Filter`]) and `limit`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    error_kind: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    user: Option<String>,
    correlation_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

impl ListQuery {
    fn filter(&self) -> Result<Filter, String> {
        let time = |v: &Option<String>| v.as_deref().map(dlq::parse_time).transpose();
        Ok(Filter {
            error_kind: self.error_kind.clone(),
            kind: self.kind.clone(),
            user: self.user.clone(),
            correlation_id: self.correlation_id.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
        })
    }
}

fn dlq_error(e: DlqError) -> HttpResponse {
    match e {
        DlqError::NotFound(_) => HttpResponse::NotFound().json(json!({"error": e.to_string()})),
        DlqError::Broker(e) => {
            HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()}))
        }
    }
}

fn bad_request(reason: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"errors": [{"field": "", "reason": reason}]}))
}

async fn list(state: web::Data<AppState>, query: web::Query<ListQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(reason) => return bad_request(reason),
    };
    match dlq::list(&state.broker, &filter, limit).await {
        Ok(listing) => HttpResponse::Ok().json(listing),
        Err(e) => dlq_error(e),
    }
}

async fn replay(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let selection = match parse_selection(&body, false) {
        Ok(s) => s,
        Err(reason) => return bad_request(reason),
    };
    match dlq::replay(&state.broker, &selection).await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(e) => dlq_error(e),
    }
}

async fn purge(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let selection = match parse_selection(&body, true) {
        Ok(s) => s,
        Err(reason) => return bad_request(reason),
    };
    match dlq::purge(&state.broker, &selection).await {
        Ok(purged) => HttpResponse::Ok().json(json!({"purged": purged})),
        Err(e) => dlq_error(e),
    }
}

/// A selection: `count` (n >= 1, the oldest that match) and the filter's fields
/// (`correlationId`, `errorKind`, `type`, `user`, `since`, `until`; times in RFC 3339 or ms),
/// at least one of them. A purge may instead say `{"all": true}`.
fn parse_selection(body: &[u8], purging: bool) -> Result<Selection, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut obj = value
        .as_object()
        .cloned()
        .ok_or("body must be a JSON object")?;
    if purging && obj.get("all") == Some(&Value::Bool(true)) && obj.len() == 1 {
        return Ok(Selection::all());
    }
    // `limit` is the same as `count`.
    let count = match (obj.remove("count"), obj.remove("limit")) {
        (Some(_), Some(_)) => return Err("give count or limit, not both".into()),
        (count, limit) => count.or(limit),
    };
    let limit = match count {
        None => None,
        Some(count) => Some(
            count
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| n.min(u64::from(u32::MAX)) as u32)
                .ok_or("count must be a positive integer")?,
        ),
    };
    for key in ["since", "until"] {
        if let Some(Value::String(text)) = obj.get(key) {
            let ms = dlq::parse_time(text).map_err(|e| format!("{key}: {e}"))?;
            obj.insert(key.into(), ms.into());
        }
    }
    let filter: Filter = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        format!("{e} (a selection has count, correlationId, errorKind, type, user, since, until)")
    })?;
    if filter.is_empty() && limit.is_none() {
        return Err(if purging {
            "give count or a filter (correlationId, errorKind, type, user, since, until), or {\"all\": true}".into()
        } else {
            "give count or a filter (correlationId, errorKind, type, user, since, until)".into()
        });
    }
    if filter.correlation_id.as_deref() == Some("") {
        return Err("correlationId must be a non-empty string".into());
    }
    Ok(Selection { filter, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_a_count_and_a_filter() {
        assert_eq!(
            parse_selection(br#"{"count": 3}"#, false),
            Ok(Selection::count(3))
        );
        assert_eq!(
            parse_selection(br#"{"correlationId": "x"}"#, false),
            Ok(Selection::correlation_id("x"))
        );
        let both = parse_selection(
            br#"{"count": 2, "errorKind": "rejected", "type": "track", "since": "2026-12-07T00:00:00Z", "until": 1796688000000}"#,
            false,
        )
        .unwrap();
        assert_eq!(both.limit, Some(2));
        assert_eq!(both.filter.error_kind.as_deref(), Some("rejected"));
        assert_eq!(both.filter.kind.as_deref(), Some("track"));
        assert_eq!(both.filter.since, Some(1_796_601_600_000));
        assert_eq!(both.filter.until, Some(1_796_688_000_000));
        assert!(parse_selection(br#"{"count": 0}"#, false).is_err());
        assert!(parse_selection(br#"{}"#, false).is_err());
        assert!(parse_selection(br#"{"all": true}"#, false).is_err());
        assert_eq!(
            parse_selection(br#"{"all": true}"#, true),
            Ok(Selection::all())
        );
        assert!(parse_selection(br#"{"since": "yesterday"}"#, false).is_err());
        assert!(parse_selection(br#"{"colour": "red"}"#, true).is_err());
        assert_eq!(
            parse_selection(br#"{"limit": 3}"#, true),
            Ok(Selection::count(3))
        );
        assert!(parse_selection(br#"{"limit": 3, "count": 3}"#, false).is_err());
    }
}
