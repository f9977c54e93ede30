//! Customer.io reporting webhooks (docs/reference.md §6, §7), parsed once into typed values.
//!
//! A POST carries one event object, or `{"events": [...]}`. Each event keeps the exact bytes it
//! arrived as (they are what goes onto `customerio.webhooks`) next to its typed form. Object
//! types and metrics Customer.io adds later are kept as `Other`, never rejected: the gateway
//! stores what it cannot interpret rather than losing it.
//!
//! Submodules: [`signature`] verifies `X-CIO-Signature`, [`rules`] maps events to actions,
//! [`row`] is the warehouse row. All pure: no clock, no I/O (the caller passes "now").

mod row;
mod rules;
mod signature;

pub use row::Row;
pub use rules::{
    Action, ActionKind, BOUNCED_AT_ATTRIBUTE, DEFAULT_RULES, Rules, action_correlation_id,
    action_envelope,
};
pub use signature::{
    FRESH_SECS, Freshness, MAX_FUTURE_SKEW_SECS, SignatureError, SignatureVerifier, sign,
};

use super::ParseError;
use super::attributes::kind as json_kind;
use super::identifier::identifier;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// Longest `event_id` accepted (Customer.io's are 26-character ULIDs).
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// Longest object type or metric accepted; both become words of a routing key.
pub const MAX_TOKEN_BYTES: usize = 64;
/// Latest event timestamp accepted: 9999-12-31T23:59:59Z, so a day partition is `YYYY-MM-DD`.
pub const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;

identifier! {
    /// Customer.io's unique id of one reporting event; it repeats when Customer.io retries.
    EventId { field: "event_id", max_bytes: MAX_EVENT_ID_BYTES }
}

/// Declares a string enum with known values and an `Other` that keeps anything else.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value Customer.io sent that this version does not know; kept as is.
            Other(String),
        }

        impl $name {
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// Any well-formed token: a known value, or `Other`.
            pub fn parse(value: &str) -> Self {
                match value {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                }
            }

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(other) => other,
                }
            }

            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

open_enum! {
    /// What a reporting event is about (Customer.io's `object_type`).
    ObjectType {
        Customer => "customer",
        Email => "email",
        Push => "push",
        Sms => "sms",
        InApp => "in_app",
        Slack => "slack",
        Webhook => "webhook",
        Whatsapp => "whatsapp",
    }
}

open_enum! {
    /// What happened (Customer.io's `metric`), as listed for `POST /v1/reporting_webhooks`.
    Metric {
        Subscribed => "subscribed",
        Unsubscribed => "unsubscribed",
        SubscriptionPreferencesChanged => "subscription_preferences_changed",
        Drafted => "drafted",
        Attempted => "attempted",
        Sent => "sent",
        Delivered => "delivered",
        Opened => "opened",
        Clicked => "clicked",
        Converted => "converted",
        Bounced => "bounced",
        Dropped => "dropped",
        Deferred => "deferred",
        Spammed => "spammed",
        Failed => "failed",
        Undeliverable => "undeliverable",
        Replied => "replied",
        CioSubscriptionPreferencesChanged => "cio_subscription_preferences_changed",
    }
}

/// One verified reporting event, typed; `raw` is the whole event object as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportingEvent {
    pub event_id: EventId,
    pub object_type: ObjectType,
    pub metric: Metric,
    pub timestamp: DateTime<Utc>,
    pub customer_id: Option<String>,
    /// `data.recipient`, else `data.email_address` (customer events carry the latter).
    pub recipient: Option<String>,
    pub delivery_id: Option<String>,
    pub campaign_id: Option<String>,
    pub action_id: Option<String>,
    pub broadcast_id: Option<String>,
    pub newsletter_id: Option<String>,
    pub transactional_message_id: Option<String>,
    /// `data.identifiers` (`{"id", "email", "cio_id"}`), when sent.
    pub identifiers: Option<Value>,
    /// The columns analysts query first; read leniently (a value of another type is left in
    /// `raw` only, never a reason to refuse the event).
    pub details: EventDetails,
    pub raw: Value,
}

/// `data.journey_id`, `trigger_event_id`, `failure_message`, `href`, `link_id` (text) and the
/// Apple Mail privacy flags `machine` / `prefetched` of an open (booleans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventDetails {
    pub journey_id: Option<String>,
    pub trigger_event_id: Option<String>,
    pub failure_message: Option<String>,
    pub href: Option<String>,
    pub link_id: Option<String>,
    pub machine: Option<bool>,
    pub prefetched: Option<bool>,
}

