//! The Data Pipelines API under `/cdp/v1`: `identify`, `track`, `page`, `screen`, `group`,
//! `alias` and `batch`, as Customer.io documents them.
//!
//! - Auth: HTTP Basic with the API key as the user name and a blank password (401 otherwise).
//! - Limits: 32 KB per call, 500 KB per batch. Over a limit "you will receive a 200 response,
//!   but the request will not go through": answered 200, nothing recorded, counted in
//!   [`Stats::dropped`](super::Stats) so a test can prove nothing was sent to be dropped.
//! - Validation: with `X-Strict-Mode: 1` a call that fails it is a 400 for the whole request;
//!   without, the API "operates in permissive mode, logging errors but returning HTTP 200":
//!   the call is dropped (and counted), the rest recorded.
//! - A repeated `messageId` is recorded as a duplicate: Pipelines de-duplicates on it.
//!
//! Latency, outages, redirects, the request budget and `fail_users` apply as on the other
//! routes; an injected client error for one person fails a whole batch (Pipelines has no
//! per-call errors).

use super::record::{Accepted, Counters};
use super::routes::{self, Api};
use super::validate::Rejection;
use super::{Sandbox, State};
use crate::customerio::pipelines::{
    DEVICE_DELETED, DEVICE_UPDATED, MAX_BATCH_BYTES, MAX_CALL_BYTES, OBJECT_DELETED,
    RELATIONSHIP_DELETED, USER_DELETED, USER_SUPPRESSED, USER_UNSUPPRESSED,
};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

/// The mount point of the Pipelines paths: `<sandbox>/cdp/v1` is `customerio.pipelines_url`.
pub const PREFIX: &str = "/cdp/v1";

const KINDS: [&str; 6] = ["identify", "track", "page", "screen", "group", "alias"];

pub(crate) fn configure(cfg: &mut web::ServiceConfig, sandbox: &Sandbox) {
    let data = web::Data::new(sandbox.clone());
    for kind in KINDS {
        cfg.service(
            web::resource(format!("{PREFIX}/{kind}"))
                .app_data(data.clone())
                .route(web::post().to(
                    move |req: HttpRequest, body: web::Payload, sandbox: web::Data<Sandbox>| {
                        handle(Some(kind), req, body, sandbox)
                    },
                )),
        );
    }
    cfg.service(
        web::resource(format!("{PREFIX}/batch"))
            .app_data(data)
            .route(web::post().to(
                |req: HttpRequest, body: web::Payload, sandbox: web::Data<Sandbox>| {
                    handle(None, req, body, sandbox)
                },
            )),
    );
}

/// `kind` is the route's call type; `None` is `/batch`.
async fn handle(
    kind: Option<&'static str>,
    req: HttpRequest,
    payload: web::Payload,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let state = &*sandbox.state;
    let api = Api::Pipelines;
    routes::arrive(state).await;
    let limit = if kind.is_some() {
        MAX_CALL_BYTES
    } else {
        MAX_BATCH_BYTES
    };
    let Ok(body) = routes::read_body(payload, limit).await else {
        // Over the documented limit: a 200, and the request does not go through.
        return dropped(state, 1);
    };
    if let Some(response) = routes::after_body(state, api, &req) {
        return response;
    }
    let strict = req
        .headers()
        .get("x-strict-mode")
        .is_some_and(|v| v.as_bytes() == b"1");
    let calls = match parse(kind, &body) {
        Ok(calls) => calls,
        Err(message) => return invalid(state, strict, &message),
    };
    let mut accepted = Vec::with_capacity(calls.len());
    let mut dropped_calls = 0;
    for (index, call) in calls.iter().enumerate() {
        if serde_json::to_vec(call).map_or(0, |v| v.len()) > MAX_CALL_BYTES {
            dropped_calls += 1;
            continue;
        }
        let info = match describe(kind, call) {
            Ok(info) => info,
            Err(message) if strict => {
                let message = match kind {
                    Some(_) => message,
                    None => format!("batch[{index}]: {message}"),
                };
                return invalid(state, strict, &message);
            }
            Err(_) => {
                dropped_calls += 1;
                continue;
            }
        };
        if let Some(user) = &info.user {
            if state.faults.rejects_requests_of(user) {
                return invalid(
                    state,
                    strict,
                    &format!("sandbox: every request about {user:?} is refused"),
                );
            }
            if let Some(injected) = state.faults.for_user(user) {
                Counters::add(&state.counters.injected_failures, 1);
                return routes::injected_response(Api::Pipelines, injected);
            }
        }
        accepted.push(Accepted {
            api: api.as_str(),
            method: "POST".into(),
            path: req.uri().path().to_string(),
            user: info.user,
            action: info.action,
            body: call.clone(),
            event_id: info.message_id,
            anonymous_id: info.anonymous_id,
            merges: info.merges,
            object: info.object,
            delivery_id: None,
        });
    }
    Counters::add(&state.counters.dropped, dropped_calls);
    let n = accepted.len() as u64;
    let duplicates = state.ledger.lock().accept_all(accepted);
    Counters::add(&state.counters.accepted_ops, n);
    Counters::add(&state.counters.duplicates, duplicates as u64);
    HttpResponse::Ok().json(json!({}))
}

