//! The fuzz harnesses: what one input means and what must hold for it. Shared by the
//! `cargo fuzz` targets (`fuzz_targets/*.rs`) and by `tests/fuzz_parsers.rs`, which runs them
//! in CI over the checked-in corpus and proptest mutations of it. Each returns what it saw, so
//! the tests can check the seeds are the valid inputs they claim to be.
//!
//! "Must hold": never a panic; a parse either succeeds with values that keep the documented
//! limits, or fails with a precise error (a non-empty reason and a field that names where).
#![allow(dead_code)]

use cio_gateway::domain::limits::{MAX_ENVELOPE_BYTES, MAX_IDENTIFIER_BYTES};
use cio_gateway::domain::webhook::{
    MAX_FUTURE_SKEW_SECS, ReceivedEvent, ReportingEvent, Row, SignatureError, SignatureVerifier,
    parse_webhook_body, sign,
};
use cio_gateway::domain::{Envelope, ParseError};
use serde_json::Value;

/// Top-level envelope fields an error may name (`payload` errors name a path inside it).
const ENVELOPE_FIELDS: [&str; 9] = [
    "type",
    "userId",
    "anonymousId",
    "objectTypeId",
    "objectId",
    "identifiers",
    "timestamp",
    "correlationId",
    "payload",
];

/// One envelope body, as a producer publishes it to `customerio.<exchange>`.
pub fn envelope(data: &[u8]) -> Result<Envelope, ParseError> {
    let parsed = Envelope::parse(data);
    assert_eq!(parsed, Envelope::parse(data), "parsing is deterministic");
    match &parsed {
        Ok(env) => {
            assert!(data.len() <= MAX_ENVELOPE_BYTES);
            let value: Value = serde_json::from_slice(data).expect("a parsed envelope is JSON");
            let obj = value.as_object().expect("a parsed envelope is an object");
            assert_eq!(obj["type"], env.kind.as_str(), "the type is the one given");
            let user = env.user.as_str();
            assert!(
                !user.is_empty() && user.len() <= MAX_IDENTIFIER_BYTES,
                "{user:?}"
            );
            // The same JSON value parses to the same envelope, whatever its byte layout.
            assert_eq!(Envelope::from_value(&value).as_ref(), Ok(env));
        }
        Err(e) => assert_precise(e, |field| {
            let top = field.split(['.', '[']).next().unwrap_or("");
            field.is_empty() || ENVELOPE_FIELDS.contains(&top)
        }),
    }
    parsed
}

/// What `webhook` saw: the signature check and the body parse, as the HTTP handler does them
/// (it answers 200 only when both succeed).
#[derive(Debug)]
pub struct WebhookOutcome {
    pub verified: Result<(), SignatureError>,
    pub parsed: Result<Vec<ReceivedEvent>, ParseError>,
}

impl WebhookOutcome {
    /// The handler stores the events and answers 200.
    pub fn accepted(&self) -> bool {
        self.verified.is_ok() && self.parsed.is_ok()
    }
}

/// The signing secrets the harness's verifier has (two, as during a rotation).
pub const SECRETS: [&str; 2] = ["fuzz-secret-1", "fuzz-secret-2"];
/// "Now" for the verifier: fixed, so an input means the same thing on every run.
pub const NOW: i64 = 1_700_000_000;
pub const TOLERANCE_SECS: u64 = 300;