impl EventDetails {
    fn read(data: &Map<String, Value>) -> Self {
        let text = |key: &str| match data.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let flag = |key: &str| data.get(key).and_then(Value::as_bool);
        Self {
            journey_id: text("journey_id"),
            trigger_event_id: text("trigger_event_id"),
            failure_message: text("failure_message"),
            href: text("href"),
            link_id: text("link_id"),
            machine: flag("machine"),
            prefetched: flag("prefetched"),
        }
    }
}

/// An event and the exact bytes it arrived as.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub event: ReportingEvent,
    pub body: Vec<u8>,
}

impl ReportingEvent {
    /// Parses one event object. Any byte string gives an event or a precise error.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::new("", format!("invalid JSON: {e}")))?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        let obj = value.as_object().ok_or_else(|| {
            ParseError::new(
                "",
                format!("event must be an object, got {}", json_kind(&value)),
            )
        })?;
        let event_id = match obj.get("event_id") {
            Some(Value::String(s)) => EventId::parse(s)?,
            Some(other) => return Err(not_a_string("event_id", other)),
            None => return Err(ParseError::new("event_id", "is required")),
        };
        let object_type = ObjectType::parse(token(obj, "object_type")?);
        let metric = Metric::parse(token(obj, "metric")?);
        let timestamp = timestamp(obj.get("timestamp"))?;
        let empty = Map::new();
        let data = match obj.get("data") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(ParseError::new(
                    "data",
                    format!("must be an object, got {}", json_kind(other)),
                ));
            }
        };
        let field = |key: &str| id_field(data, key).map_err(|e| e.within("data"));
        let identifiers = match data.get("identifiers") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(ParseError::new(
                    "data.identifiers",
                    format!("must be an object, got {}", json_kind(other)),
                ));
            }
        };
        Ok(Self {
            event_id,
            object_type,
            metric,
            timestamp,
            customer_id: field("customer_id")?,
            recipient: match field("recipient")? {
                Some(r) => Some(r),
                None => field("email_address")?,
            },
            delivery_id: field("delivery_id")?,
            campaign_id: field("campaign_id")?,
            action_id: field("action_id")?,
            broadcast_id: field("broadcast_id")?,
            newsletter_id: field("newsletter_id")?,
            transactional_message_id: field("transactional_message_id")?,
            identifiers,
            details: EventDetails::read(data),
            raw: value,
        })
    }

    /// The person the event is about, by the key Customer.io named them with:
    /// `data.identifiers` `id`, else `email`, else `cio_id`; only then the deprecated
    /// `data.customer_id` (blank for deleted or merged people) as an `id`.
    pub fn person_identifier(&self) -> Option<(&'static str, String)> {
        let identifiers = self.identifiers.as_ref();
        let text = |key: &str| {
            identifiers
                .and_then(|i| i.get(key))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.trim().to_string()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
        };
        ["id", "email", "cio_id"]
            .into_iter()
            .find_map(|key| text(key).map(|value| (key, value)))
            .or_else(|| {
                let id = self.customer_id.as_deref().map(str::trim)?;
                (!id.is_empty()).then(|| ("id", id.to_string()))
            })
    }

    /// The person as Customer.io's v1 paths name them (an id, an email, or `cio_<cio_id>`):
    /// the gateway's ordering key and the action ledger's person.
    pub fn person(&self) -> Option<String> {
        self.person_identifier().map(|(key, value)| match key {
            "cio_id" => format!("cio_{value}"),
            _ => value,
        })
    }

    /// `<object_type>.<metric>`: the routing key on `customerio.webhooks`, and what rules match.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.object_type, self.metric)
    }
}

/// Part of an authentic webhook body that could not be parsed: its bytes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct UnparsableEvent {
    pub body: Vec<u8>,
    pub error: ParseError,
}