/// The calls of a body: the one call of a single route, or a batch's `batch` array.
fn parse(kind: Option<&str>, body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    match (kind, value) {
        (Some(_), call @ Value::Object(_)) => Ok(vec![call]),
        (None, Value::Object(mut map)) => match map.remove("batch") {
            Some(Value::Array(calls)) => Ok(calls),
            _ => Err("batch must be an array of calls".into()),
        },
        _ => Err("the body must be a JSON object".into()),
    }
}

/// What a recorded call is about.
struct CallInfo {
    user: Option<String>,
    action: String,
    message_id: Option<String>,
    anonymous_id: Option<String>,
    merges: Option<String>,
    object: Option<String>,
}

/// Validates one call as the Pipelines API does, and says what it is about.
fn describe(route: Option<&str>, call: &Value) -> Result<CallInfo, String> {
    let map = call.as_object().ok_or("a call must be an object")?;
    let kind = match (route, text(map, "type")) {
        (Some(route), _) => route,
        (None, Some(kind)) if KINDS.contains(&kind) => kind,
        (None, Some(kind)) => return Err(format!("unknown type {kind:?}")),
        (None, None) => return Err("type is required in a batch".into()),
    };
    let user = text(map, "userId").map(str::to_string);
    let anonymous = text(map, "anonymousId").map(str::to_string);
    for key in ["traits", "properties", "context"] {
        if map.get(key).is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(format!("{key} must be an object"));
        }
    }
    let needs_someone = kind != "group";
    if needs_someone && user.is_none() && anonymous.is_none() {
        return Err("userId or anonymousId is required".into());
    }
    let mut info = CallInfo {
        action: kind.to_string(),
        message_id: text(map, "messageId").map(str::to_string),
        anonymous_id: None,
        merges: None,
        object: None,
        user,
    };
    match kind {
        "identify" => {
            info.merges = anonymous.clone().filter(|_| info.user.is_some());
        }
        "track" => {
            let event = text(map, "event").ok_or("event is required")?;
            info.action = semantic_action(event, call)?;
            if info.action == "delete_relationships" || event == OBJECT_DELETED {
                let group = call
                    .pointer("/context/groupId")
                    .and_then(Value::as_str)
                    .ok_or("context.groupId is required")?;
                let object_type = call
                    .pointer("/properties/objectTypeId")
                    .and_then(Value::as_str)
                    .unwrap_or("1");
                info.object = Some(format!("{object_type}:{group}"));
            }
        }
        "group" => {
            let group = text(map, "groupId").ok_or("groupId is required")?;
            let object_type = call
                .pointer("/traits/objectTypeId")
                .and_then(Value::as_str)
                .unwrap_or("1");
            info.object = Some(format!("{object_type}:{group}"));
        }
        "alias" => {
            text(map, "previousId").ok_or("previousId is required")?;
            info.user.as_ref().ok_or("userId is required")?;
            info.action = "merge".into();
        }
        _ => {}
    }
    if info.user.is_none() && kind != "group" {
        info.anonymous_id = anonymous;
    }
    Ok(info)
}

/// The action a semantic event performs (Customer.io events), or `event` for any other name.
fn semantic_action(event: &str, call: &Value) -> Result<String, String> {
    let action = match event {
        USER_DELETED => "delete",
        USER_SUPPRESSED => "suppress",
        USER_UNSUPPRESSED => "unsuppress",
        DEVICE_UPDATED | DEVICE_DELETED => {
            if call
                .pointer("/context/device/token")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!("{event} requires context.device.token"));
            }
            if event == DEVICE_UPDATED {
                "add_device"
            } else {
                "delete_device"
            }
        }
        RELATIONSHIP_DELETED => "delete_relationships",
        OBJECT_DELETED => "delete",
        _ => "event",
    };
    Ok(action.to_string())
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A 200 for a request that does not go through.
fn dropped(state: &State, calls: u64) -> HttpResponse {
    Counters::add(&state.counters.dropped, calls);
    HttpResponse::Ok().json(json!({}))
}

/// A request that fails validation: 400 under strict mode, else a 200 that drops it.
fn invalid(state: &State, strict: bool, message: &str) -> HttpResponse {
    if !strict {
        return dropped(state, 1);
    }
    routes::reject(state, Api::Pipelines, Rejection::invalid("", message))
}
