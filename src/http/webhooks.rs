//! `POST /webhooks/customerio`: Customer.io's reporting webhooks (docs/reference.md §6).
//!
//! Read at most 1 MiB (413 beyond), verify `X-CIO-Signature` (401), parse, then publish every
//! event not seen recently to `customerio.webhooks` with a broker confirm and answer 200
//! `{"received": n}` only after all are confirmed. If the broker cannot confirm, 503:
//! Customer.io retries, and whatever was already published is recognised by its `event_id`
//! (here while it is recent, durably in the warehouse and by the actions' de-duplication).
//!
//! An authentic body is never refused for its content: Customer.io answers a 4xx by holding
//! back the endpoint's later webhooks for an hour, for up to 7 days. A part that cannot be
//! parsed (the whole body, or one event of `{"events": [...]}`) is dead-lettered as
//! `webhook_unparsable` with the parse error and its exact bytes, confirmed, and counted in
//! the 200's `received`.

use super::AppState;
use super::body::{BodyError, read_limited};
use crate::actors::messages::ErrorKind;
use crate::actors::raw_dead_letter;
use crate::broker::topology::WEBHOOKS_EXCHANGE;
use crate::broker::{BrokerError, Publish, SharedBroker};
use crate::domain::ReceivedEvent;
use crate::domain::webhook::{Freshness, SignatureVerifier, UnparsableEvent, split_webhook_body};
use crate::telemetry::events;
use actix_web::http::header::RETRY_AFTER;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

pub const PATH: &str = "/webhooks/customerio";
/// Largest body accepted: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Customer.io waits 4 s for an answer; a 503 before that is better than a timeout.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(3500);
/// Event ids confirmed recently, for answering Customer.io's retries without publishing again.
pub const RECENT_CAPACITY: usize = 100_000;

/// The header carrying the event id on `customerio.webhooks`.
pub const HEADER_EVENT_ID: &str = "x-event-id";
/// The header carrying when the gateway received the event (RFC 3339, UTC).
pub const HEADER_RECEIVED_AT: &str = "x-received-at";
/// The original routing key of an unparsable part's dead letter (it has no
/// `<object_type>.<metric>` to be trusted).
pub const UNPARSABLE_ROUTING_KEY: &str = "unparsable";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(PATH).route(web::post().to(receive)));
}

async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refusal) = state.intake.refusal() {
        return refusal;
    }
    let body = match read_limited(&req, payload, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return body_refusal(e),
    };
    let now = chrono::Utc::now();
    if let Err(refusal) = verify(&req, &body, &state, now.timestamp()) {
        return *refusal;
    }
    let (events, unparsable): (Vec<_>, Vec<_>) = split_webhook_body(&body)
        .into_iter()
        .partition(Result::is_ok);
    let events: Vec<ReceivedEvent> = events.into_iter().filter_map(Result::ok).collect();
    let unparsable: Vec<UnparsableEvent> = unparsable.into_iter().filter_map(Result::err).collect();
    for received in &events {
        let e = &received.event;
        events::webhook_received(
            e.object_type.is_known().then(|| e.object_type.as_str()),
            e.metric.is_known().then(|| e.metric.as_str()),
        );
    }
    let stored = futures::future::join(
        store(&state, &events, now),
        keep_unparsable(&state.broker, &unparsable),
    )
    .await;
    match stored {
        (Ok(published), Ok(())) => {
            tracing::debug!(
                events = events.len(),
                published,
                unparsable = unparsable.len(),
                "webhook stored"
            );
            HttpResponse::Ok().json(json!({"received": events.len() + unparsable.len()}))
        }
        (Err(e), _) | (_, Err(e)) => {
            events::webhook_unavailable(&e);
            HttpResponse::ServiceUnavailable()
                .insert_header((RETRY_AFTER, "5"))
                .json(json!({"error": format!("not stored: {e}")}))
        }
    }
}