/// Splits a webhook body (one event, or `{"events": [...]}`) into its events, each parsed or
/// kept as unparsable; never fails as a whole. An authentic body must not be refused for its
/// content: Customer.io answers a 4xx by holding back every later webhook of the endpoint for
/// an hour, and retries for days. A body that is not JSON, or whose `events` is not an array,
/// is one unparsable part; an empty `events` gives none.
pub fn split_webhook_body(body: &[u8]) -> Vec<Result<ReceivedEvent, UnparsableEvent>> {
    let whole = |error: ParseError| {
        vec![Err(UnparsableEvent {
            body: body.to_vec(),
            error,
        })]
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return whole(ParseError::new("", format!("invalid JSON: {e}"))),
    };
    let is_batch = value
        .as_object()
        .is_some_and(|o| o.contains_key("events") && !o.contains_key("event_id"));
    if !is_batch {
        return vec![received(value, body)];
    }
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
    }
    let batch: Batch = match serde_json::from_slice(body) {
        Ok(batch) => batch,
        Err(e) => {
            return whole(ParseError::new(
                "events",
                format!("must be an array of event objects: {e}"),
            ));
        }
    };
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let bytes = raw.get().as_bytes();
            let parsed = serde_json::from_str(raw.get())
                .map_err(|e| UnparsableEvent {
                    body: bytes.to_vec(),
                    error: ParseError::new("", format!("invalid JSON: {e}")),
                })
                .and_then(|value| received(value, bytes));
            parsed.map_err(|mut unparsable| {
                unparsable.error = unparsable.error.within(&format!("events[{i}]"));
                unparsable
            })
        })
        .collect()
}

fn received(value: Value, body: &[u8]) -> Result<ReceivedEvent, UnparsableEvent> {
    match ReportingEvent::from_value(value) {
        Ok(event) => Ok(ReceivedEvent {
            event,
            body: body.to_vec(),
        }),
        Err(error) => Err(UnparsableEvent {
            body: body.to_vec(),
            error,
        }),
    }
}

/// Parses a webhook request body strictly: one event, or `{"events": [...]}` with at least
/// one, every one of them valid; the first problem otherwise.
pub fn parse_webhook_body(body: &[u8]) -> Result<Vec<ReceivedEvent>, ParseError> {
    let parts = split_webhook_body(body);
    if parts.is_empty() {
        return Err(ParseError::new("events", "must not be empty"));
    }
    parts
        .into_iter()
        .map(|part| part.map_err(|unparsable| unparsable.error))
        .collect()
}

fn not_a_string(key: &str, value: &Value) -> ParseError {
    ParseError::new(key, format!("must be a string, got {}", json_kind(value)))
}

/// An object type or metric: one routing-key word of letters, digits, `_` or `-`.
fn token<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ParseError> {
    let value = match obj.get(key) {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(not_a_string(key, other)),
        None => return Err(ParseError::new(key, "is required")),
    };
    if value.is_empty() {
        return Err(ParseError::new(key, "must not be empty"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(ParseError::new(
            key,
            format!(
                "is {} bytes, at most {MAX_TOKEN_BYTES} allowed",
                value.len()
            ),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ParseError::new(
            key,
            format!("{value:?} may only contain letters, digits, '_' and '-'"),
        ));
    }
    Ok(value)
}

/// Unix seconds (an integer, or a float without fraction) between 1970 and 9999.
fn timestamp(value: Option<&Value>) -> Result<DateTime<Utc>, ParseError> {
    let key = "timestamp";
    let secs = match value {
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e18)
                .map(|f| f as i64)
        }),
        Some(other) => {
            return Err(ParseError::new(
                key,
                format!("must be unix seconds, got {}", json_kind(other)),
            ));
        }
        None => return Err(ParseError::new(key, "is required")),
    };
    secs.filter(|s| (0..=MAX_TIMESTAMP_SECS).contains(s))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| ParseError::new(key, "must be whole unix seconds between 1970 and 9999"))
}

