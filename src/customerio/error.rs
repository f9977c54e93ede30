//! The one error of a Customer.io call, classified the way the pipeline needs it: retry, give
//! up, or never send.
//!
//! Classification follows Customer.io's own Node SDK (FACTS): 408, 429, 500, 502, 503, 504, 522
//! and 524 are worth another attempt, as are network errors and timeouts; `Retry-After` (seconds
//! or an HTTP-date) is honoured up to the gateway's one cap, [`crate::retry::MAX_RETRY_AFTER`]
//! (60 s: the circuit probes again by then anyway). Every other 4xx is permanent: the same request fails
//! again. Other 5xx (501, 505, ...) are treated as retryable too: a server-side failure says
//! nothing about the request, and the pipeline's attempt budget bounds the cost.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

use crate::retry::MAX_RETRY_AFTER;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CioError {
    /// The workspace failed, not this request: credentials refused, wrong region, rate limited,
    /// or an outage seen across users. The API's circuit is open (or its budget paused); the
    /// message waits without spending an attempt.
    #[error("Customer.io workspace unavailable, delivery paused: {reason}")]
    Workspace {
        reason: String,
        /// The status that showed the failure, when an answer came.
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Worth another attempt: a network error, a timeout, 408, 429 or 5xx.
    #[error("Customer.io unavailable ({}): {message}", status_text(*status))]
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Customer.io refused the request (4xx); its error body is kept.
    #[error("Customer.io rejected the request with {status}: {body}")]
    Permanent { status: u16, body: String },
    /// Refused before sending: a documented limit is broken or the call cannot be expressed.
    #[error("not sent to Customer.io: {0}")]
    Invalid(String),
}

fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "no response".to_string(), |s| s.to_string())
}

impl CioError {
    /// The workspace's failure, not the message's: wait, spend no attempt.
    pub fn is_workspace(&self) -> bool {
        matches!(self, CioError::Workspace { .. })
    }

    pub(crate) fn workspace(
        reason: impl Into<String>,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Self {
        CioError::Workspace {
            reason: reason.into(),
            status,
            retry_after,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, CioError::Retryable { .. })
    }

    /// How long Customer.io asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CioError::Retryable { retry_after, .. } | CioError::Workspace { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The HTTP status Customer.io answered, if a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            CioError::Retryable { status, .. } | CioError::Workspace { status, .. } => *status,
            CioError::Permanent { status, .. } => Some(*status),
            CioError::Invalid(_) => None,
        }
    }

    /// The caller cancelled the request before it was sent (see `unless_cancelled`): not the
    /// message's failure, so it spends no attempt.
    pub fn cancelled() -> Self {
        Self::workspace(
            "cancelled before it was sent: the shard lost its partition",
            None,
            None,
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        CioError::Invalid(message.into())
    }

    /// Classifies a non-success response.
    pub(crate) fn from_response(status: u16, headers: &HeaderMap, body: String) -> Self {
        if is_retryable_status(status) {
            CioError::Retryable {
                status: Some(status),
                retry_after: retry_after(headers),
                message: if body.is_empty() {
                    format!("HTTP {status}")
                } else {
                    body
                },
            }
        } else {
            CioError::Permanent { status, body }
        }
    }

    /// A request that got no response: connection refused or reset, DNS, TLS, timeout.
    pub(crate) fn from_transport(error: &reqwest::Error) -> Self {
        let what = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        CioError::Retryable {
            status: None,
            retry_after: None,
            message: format!("{what}: {}", error_chain(error)),
        }
    }
}

/// Whether a status is worth retrying (anything not listed and not 4xx is treated as 5xx-like).
pub fn is_retryable_status(status: u16) -> bool {
    match status {
        408 | 429 => true,
        400..=499 => false,
        500..=599 => true,
        // 1xx/3xx reaching here mean something between us and Customer.io misbehaved.
        _ => true,
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is a valid RFC 2822 date.
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let wait = at.signed_duration_since(chrono::Utc::now());
        wait.to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504, 522, 524] {
            assert!(CioError::from_response(s, &HeaderMap::new(), String::new()).is_retryable());
        }
        for s in [400, 401, 403, 404, 409, 413, 422] {
            let e = CioError::from_response(s, &HeaderMap::new(), "{}".into());
            assert!(!e.is_retryable());
            assert_eq!(e.status(), Some(s));
        }
    }

    #[test]
    fn retry_after_seconds_date_and_cap() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers("100000")), Some(MAX_RETRY_AFTER));
        let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
        let date = soon.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let wait = retry_after(&headers(&date)).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
