//! An API-triggered broadcast: one trigger of a broadcast set up in Customer.io, to its own
//! audience or to the recipients the trigger names.

use super::ParseError;
use super::attributes::kind;
use super::event::object;
use super::limits::{MAX_TRIGGER_DATA_BYTES, MAX_TRIGGER_RECIPIENTS};
use serde_json::{Map, Value};

/// The ways a trigger can name its audience; at most one (none: the broadcast's own).
const AUDIENCES: [&str; 3] = ["recipients", "ids", "emails"];

#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastTrigger {
    pub broadcast_id: u32,
    /// The App API trigger body: `data`, the audience, and options such as
    /// `id_ignore_missing`, as given.
    pub body: Map<String, Value>,
}

impl BroadcastTrigger {
    /// Parses `{broadcastId, data?, recipients? | ids? | emails?, ...}`.
    pub fn parse(payload: &Value) -> Result<Self, ParseError> {
        let mut body = object(payload)?.clone();
        let broadcast_id = match body.remove("broadcastId") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            None => return Err(ParseError::new("broadcastId", "is required")),
            Some(_) => None,
        }
        .filter(|id| *id >= 1)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| {
            ParseError::new("broadcastId", "must be a broadcast id: an integer from 1")
        })?;
        match body.get("data") {
            None | Some(Value::Null) => {}
            Some(data @ Value::Object(_)) => {
                let size = serde_json::to_vec(data).map_or(0, |v| v.len());
                if size > MAX_TRIGGER_DATA_BYTES {
                    return Err(ParseError::new(
                        "data",
                        format!(
                            "is {size} bytes, Customer.io allows at most {MAX_TRIGGER_DATA_BYTES}"
                        ),
                    ));
                }
            }
            Some(other) => {
                return Err(ParseError::new(
                    "data",
                    format!("must be an object, got {}", kind(other)),
                ));
            }
        }
        let named: Vec<&str> = AUDIENCES
            .into_iter()
            .filter(|k| body.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if named.len() > 1 {
            return Err(ParseError::new(
                named[1],
                format!(
                    "give one of recipients, ids or emails, not {}",
                    named.join(" and ")
                ),
            ));
        }
        match named.first().map(|k| (*k, &body[*k])) {
            Some(("recipients", Value::Object(_))) | None => {}
            Some(("recipients", other)) => {
                return Err(ParseError::new(
                    "recipients",
                    format!("must be a filter object, got {}", kind(other)),
                ));
            }
            Some((key, Value::Array(list))) => {
                if list.is_empty() || list.len() > MAX_TRIGGER_RECIPIENTS {
                    return Err(ParseError::new(
                        key,
                        format!("must list 1..={MAX_TRIGGER_RECIPIENTS} people"),
                    ));
                }
                if list.iter().any(|v| !(v.is_string() || v.is_number())) {
                    return Err(ParseError::new(key, "must list strings"));
                }
            }
            Some((key, other)) => {
                return Err(ParseError::new(
                    key,
                    format!("must be an array, got {}", kind(other)),
                ));
            }
        }
        Ok(Self { broadcast_id, body })
    }

    /// The routing and ordering key of a broadcast's triggers: `broadcast:<broadcastId>`.
    pub fn routing_key(&self) -> String {
        format!("broadcast:{}", self.broadcast_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_trigger_names_at_most_one_audience_within_the_limits() {
        let t = BroadcastTrigger::parse(&json!({"broadcastId": 12, "data": {"sale": "spring"},
            "emails": ["a@example.com"], "email_ignore_missing": true}))
        .unwrap();
        assert_eq!(t.routing_key(), "broadcast:12");
        assert!(t.body.get("broadcastId").is_none());
        assert_eq!(t.body["email_ignore_missing"], true);
        let too_many: Vec<String> = (0..=MAX_TRIGGER_RECIPIENTS)
            .map(|i| i.to_string())
            .collect();
        for (payload, field) in [
            (json!({}), "broadcastId"),
            (json!({"broadcastId": 0}), "broadcastId"),
            (
                json!({"broadcastId": 1, "ids": ["1"], "emails": ["a@b.c"]}),
                "emails",
            ),
            (json!({"broadcastId": 1, "ids": []}), "ids"),
            (json!({"broadcastId": 1, "ids": too_many}), "ids"),
            (json!({"broadcastId": 1, "recipients": []}), "recipients"),
            (json!({"broadcastId": 1, "data": "x"}), "data"),
            (
                json!({"broadcastId": 1, "data": {"x": "y".repeat(MAX_TRIGGER_DATA_BYTES)}}),
                "data",
            ),
        ] {
            let e = BroadcastTrigger::parse(&payload).unwrap_err();
            assert_eq!(e.field, field, "{payload}");
        }
    }
}