/// A metric label from event data: known values as they are, anything else `other`, so a
/// sender cannot grow the number of series without bound.
/// Dead-letters each unparsable part (confirmed), so nothing authentic is lost.
async fn keep_unparsable(
    broker: &SharedBroker,
    unparsable: &[UnparsableEvent],
) -> Result<(), BrokerError> {
    let publishes = unparsable.iter().map(|part| {
        tracing::warn!(error = %part.error,
            "authentic webhook event cannot be parsed; answered 200 and dead-lettered");
        let message = raw_dead_letter(
            &part.body,
            &part.error.to_string(),
            ErrorKind::WebhookUnparsable,
            WEBHOOKS_EXCHANGE,
            UNPARSABLE_ROUTING_KEY,
        );
        confirmed(broker.clone(), message)
    });
    for result in futures::future::join_all(publishes).await {
        result?;
        events::webhook_unparsable_kept();
    }
    Ok(())
}

/// Publishes with a confirm, in time for Customer.io's 4 s.
async fn confirmed(broker: SharedBroker, message: Publish) -> Result<(), BrokerError> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, broker.publish(message)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::NotConfirmed("no confirm within 3.5 s".into())),
    }
}

/// Checks `X-CIO-Signature` and the timestamp's age; the 401 to answer if they fail.
fn verify(
    req: &HttpRequest,
    body: &[u8],
    state: &AppState,
    now_secs: i64,
) -> Result<(), Box<HttpResponse>> {
    let webhooks = &state.settings.webhooks;
    let verifier = SignatureVerifier::new(
        webhooks.signing_secrets.iter().map(|s| s.expose()),
        webhooks.tolerance_secs,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match verifier.verify(
        header("x-cio-timestamp"),
        header("x-cio-signature"),
        body,
        now_secs,
    ) {
        Ok(Freshness::Fresh) => Ok(()),
        Ok(Freshness::Late { age_secs }) => {
            // Authentic but signed long ago: a retry of Customer.io's. Accepted (refusing it
            // would hold back the endpoint's stream for days); a replay is caught by event_id.
            events::webhook_late(age_secs);
            Ok(())
        }
        Err(e) => {
            events::webhook_rejected(e.reason(), &e);
            Err(Box::new(
                HttpResponse::Unauthorized().json(json!({"error": e.to_string()})),
            ))
        }
    }
}

/// Publishes each event not seen recently (once per request) to `customerio.webhooks`, all
/// confirmed, or the first error; returns how many were published.
async fn store(
    state: &AppState,
    events: &[ReceivedEvent],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, BrokerError> {
    let recent = &state.recent_webhooks;
    let mut in_request = HashSet::new();
    let fresh: Vec<_> = events
        .iter()
        .filter(|r| in_request.insert(r.event.event_id.as_str()))
        .filter(|r| !recent.contains(r.event.event_id.as_str()))
        .collect();
    let received_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let publishes = fresh.iter().map(|r| {
        let message = Publish::new(WEBHOOKS_EXCHANGE, &r.event.routing_key(), r.body.clone())
            .header(HEADER_EVENT_ID, r.event.event_id.as_str())
            .header(HEADER_RECEIVED_AT, received_at.clone());
        confirmed(state.broker.clone(), message)
    });
    let results = futures::future::join_all(publishes).await;
    let mut failure = None;
    for (r, result) in fresh.iter().zip(results) {
        match result {
            Ok(()) => recent.insert(r.event.event_id.as_str().to_string()),
            Err(e) => failure = Some(e),
        }
    }
    failure.map_or(Ok(fresh.len()), Err)
}

/// What a body that could not be read is answered.
fn body_refusal(error: BodyError) -> HttpResponse {
    match error {
        BodyError::TooLarge => {
            events::webhook_rejected(
                "too_large",
                &format_args!("body over {MAX_BODY_BYTES} bytes"),
            );
            HttpResponse::PayloadTooLarge()
                .json(json!({"error": format!("body is over {MAX_BODY_BYTES} bytes")}))
        }
        BodyError::Broken(e) => {
            events::webhook_rejected("malformed", &format_args!("reading body: {e}"));
            HttpResponse::BadRequest().json(json!({"error": format!("reading body: {e}")}))
        }
    }
}
