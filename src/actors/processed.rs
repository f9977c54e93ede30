//! The processed event of docs/reference.md §5: the envelope as received plus the outcome
//! (`status`, `attempts`, `processingTime`, and a transactional send's `deliveryId`).
//!
//! One is published per delivered envelope, so it is built by appending the outcome to the
//! received bytes rather than parsing and writing the envelope again. Where appending could
//! repeat a key the envelope already has, the envelope is re-serialised with the outcome's
//! values in place of its own.

use super::messages::Delivered;
use std::fmt::Write as _;
use std::time::Duration;

/// The keys the outcome adds. A body that spells none of them, and escapes nothing (an escape
/// could spell one in disguise), cannot already hold one.
const OUTCOME_KEYS: [&str; 4] = [
    "\"status\"",
    "\"attempts\"",
    "\"processingTime\"",
    "\"deliveryId\"",
];

/// `body` is a delivered envelope, so a JSON object.
pub fn processed_body(
    body: &[u8],
    attempts: u32,
    took: Duration,
    delivered: &Delivered,
) -> Vec<u8> {
    let mut outcome = format!(
        r#""status":"success","attempts":{attempts},"processingTime":{}"#,
        took.as_millis() as u64
    );
    if let Some(id) = &delivered.delivery_id {
        let quoted = serde_json::to_string(id).unwrap_or_default();
        let _ = write!(outcome, r#","deliveryId":{quoted}"#);
    }
    appended(body, &outcome).unwrap_or_else(|| reserialised(body, attempts, took, delivered))
}

/// The searchers for [`OUTCOME_KEYS`], built once: one runs per delivered envelope.
static OUTCOME_KEY_FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
    std::sync::LazyLock::new(|| {
        OUTCOME_KEYS
            .iter()
            .map(|key| memchr::memmem::Finder::new(key.as_bytes()))
            .collect()
    });

/// `{...}` + `,<fields>}`, or None where the body might already hold an outcome key.
fn appended(body: &[u8], fields: &str) -> Option<Vec<u8>> {
    let may_repeat_a_key = memchr::memchr(b'\\', body).is_some()
        || OUTCOME_KEY_FINDERS
            .iter()
            .any(|finder| finder.find(body).is_some());
    if may_repeat_a_key {
        return None;
    }
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[close] != b'}' {
        return None;
    }
    let last = body[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    let mut out = Vec::with_capacity(close + fields.len() + 2);
    out.extend_from_slice(&body[..close]);
    if body[last] != b'{' {
        out.push(b',');
    }
    out.extend_from_slice(fields.as_bytes());
    out.push(b'}');
    Some(out)
}

fn reserialised(body: &[u8], attempts: u32, took: Duration, delivered: &Delivered) -> Vec<u8> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).unwrap_or_default();
    value.insert("status".into(), "success".into());
    value.insert("attempts".into(), attempts.into());
    value.insert("processingTime".into(), (took.as_millis() as u64).into());
    if let Some(id) = &delivered.delivery_id {
        value.insert("deliveryId".into(), id.as_str().into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn processed(body: &str, delivery_id: Option<&str>) -> Value {
        let delivered = Delivered {
            delivery_id: delivery_id.map(str::to_string),
        };
        let bytes = processed_body(body.as_bytes(), 2, Duration::from_millis(37), &delivered);
        serde_json::from_slice(&bytes).expect("the processed event is JSON")
    }

    fn expected(envelope: Value, extra: Value) -> Value {
        let mut object = envelope.as_object().cloned().expect("an object");
        object.insert("status".into(), "success".into());
        object.insert("attempts".into(), 2.into());
        object.insert("processingTime".into(), 37.into());
        object.extend(extra.as_object().cloned().expect("an object"));
        Value::Object(object)
    }

    #[test]
    fn the_outcome_is_appended_to_the_envelope() {
        let envelope = json!({"type": "track", "userId": "u1", "payload": {"name": "x"}});
        let body = format!("  {}\n ", envelope);
        assert_eq!(processed(&body, None), expected(envelope, json!({})));
        assert!(
            appended(body.as_bytes(), "\"a\":1").is_some(),
            "the fast path"
        );
    }

    #[test]
    fn a_delivery_id_is_quoted() {
        let envelope = json!({"type": "transactional", "userId": "u1"});
        assert_eq!(
            processed(&envelope.to_string(), Some("dGVzdA==")),
            expected(envelope, json!({"deliveryId": "dGVzdA=="}))
        );
    }

    #[test]
    fn an_envelope_holding_an_outcome_key_gets_the_outcomes_value_once() {
        for body in [
            r#"{"type":"track","userId":"u1","status":"queued","attempts":9}"#,
            // An escape could spell a key: never appended to.
            r#"{"type":"track","userId":"u1","st\u0061tus":"queued"}"#,
        ] {
            assert!(appended(body.as_bytes(), "\"a\":1").is_none(), "{body}");
            let value = processed(body, None);
            assert_eq!(value["status"], "success", "{body}");
            assert_eq!(value["attempts"], 2, "{body}");
            assert_eq!(value["userId"], "u1", "{body}");
        }
    }

    #[test]
    fn an_empty_object_gets_no_leading_comma() {
        assert_eq!(
            processed("{ }", None),
            json!({"status": "success", "attempts": 2, "processingTime": 37})
        );
    }
}