/// An identifier Customer.io sends as a string or a number; empty means absent.
fn id_field(data: &Map<String, Value>, key: &str) -> Result<Option<String>, ParseError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(ParseError::new(
            key,
            format!("must be a string or a number, got {}", json_kind(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn bounced() -> Value {
        json!({
            "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
            "object_type": "email",
            "metric": "bounced",
            "timestamp": 1_613_063_089,
            "data": {
                "customer_id": "42",
                "identifiers": {"id": "42", "email": "a@example.com", "cio_id": "d9c106000001"},
                "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
                "recipient": "a@example.com",
                "campaign_id": 23,
                "action_id": 96,
                "failure_message": "550 no such user"
            }
        })
    }

    #[test]
    fn a_bounce_parses_into_its_fields() {
        let body = serde_json::to_vec(&bounced()).unwrap();
        let events = parse_webhook_body(&body).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].body, body, "a single event keeps its bytes");
        let e = &events[0].event;
        assert_eq!(e.event_id.as_str(), "01E4C4CT6YDC7Y5M7FE1GWWPQJ");
        assert_eq!(e.object_type, ObjectType::Email);
        assert_eq!(e.metric, Metric::Bounced);
        assert_eq!(e.routing_key(), "email.bounced");
        assert_eq!(e.timestamp.to_rfc3339(), "2021-02-11T17:04:49+00:00");
        assert_eq!(e.customer_id.as_deref(), Some("42"));
        assert_eq!(e.recipient.as_deref(), Some("a@example.com"));
        assert_eq!(e.campaign_id.as_deref(), Some("23"));
        assert_eq!(e.action_id.as_deref(), Some("96"));
        assert_eq!(e.broadcast_id, None);
        assert_eq!(e.identifiers.as_ref().unwrap()["cio_id"], "d9c106000001");
        assert_eq!(e.raw, bounced());
    }

    #[test]
    fn unknown_types_and_metrics_are_kept() {
        let mut v = bounced();
        v["object_type"] = json!("telegram");
        v["metric"] = json!("read");
        let e = ReportingEvent::from_value(v).unwrap();
        assert_eq!(e.object_type, ObjectType::Other("telegram".into()));
        assert!(!e.metric.is_known());
        assert_eq!(e.routing_key(), "telegram.read");
        // Documented ones are known.
        assert_eq!(ObjectType::parse("whatsapp"), ObjectType::Whatsapp);
        assert_eq!(Metric::parse("replied"), Metric::Replied);
        assert_eq!(
            Metric::parse("cio_subscription_preferences_changed"),
            Metric::CioSubscriptionPreferencesChanged
        );
        for t in ObjectType::KNOWN {
            assert_eq!(&ObjectType::parse(t.as_str()), t);
        }
        for m in Metric::KNOWN {
            assert_eq!(&Metric::parse(m.as_str()), m);
        }
    }

    #[test]
    fn the_person_comes_from_identifiers_not_the_deprecated_customer_id() {
        let person = |data: Value| {
            ReportingEvent::from_value(json!({"event_id": "e", "object_type": "email",
                "metric": "bounced", "timestamp": 1_700_000_000, "data": data}))
            .unwrap()
            .person()
        };
        let all = json!({"id": "42", "email": "a@example.com", "cio_id": "d9c1"});
        assert_eq!(
            person(json!({"customer_id": "", "identifiers": all})).as_deref(),
            Some("42")
        );
        assert_eq!(
            person(json!({"customer_id": "", "identifiers": {"id": "", "email": "a@example.com"}}))
                .as_deref(),
            Some("a@example.com")
        );
        assert_eq!(
            person(json!({"identifiers": {"cio_id": "d9c1"}})).as_deref(),
            Some("cio_d9c1")
        );
        assert_eq!(
            person(json!({"identifiers": {"id": 7}})).as_deref(),
            Some("7")
        );
        assert_eq!(person(json!({"customer_id": "9"})).as_deref(), Some("9"));
        assert_eq!(person(json!({"customer_id": ""})), None);
    }

    #[test]
    fn customer_events_use_email_address() {
        let e = ReportingEvent::from_value(json!({
            "event_id": "e1", "object_type": "customer", "metric": "unsubscribed",
            "timestamp": 1_700_000_000,
            "data": {"customer_id": "7", "email_address": "x@example.com",
                "identifiers": {"id": "7"}}
        }))
        .unwrap();
        assert_eq!(e.recipient.as_deref(), Some("x@example.com"));
        assert_eq!(e.metric, Metric::Unsubscribed);
    }

    #[test]
    fn a_batch_keeps_each_event_as_received() {
        let body = br#"{"events": [ {"event_id":"a","object_type":"email","metric":"sent","timestamp":1700000000} ,
            {"metric":"opened","event_id":"b","object_type":"push","timestamp":1700000001,"data":{"x":1}}]}"#;
        let events = parse_webhook_body(body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].body,
            br#"{"metric":"opened","event_id":"b","object_type":"push","timestamp":1700000001,"data":{"x":1}}"#
        );
        assert_eq!(events[1].event.routing_key(), "push.opened");
    }

    #[test]
    fn errors_name_the_field() {
        let field = |v: Value| {
            parse_webhook_body(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .field
        };
        let mut v = bounced();
        v.as_object_mut().unwrap().remove("event_id");
        assert_eq!(field(v), "event_id");
        let mut v = bounced();
        v["metric"] = json!("bounced.#");
        assert_eq!(field(v), "metric");
        let mut v = bounced();
        v["timestamp"] = json!("yesterday");
        assert_eq!(field(v), "timestamp");
        let mut v = bounced();
        v["timestamp"] = json!(-5);
        assert_eq!(field(v), "timestamp");
        let mut v = bounced();
        v["data"]["customer_id"] = json!({"id": 1});
        assert_eq!(field(v), "data.customer_id");
        let mut v = bounced();
        v["data"]["identifiers"] = json!("42");
        assert_eq!(field(v), "data.identifiers");
        assert_eq!(field(json!({"events": []})), "events");
        assert_eq!(field(json!({"events": [bounced(), 3]})), "events[1]");
        let mut v = bounced();
        v["object_type"] = json!(7);
        assert_eq!(
            field(json!({"events": [bounced(), v]})),
            "events[1].object_type"
        );
        assert_eq!(field(json!([bounced()])), "");
        let e = parse_webhook_body(b"{\"event_id\": \"a\", ").unwrap_err();
        assert!(e.reason.starts_with("invalid JSON"), "{e}");
    }

    #[test]
    fn an_authentic_body_splits_into_events_and_what_cannot_be_read() {
        let body = br#"{"events": [{"event_id":"a","object_type":"email","metric":"sent","timestamp":1700000000},
            {"event_id":"b","object_type":"email","metric":"sent","timestamp":"soon"}, 7]}"#;
        let parts = split_webhook_body(body);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].as_ref().unwrap().event.event_id.as_str(), "a");
        let bad = parts[1].as_ref().unwrap_err();
        assert_eq!(bad.error.field, "events[1].timestamp");
        assert_eq!(
            bad.body,
            br#"{"event_id":"b","object_type":"email","metric":"sent","timestamp":"soon"}"#
        );
        assert_eq!(parts[2].as_ref().unwrap_err().body, b"7");
        for whole in [&b"not json"[..], br#"{"events": 3}"#, br#"[1]"#] {
            let parts = split_webhook_body(whole);
            assert_eq!(parts.len(), 1);
            assert_eq!(parts[0].as_ref().unwrap_err().body, whole);
        }
        assert!(split_webhook_body(br#"{"events": []}"#).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_bytes_parse_or_fail_precisely(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match parse_webhook_body(&bytes) {
                Ok(events) => prop_assert!(!events.is_empty()),
                Err(e) => prop_assert!(!e.reason.is_empty()),
            }
        }

        #[test]
        fn any_json_event_parses_or_fails_precisely(
            event_id in prop_oneof![Just(json!("01E4C4CT6YDC7Y5M7FE1GWWPQJ")), arb_json()],
            object_type in prop_oneof![Just(json!("email")), ".{0,10}".prop_map(Value::from), arb_json()],
            metric in prop_oneof![Just(json!("bounced")), ".{0,10}".prop_map(Value::from), arb_json()],
            timestamp in prop_oneof![any::<i64>().prop_map(Value::from), any::<f64>().prop_map(Value::from), arb_json()],
            data in arb_json(),
            batch in any::<bool>(),
        ) {
            let event = json!({"event_id": event_id, "object_type": object_type, "metric": metric,
                "timestamp": timestamp, "data": data});
            let body = if batch { json!({"events": [event]}) } else { event };
            match parse_webhook_body(&serde_json::to_vec(&body).unwrap()) {
                Ok(events) => {
                    prop_assert_eq!(events.len(), 1);
                    let key = events[0].event.routing_key();
                    prop_assert_eq!(key.split('.').count(), 2);
                    let row = Row::new(&events[0].event, chrono::Utc::now());
                    prop_assert!(serde_json::to_vec(&row).is_ok());
                }
                Err(e) => prop_assert!(!e.reason.is_empty()),
            }
        }
    }

    pub(super) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::hash_map(
                    prop_oneof![
                        Just("customer_id".to_string()),
                        Just("identifiers".to_string()),
                        Just("recipient".to_string()),
                        Just("email_address".to_string()),
                        Just("campaign_id".to_string()),
                        Just("delivery_id".to_string()),
                        ".{0,8}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
