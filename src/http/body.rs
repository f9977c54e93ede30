//! Reading a request body up to a limit, declared (`Content-Length`) or actual.

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, web};
use bytes::BytesMut;
use futures::StreamExt;

/// An oversized body is read (and discarded) up to this much, so the client sees the 413
/// instead of a connection reset while it is still sending; beyond it the connection closes.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;

pub enum BodyError {
    /// Over the limit: answer 413.
    TooLarge,
    /// The client broke off or sent garbage framing: answer 400.
    Broken(String),
}

/// Reads the body, refusing more than `limit` bytes (declared or actual).
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(&mut payload, 0).await;
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + chunk.len() > limit {
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
