//! The inbound Pipelines API: the routes of Customer.io's (and Segment's) Pipelines SDKs, so a
//! producer that already uses one points its `host` at the gateway and gets the gateway's
//! ordering and durability with no other change.
//!
//! `POST /v1/batch` takes `{"batch": [call, ...]}`; `POST /v1/identify`, `/v1/track`,
//! `/v1/page`, `/v1/screen`, `/v1/group` and `/v1/alias` take one call. Each call becomes its
//! envelope ([`mapping`]), published through the same lanes as `POST /v1/events`: one user's
//! calls in request order, users concurrently. A call that maps to no valid envelope is
//! dead-lettered as `invalid` with its error and raw body instead of failing the request: the
//! SDKs drop a whole batch for good on a 400, so one bad call must not cost the others. The
//! answer is 200 only once every call is confirmed by RabbitMQ (as an envelope or as a dead
//! letter); 503 with `Retry-After` while RabbitMQ cannot confirm, which the SDKs retry.
//! Guarded by `ingest.token`, as Bearer or as the SDKs' Basic write key (see `auth`).

pub mod mapping;

use super::body::{BodyError, read_limited};
use super::{AppState, auth, lanes};
use crate::actors::messages::ErrorKind;
use crate::actors::raw_dead_letter;
use crate::broker::topology::exchange_for;
use crate::broker::{BrokerError, Publish};
use crate::domain::{Envelope, ParseError, limits};
use crate::telemetry::events;
use actix_web::http::header::RETRY_AFTER;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use mapping::CallKind;
use serde_json::{Value, json};

pub const BATCH_PATH: &str = "/v1/batch";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(BATCH_PATH).route(
            web::post()
                .to(
                    |req: HttpRequest, payload: web::Payload, state: web::Data<AppState>| {
                        receive(req, payload, state, None)
                    },
                )
                .wrap(from_fn(auth::require_ingest)),
        ),
    );
    for kind in CallKind::ALL {
        cfg.service(
            web::resource(format!("/v1/{}", kind.as_str())).route(
                web::post()
                    .to(
                        move |req: HttpRequest,
                              payload: web::Payload,
                              state: web::Data<AppState>| {
                            receive(req, payload, state, Some(kind))
                        },
                    )
                    .wrap(from_fn(auth::require_ingest)),
            ),
        );
    }
}

/// What one call becomes: its envelope, or its dead letter.
enum Outgoing {
    Envelope(Envelope, Vec<u8>),
    DeadLetter(Publish),
}

/// Authenticated by the resource's middleware before the body is read. `route`: the call kind
/// of a single-call route, `None` for `/v1/batch`.
async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route: Option<CallKind>,
) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let limit = state.settings.ingest.max_body_bytes;
    let body = match read_limited(&req, payload, limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return HttpResponse::PayloadTooLarge()
                .json(json!({"error": format!("body is over {limit} bytes")}));
        }
        Err(BodyError::Broken(e)) => return bad_request(format!("reading body: {e}")),
    };
    let calls = match calls_of(&body, route) {
        Ok(calls) => calls,
        Err(reason) => return bad_request(reason),
    };
    let outgoing: Vec<(String, Outgoing)> = calls
        .iter()
        .map(|call| outgoing_of(&state, call, route))
        .collect();
    let dead_lettered = outgoing
        .iter()
        .filter(|(_, o)| matches!(o, Outgoing::DeadLetter(_)))
        .count();
    let unpublished = lanes::publish_in_lanes(outgoing, |o| send(&state, o)).await;
    events::ingest_accepted(calls.len() - dead_lettered - unpublished.indexes.len());
    events::ingest_rejected(dead_lettered);
    match unpublished.error {
        Some(error) => {
            tracing::warn!(%error, failed = unpublished.indexes.len(), "pipelines call not published");
            HttpResponse::ServiceUnavailable()
                .insert_header((RETRY_AFTER, "5"))
                .json(json!({"error": format!("not stored, send again: {error}")}))
        }
        None => HttpResponse::Ok().json(json!({"success": true})),
    }
}

fn bad_request(reason: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": reason}))
}