/// One webhook request. Layout of the input:
///
/// ```text
/// byte 0         mode: bits 0-1 signature (0 signed with SECRETS[0], 1 with SECRETS[1],
///                2 taken from the input, 3 no header); bit 2 set: no timestamp header
/// ...\n          X-CIO-Timestamp value (up to the first newline)
/// ...\n          X-CIO-Signature value, only in signature mode 2
/// rest           the body
/// ```
///
/// A header value that is not visible ASCII counts as absent, as `HeaderValue::to_str` makes
/// it for the handler. Signed modes sign the timestamp the verifier reads (trimmed), so a seed
/// that signs its body is accepted exactly when its timestamp is within the tolerance of NOW.
pub fn webhook(data: &[u8]) -> WebhookOutcome {
    let Some((&mode, rest)) = data.split_first() else {
        return WebhookOutcome {
            verified: Err(SignatureError::MissingSignature),
            parsed: Err(ParseError::new("", "empty input")),
        };
    };
    let (timestamp, rest) = split_line(rest);
    let (signature, body) = match mode & 0b11 {
        2 => {
            let (signature, body) = split_line(rest);
            (header(signature), body)
        }
        _ => (None, rest),
    };
    let timestamp = if mode & 0b100 == 0 {
        header(timestamp)
    } else {
        None
    };
    let signed = timestamp.map(|t| t.trim().to_string());
    let signature = match mode & 0b11 {
        0 | 1 => signed
            .as_deref()
            .map(|t| sign(SECRETS[usize::from(mode & 1)], t, body)),
        2 => signature.map(str::to_string),
        _ => None,
    };

    let verifier = SignatureVerifier::new(SECRETS, TOLERANCE_SECS);
    let verified = verifier
        .verify(timestamp, signature.as_deref(), body, NOW)
        .map(drop);
    assert_eq!(
        verified,
        verifier
            .verify(timestamp, signature.as_deref(), body, NOW)
            .map(drop),
        "verification is deterministic"
    );
    if mode & 0b11 < 2 {
        // A correct signature: the outcome is decided by the timestamp alone.
        let expected = match signed.as_deref() {
            None | Some("") => Err(SignatureError::MissingTimestamp),
            Some(t) => match t.parse::<i64>() {
                Err(_) => Err(SignatureError::BadTimestamp),
                Ok(sent) if sent > NOW && sent.abs_diff(NOW) > MAX_FUTURE_SKEW_SECS => {
                    Err(SignatureError::Future {
                        ahead_secs: sent.abs_diff(NOW),
                    })
                }
                Ok(sent) if sent <= NOW && NOW.abs_diff(sent) > TOLERANCE_SECS => {
                    Err(SignatureError::Stale {
                        age_secs: NOW.abs_diff(sent),
                        tolerance_secs: TOLERANCE_SECS,
                    })
                }
                Ok(_) => Ok(()),
            },
        };
        // Without a timestamp there was nothing to sign: the signature is missing first.
        let expected = if signature.is_none() {
            Err(SignatureError::MissingSignature)
        } else {
            expected
        };
        assert_eq!(verified, expected, "timestamp {timestamp:?}");
    } else if verified.is_ok() {
        // Only the right MAC over exactly these bytes passes.
        let t = signed
            .as_deref()
            .expect("a verified request has a timestamp");
        let given = signature
            .as_deref()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        assert!(
            SECRETS.iter().any(|s| sign(s, t, body) == given),
            "a forged signature passed: {given}"
        );
    }

    let parsed = parse_webhook_body(body);
    match &parsed {
        Ok(events) => {
            assert!(!events.is_empty(), "an accepted body has events");
            for received in events {
                check_event(received);
            }
            // One event object (not a batch) is kept as the exact bytes that arrived.
            let value: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
            if value.get("event_id").is_some() || value.get("events").is_none() {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].body, body, "a single event keeps its bytes");
            }
        }
        Err(e) => assert_precise(e, |field| {
            let top = field.split(['.', '[']).next().unwrap_or("");
            matches!(
                top,
                "" | "event_id" | "object_type" | "metric" | "timestamp" | "data" | "events"
            )
        }),
    }
    WebhookOutcome { verified, parsed }
}

/// An event as stored: its bytes parse back to it, its routing key is two words, its row
/// serializes.
fn check_event(received: &ReceivedEvent) {
    let event = &received.event;
    let again = ReportingEvent::parse(&received.body).expect("an event's own bytes parse");
    assert_eq!(&again, event, "an event's bytes parse to the same event");
    let key = event.routing_key();
    let words: Vec<&str> = key.split('.').collect();
    assert_eq!(words.len(), 2, "routing key {key:?}");
    for word in words {
        assert!(
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "routing key {key:?}"
        );
    }
    let received_at = chrono::DateTime::from_timestamp(NOW, 0).expect("NOW is a time");
    let row = Row::new(event, received_at);
    assert_eq!(row.event_id, event.event_id.as_str());
    serde_json::to_vec(&row).expect("a row serializes");
}

/// A precise error: a reason, a field that `known` accepts, and a display naming both.
fn assert_precise(e: &ParseError, known: impl Fn(&str) -> bool) {
    assert!(!e.reason.is_empty(), "an error says what is wrong: {e:?}");
    assert!(known(&e.field), "an error names a known field: {e:?}");
    let shown = e.to_string();
    assert!(shown.contains(&e.reason), "{shown}");
    if !e.field.is_empty() {
        assert!(shown.starts_with(&e.field), "{shown}");
    }
}

/// Up to the first newline, and the rest after it (no newline: all of it, and nothing).
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A header value as the handler reads it: visible ASCII (and spaces, tabs), else absent.
fn header(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).expect("ASCII is UTF-8"))
}
