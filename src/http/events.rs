//! `POST /v1/events`: envelope ingestion for producers without AMQP.
//!
//! The body is one envelope or an array of them. Every item is validated before anything is
//! published: one bad item fails the request with 400 naming each bad item and publishes
//! nothing. Valid requests are published through [`crate::publisher::Publisher`] (correlation id
//! and timestamp completed, exchange of the type, routing key = user id) and answered 202 only
//! once RabbitMQ confirmed every item. A user's items are published in array order.
//! Guarded by `ingest.token` (see `auth`).

use super::{AppState, auth, lanes};
use crate::domain::{Envelope, limits};
use crate::publisher::Publisher;
use crate::telemetry::events;
use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events")
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route(web::post().to(ingest).wrap(from_fn(auth::require_ingest))),
    );
}

fn bad_request(errors: Vec<Value>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "errors": errors }))
}

fn item_error(index: Option<usize>, field: &str, reason: impl Into<String>) -> Value {
    json!({"index": index, "field": field, "reason": reason.into()})
}

/// Authenticated by the resource's middleware before the body is read.
async fn ingest(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let items = match parse_items(&body) {
        Ok(items) => items,
        Err(error) => return bad_request(vec![error]),
    };
    let prepared = match prepare_all(&state, items) {
        Ok(prepared) => prepared,
        Err(errors) => {
            events::ingest_rejected(errors.len());
            return bad_request(errors);
        }
    };
    let correlation_ids: Vec<String> = prepared
        .iter()
        .map(|(e, _)| {
            e.correlation_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default()
        })
        .collect();
    tracing::Span::current().record("correlation_ids", correlation_ids.join(",").as_str());
    let (failed, error) = publish_by_user(&state.publisher, prepared).await;
    let accepted = correlation_ids.len() - failed.len();
    events::ingest_accepted(accepted);
    if let Some(error) = error {
        tracing::warn!(error = %error, failed = failed.len(), "ingestion could not publish");
        return HttpResponse::ServiceUnavailable().json(json!({
            "error": error,
            "accepted": accepted,
            "correlationIds": correlation_ids,
            "failed": failed,
        }));
    }
    HttpResponse::Accepted().json(json!({
        "accepted": accepted,
        "correlationIds": correlation_ids,
    }))
}

/// The envelopes of a body: one object, or a non-empty array of them.
fn parse_items(body: &[u8]) -> Result<Vec<Value>, Value> {
    let items = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(item @ Value::Object(_)) => vec![item],
        Ok(_) => {
            return Err(item_error(
                None,
                "",
                "body must be an envelope object or an array of them",
            ));
        }
        Err(e) => return Err(item_error(None, "", format!("invalid JSON: {e}"))),
    };
    if items.is_empty() {
        return Err(item_error(None, "", "the array holds no envelope"));
    }
    Ok(items)
}

/// Validates every item; all of them, or an error naming each bad one (nothing is published
/// when one is bad).
fn prepare_all(
    state: &AppState,
    items: Vec<Value>,
) -> Result<Vec<(Envelope, Vec<u8>)>, Vec<Value>> {
    let mut prepared = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let size = serde_json::to_vec(&item).map(|v| v.len()).unwrap_or(0);
        if size > limits::MAX_ENVELOPE_BYTES {
            errors.push(item_error(
                Some(index),
                "",
                format!(
                    "envelope is {size} bytes, at most {} allowed",
                    limits::MAX_ENVELOPE_BYTES
                ),
            ));
            continue;
        }
        match state.publisher.prepare(item) {
            Ok(p) => prepared.push(p),
            Err(e) => errors.push(item_error(Some(index), &e.field, e.reason)),
        }
    }
    if errors.is_empty() {
        Ok(prepared)
    } else {
        Err(errors)
    }
}

/// Publishes one lane per user, in array order, lanes concurrently. Returns the indexes not
/// published (sorted) and the first error.
async fn publish_by_user(
    publisher: &Publisher,
    prepared: Vec<(Envelope, Vec<u8>)>,
) -> (Vec<usize>, Option<String>) {
    let items = prepared
        .into_iter()
        .map(|(envelope, body)| (envelope.user.as_str().to_string(), (envelope, body)))
        .collect();
    let unpublished = lanes::publish_in_lanes(items, |(envelope, body)| async move {
        publisher.publish_prepared(&envelope, body).await
    })
    .await;
    (unpublished.indexes, unpublished.error)
}
