//! A deadline for request bodies (`http.body_timeout_ms`), over every route.
//!
//! actix bounds the request head (`client_request_timeout`) but not the body: a client that
//! sends a byte a second would hold its worker's connection for as long as it likes. Reading
//! past the deadline fails, so the extractor refuses the request and the connection closes.

use super::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{self, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// Middleware: the whole body must arrive within `http.body_timeout_ms` of the request head.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map(|state| Duration::from_millis(state.settings.http.body_timeout_ms));
    if let Some(timeout) = timeout {
        let body = req.take_payload();
        req.set_payload(within(body, Instant::now() + timeout));
    }
    next.call(req).await
}

/// `payload`, failing with a timeout once `deadline` passes before it ends.
fn within(payload: dev::Payload, deadline: Instant) -> dev::Payload {
    let chunks = futures::stream::unfold(Some(payload), move |payload| async move {
        let mut payload = payload?;
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(payload))),
            Ok(None) => None,
            Err(_) => Some((Err(timed_out()), None)),
        }
    });
    dev::Payload::Stream {
        payload: Box::pin(chunks),
    }
}

fn timed_out() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request body not received within http.body_timeout_ms",
    ))
}
