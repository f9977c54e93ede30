//! `POST /webhooks/customerio`: Customer.io's reporting webhooks (docs/reference.md §6).
//!
//! Read at most 1 MiB (413 beyond), verify `X-CIO-Signature` (401), parse (400), then publish
//! every event not seen recently to `customerio.webhooks` with a broker confirm and answer
//! 200 `{"received": n}` only after all are confirmed. If the broker cannot confirm, 503:
//! Customer.io retries, and whatever was already published is recognised by its `event_id`
//! (here while it is recent, durably in the warehouse and by the actions' de-duplication).

use super::AppState;
use crate::broker::topology::WEBHOOKS_EXCHANGE;
use crate::broker::{BrokerError, Publish};
use crate::domain::webhook::{Freshness, SignatureVerifier, parse_webhook_body};
use actix_web::http::header::{CONTENT_LENGTH, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use futures::StreamExt;
use lru::LruCache;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::LazyLock;
use std::time::Duration;

pub const PATH: &str = "/webhooks/customerio";
/// Largest body accepted: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// An oversized body is read (and discarded) up to this much, so the client sees the 413
/// instead of a connection reset while it is still sending; beyond it the connection closes.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
/// Customer.io waits 4 s for an answer; a 503 before that is better than a timeout.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(3500);
/// Event ids confirmed recently, for answering Customer.io's retries without publishing again.
const RECENT_CAPACITY: usize = 100_000;

/// The header carrying the event id on `customerio.webhooks`.
pub const HEADER_EVENT_ID: &str = "x-event-id";
/// The header carrying when the gateway received the event (RFC 3339, UTC).
pub const HEADER_RECEIVED_AT: &str = "x-received-at";

/// One per process (the HTTP workers share it), which is one gateway in production.
static RECENT: LazyLock<Mutex<LruCache<String, ()>>> = LazyLock::new(|| {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(RECENT_CAPACITY).expect("not zero"),
    ))
});

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(PATH).route(web::post().to(receive)));
}

fn reject(reason: &'static str) {
    metrics::counter!("cio_gateway_webhooks_rejected_total", "reason" => reason).increment(1);
}

async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            reject("too_large");
            return HttpResponse::PayloadTooLarge()
                .json(json!({"error": format!("body is over {MAX_BODY_BYTES} bytes")}));
        }
        Err(BodyError::Broken(e)) => {
            reject("malformed");
            return HttpResponse::BadRequest().json(json!({"error": format!("reading body: {e}")}));
        }
    };

    let webhooks = &state.settings.webhooks;
    let verifier = SignatureVerifier::new(
        webhooks.signing_secrets.iter().map(|s| s.expose()),
        webhooks.tolerance_secs,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now();
    match verifier.verify(
        header("x-cio-timestamp"),
        header("x-cio-signature"),
        &body,
        now.timestamp(),
    ) {
        Ok(Freshness::Fresh) => {}
        Ok(Freshness::Late { age_secs }) => {
            // Authentic but signed long ago: a retry of Customer.io's. Accepted (refusing it
            // would hold back the endpoint's stream for days); a replay is caught by event_id.
            metrics::counter!("cio_gateway_webhooks_late_total").increment(1);
            tracing::info!(age_secs, "authentic webhook with an old timestamp accepted");
        }
        Err(e) => {
            reject(e.reason());
            tracing::warn!(error = %e, "webhook refused");
            return HttpResponse::Unauthorized().json(json!({"error": e.to_string()}));
        }
    }

    let events = match parse_webhook_body(&body) {
        Ok(events) => events,
        Err(e) => {
            reject("malformed");
            return HttpResponse::BadRequest()
                .json(json!({"error": e.to_string(), "field": e.field}));
        }
    };
    for received in &events {
        let e = &received.event;
        metrics::counter!("cio_gateway_webhooks_received_total",
            "object_type" => e.object_type.to_string(), "metric" => e.metric.to_string())
        .increment(1);
    }

    // Each event id once per request, and not again while it is recent.
    let mut in_request = HashSet::new();
    let fresh: Vec<_> = {
        let recent = RECENT.lock();
        events
            .iter()
            .filter(|r| in_request.insert(r.event.event_id.as_str()))
            .filter(|r| !recent.contains(r.event.event_id.as_str()))
            .collect()
    };
    let received_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let publishes = fresh.iter().map(|r| {
        let message = Publish::new(WEBHOOKS_EXCHANGE, &r.event.routing_key(), r.body.clone())
            .header(HEADER_EVENT_ID, r.event.event_id.as_str())
            .header(HEADER_RECEIVED_AT, received_at.clone());
        let broker = state.broker.clone();
        async move {
            match tokio::time::timeout(PUBLISH_TIMEOUT, broker.publish(message)).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::NotConfirmed("no confirm within 3.5 s".into())),
            }
        }
    });
    let results = futures::future::join_all(publishes).await;
    let mut failure = None;
    {
        let mut recent = RECENT.lock();
        for (r, result) in fresh.iter().zip(results) {
            match result {
                Ok(()) => {
                    recent.put(r.event.event_id.as_str().to_string(), ());
                }
                Err(e) => failure = Some(e),
            }
        }
    }
    if let Some(e) = failure {
        metrics::counter!("cio_gateway_webhooks_unavailable_total").increment(1);
        tracing::error!(error = %e, "webhook events not confirmed by the broker; answering 503");
        return HttpResponse::ServiceUnavailable()
            .insert_header((RETRY_AFTER, "5"))
            .json(json!({"error": format!("not stored: {e}")}));
    }
    tracing::debug!(
        events = events.len(),
        published = fresh.len(),
        "webhook stored"
    );
    HttpResponse::Ok().json(json!({"received": events.len()}))
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] (declared or actual).
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        drain(&mut payload, 0).await;
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            drain(&mut payload, body.len() + chunk.len()).await;
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn drain(payload: &mut web::Payload, mut seen: usize) {
    while seen <= DRAIN_BYTES {
        match payload.next().await {
            Some(Ok(chunk)) => seen += chunk.len(),
            _ => return,
        }
    }
}