/// The calls of a body: the one call of a single-call route, or a batch's non-empty `batch`.
fn calls_of(body: &[u8], route: Option<CallKind>) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if route.is_some() {
        return match value {
            call @ Value::Object(_) => Ok(vec![call]),
            _ => Err("body must be one call object".into()),
        };
    }
    match value.get("batch") {
        Some(Value::Array(calls)) if !calls.is_empty() => Ok(calls.clone()),
        Some(Value::Array(_)) => Err("the batch holds no call".into()),
        _ => Err(r#"body must be {"batch": [call, ...]}"#.into()),
    }
}

/// The ordering key and message of one call: its envelope under its user, or its dead letter.
fn outgoing_of(state: &AppState, call: &Value, route: Option<CallKind>) -> (String, Outgoing) {
    match prepared(state, call, route) {
        Ok((envelope, body)) => (
            envelope.user.as_str().to_string(),
            Outgoing::Envelope(envelope, body),
        ),
        Err(error) => {
            let (exchange, key) = original_destination(call, route);
            tracing::warn!(%error, user = key, "pipelines call is invalid; dead-lettered");
            let raw = serde_json::to_vec(call).unwrap_or_default();
            let message =
                raw_dead_letter(&raw, &error.to_string(), ErrorKind::Invalid, exchange, &key);
            (key, Outgoing::DeadLetter(message))
        }
    }
}

/// The call's envelope, completed and validated as `POST /v1/events` would.
fn prepared(
    state: &AppState,
    call: &Value,
    route: Option<CallKind>,
) -> Result<(Envelope, Vec<u8>), ParseError> {
    let envelope = mapping::envelope_of(call, route)?;
    let size = serde_json::to_vec(&envelope).map_or(0, |v| v.len());
    if size > limits::MAX_ENVELOPE_BYTES {
        return Err(ParseError::new(
            "",
            format!(
                "its envelope is {size} bytes, at most {} allowed",
                limits::MAX_ENVELOPE_BYTES
            ),
        ));
    }
    state
        .publisher
        .prepare(envelope)
        .map_err(|e| ParseError::new("", format!("its envelope is invalid: {e}")))
}

/// Where an invalid call would have gone, for its dead letter's headers: the exchange of its
/// kind (if known) and its user (or anonymous id), which also orders it among the user's calls.
fn original_destination(call: &Value, route: Option<CallKind>) -> (&'static str, String) {
    let exchange = mapping::call_kind(call, route)
        .map_or("", |kind| exchange_for(kind.envelope_type().route()));
    let key = ["userId", "anonymousId"]
        .into_iter()
        .filter_map(|field| call.get(field))
        .find_map(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    (exchange, key)
}

/// Publishes one call's message and waits for RabbitMQ's confirm.
async fn send(state: &AppState, outgoing: Outgoing) -> Result<(), BrokerError> {
    match outgoing {
        Outgoing::Envelope(envelope, body) => {
            state.publisher.publish_prepared(&envelope, body).await
        }
        Outgoing::DeadLetter(message) => state.broker.publish(message).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_needs_calls_and_a_single_route_one_object() {
        let batch = br#"{"batch": [{"type": "track"}, {"type": "page"}]}"#;
        assert_eq!(calls_of(batch, None).unwrap().len(), 2);
        assert!(
            calls_of(br#"{"batch": []}"#, None)
                .unwrap_err()
                .contains("no call")
        );
        assert!(calls_of(br#"{"type": "track"}"#, None).is_err());
        assert!(calls_of(b"{nope", None).unwrap_err().contains("not JSON"));
        let single = br#"{"event": "e"}"#;
        assert_eq!(calls_of(single, Some(CallKind::Track)).unwrap().len(), 1);
        assert!(calls_of(b"[1]", Some(CallKind::Track)).is_err());
    }

    #[test]
    fn an_invalid_call_is_dead_lettered_where_it_would_have_gone() {
        let call = json!({"type": "track", "userId": 42});
        assert_eq!(
            original_destination(&call, None),
            ("customerio.track", "42".to_string())
        );
        let anonymous = json!({"type": "identify", "anonymousId": "a-1"});
        assert_eq!(
            original_destination(&anonymous, None),
            ("customerio.identify", "a-1".to_string())
        );
        assert_eq!(
            original_destination(&json!({"type": "fly"}), None),
            ("", String::new())
        );
    }
}
