//! Domain operations in Customer.io's wire format: Track v1 paths and bodies, Track v2
//! operations, App API send bodies; and the documented limits, checked before anything is sent.
//!
//! Shapes follow Customer.io's Track API OpenAPI document (`/api/v1/...` request bodies and the
//! `person_*` schemas of `/api/v2/entity` and `/api/v2/batch`) and the App API `send*` schemas.
//! Notable differences between the versions, all as documented:
//! - v1 event properties are `data`; v2 event and page properties are `attributes`.
//! - v1 devices are `{"device": {"id": token, ...}}`; v2 devices are `{"device": {"token", ...}}`.
//!   Device properties other than `last_used` go under `device.attributes` in both.
//! - v2 `merge` names `primary` and `secondary` and has no `identifiers`.
//! - v1 names a person in the path by the identifier's shape (an id or an email as it is, a
//!   cio_id as `cio_<id>`); v2 by the key of `identifiers` (`id`, `email` or `cio_id`).
//! - The ordering timestamp of an identify is v1 `_timestamp` (an attribute of the body) and v2
//!   `timestamp`; a page view's is `timestamp` in both.

use super::{CioError, TrackCall};
use crate::domain::limits::{
    MAX_ATTRIBUTE_NAME_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES_PER_CALL,
    MAX_EVENT_NAME_BYTES, MAX_IDENTIFIER_BYTES, MAX_V2_OPERATION_BYTES, STRUCTURED_ATTRIBUTES,
};
use crate::domain::{
    Attributes, BroadcastTrigger, Channel, Device, Event, ObjectAction, ObjectOp, Operation,
    PersonRef, TemplateRef, TransactionalRequest,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// "Event Data | 100000 bytes | Max length of each event data" (Track API limits). The domain's
/// parse-time limit is 100 KiB; the documented figure is what Customer.io enforces, so it wins.
pub const MAX_EVENT_DATA_BYTES: usize = 100_000;

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One Track v1 request, relative to the `.../api/v1` base.
#[derive(Debug, Clone, PartialEq)]
pub struct V1Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

/// Percent-encodes one path segment (a person id or a device token).
pub fn encode_segment(value: &str) -> Result<String, CioError> {
    // "." and ".." (also spelled %2E) are dot-segments that every URL parser resolves away, so
    // such an id cannot be named in a path at all; refusing beats writing to the wrong person.
    if value == "." || value == ".." {
        return Err(CioError::invalid(format!(
            "{value:?} cannot be sent as a path segment"
        )));
    }
    Ok(utf8_percent_encode(value, PATH_SEGMENT).to_string())
}

/// The Track v1 request for a call.
pub fn v1_request(call: &TrackCall) -> Result<V1Request, CioError> {
    if call.person.is_anonymous() {
        return v1_anonymous_request(call);
    }
    let id = encode_segment(&call.person.v1_path_identifier())?;
    let customer = format!("/customers/{id}");
    let (method, path, body) = match &call.operation {
        Operation::Identify(attributes) => {
            let mut body = attributes_value(attributes);
            if let Some(ts) = call.timestamp {
                body["_timestamp"] = ts.into();
            }
            (Method::PUT, customer, Some(body))
        }
        Operation::Delete => (Method::DELETE, customer, None),
        Operation::Track(_) | Operation::Page(_) | Operation::Screen(_) => (
            Method::POST,
            format!("{customer}/events"),
            v1_event_body(call),
        ),
        Operation::Suppress => (Method::POST, format!("{customer}/suppress"), None),
        Operation::Unsuppress => (Method::POST, format!("{customer}/unsuppress"), None),
        Operation::AddDevice(device) => (
            Method::PUT,
            format!("{customer}/devices"),
            Some(json!({"device": device_value("id", device)})),
        ),
        Operation::DeleteDevice(token) => (
            Method::DELETE,
            format!("{customer}/devices/{}", encode_segment(token)?),
            None,
        ),
        Operation::Merge { primary, secondary } => (
            Method::POST,
            "/merge_customers".to_string(),
            Some(json!({"primary": person_ref(primary), "secondary": person_ref(secondary)})),
        ),
        Operation::Transactional(_) | Operation::Broadcast(_) => return Err(not_track()),
        Operation::Object(_) => return Err(v2_only()),
        Operation::Segment { segment_id, add } => {
            return Ok(segment_request(
                &SegmentChange {
                    segment_id: *segment_id,
                    add: *add,
                    id_type: call.person.kind,
                },
                &[call.person.value.as_str()],
            ));
        }
    };
    Ok(V1Request { method, path, body })
}

/// One manual segment's change for people of one identifier kind: the people of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentChange {
    pub segment_id: u32,
    pub add: bool,
    /// `id`, `email` or `cio_id`: Customer.io "will ignore values in the ids array that don't
    /// match the id_type parameter".
    pub id_type: &'static str,
}

impl SegmentChange {
    /// The change a segment call makes, or `None` for any other call.
    pub fn of(call: &TrackCall) -> Option<Self> {
        match call.operation {
            Operation::Segment { segment_id, add } => Some(Self {
                segment_id,
                add,
                id_type: call.person.kind,
            }),
            _ => None,
        }
    }
}

/// `POST /segments/{id}/add_customers` (or `remove_customers`) `?id_type=` for `ids`.
pub fn segment_request(change: &SegmentChange, ids: &[&str]) -> V1Request {
    let verb = if change.add {
        "add_customers"
    } else {
        "remove_customers"
    };
    V1Request {
        method: Method::POST,
        path: format!(
            "/segments/{}/{verb}?id_type={}",
            change.segment_id, change.id_type
        ),
        body: Some(json!({ "ids": ids })),
    }
}

/// `POST /events`: an event, page or screen view of someone not identified yet, with the
/// `anonymous_id` Customer.io later merges into the person who identifies with it.
fn v1_anonymous_request(call: &TrackCall) -> Result<V1Request, CioError> {
    let mut body = v1_event_body(call).ok_or_else(not_anonymous)?;
    body["anonymous_id"] = Value::String(call.person.value.clone());
    Ok(V1Request {
        method: Method::POST,
        path: "/events".to_string(),
        body: Some(body),
    })
}

/// The v1 event body of an event or view: `{name, data, type?, timestamp?, id?}`.
fn v1_event_body(call: &TrackCall) -> Option<Value> {
    let (event_type, name, data, timestamp) = match &call.operation {
        Operation::Track(event) => (None, event.name.as_str(), &event.data, event.timestamp),
        Operation::Page(view) => (Some("page"), view.name.as_str(), &view.data, call.timestamp),
        Operation::Screen(view) => (
            Some("screen"),
            view.name.as_str(),
            &view.data,
            call.timestamp,
        ),
        _ => return None,
    };
    let mut body = Map::new();
    if let Some(t) = event_type {
        body.insert("type".into(), t.into());
    }
    body.insert("name".into(), name.into());
    body.insert("data".into(), attributes_value(data));
    if let Some(ts) = timestamp {
        body.insert("timestamp".into(), ts.into());
    }
    if let Some(id) = call.event_id {
        body.insert("id".into(), id.to_string().into());
    }
    Some(Value::Object(body))
}

/// The Track v2 operation for a call (`/api/v2/entity` body, or one `batch` element).
pub fn v2_operation(call: &TrackCall) -> Result<Value, CioError> {
    let mut op = Map::new();
    op.insert("type".into(), "person".into());
    let action = match &call.operation {
        Operation::Identify(attributes) => {
            op.insert("attributes".into(), attributes_value(attributes));
            if let Some(ts) = call.timestamp {
                op.insert("timestamp".into(), ts.into());
            }
            "identify"
        }
        Operation::Delete => "delete",
        Operation::Track(event) => {
            op.insert("name".into(), event.name.as_str().into());
            op.insert("attributes".into(), attributes_value(&event.data));
            if let Some(ts) = event.timestamp {
                op.insert("timestamp".into(), ts.into());
            }
            if let Some(id) = call.event_id {
                op.insert("id".into(), id.to_string().into());
            }
            "event"
        }
        Operation::Page(view) | Operation::Screen(view) => {
            op.insert("name".into(), view.name.as_str().into());
            op.insert("attributes".into(), attributes_value(&view.data));
            if let Some(ts) = call.timestamp {
                op.insert("timestamp".into(), ts.into());
            }
            if let Some(id) = call.event_id {
                op.insert("id".into(), id.to_string().into());
            }
            if matches!(call.operation, Operation::Page(_)) {
                "page"
            } else {
                "screen"
            }
        }
        Operation::Suppress => "suppress",
        Operation::Unsuppress => "unsuppress",
        Operation::AddDevice(device) => {
            op.insert("device".into(), device_value("token", device));
            "add_device"
        }
        Operation::DeleteDevice(token) => {
            op.insert("device".into(), json!({"token": token}));
            "delete_device"
        }
        Operation::Merge { primary, secondary } => {
            op.insert("action".into(), "merge".into());
            op.insert("primary".into(), person_ref(primary));
            op.insert("secondary".into(), person_ref(secondary));
            return Ok(Value::Object(op));
        }
        Operation::Transactional(_) | Operation::Broadcast(_) => return Err(not_track()),
        Operation::Object(object) => return Ok(v2_object(object)),
        Operation::Segment { .. } => return Err(v1_only()),
    };
    op.insert("action".into(), action.into());
    op.insert("identifiers".into(), person_ref(&call.person));
    Ok(Value::Object(op))
}

/// An object operation: `identifiers` `{object_type_id, object_id}`, the identify's
/// `attributes`, and the people related as `cio_relationships`.
fn v2_object(object: &ObjectOp) -> Value {
    let mut op = Map::new();
    op.insert("type".into(), "object".into());
    op.insert("action".into(), object.action.as_str().into());
    op.insert(
        "identifiers".into(),
        json!({"object_type_id": object.object_type_id, "object_id": object.object_id}),
    );
    if object.action == ObjectAction::Identify {
        op.insert("attributes".into(), attributes_value(&object.attributes));
    }
    if !object.relationships.is_empty() {
        let related: Vec<Value> = object
            .relationships
            .iter()
            .map(|r| {
                let mut entry = Map::new();
                entry.insert("identifiers".into(), person_ref(&r.person));
                if let Some(attributes) = &r.attributes {
                    entry.insert(
                        "relationship_attributes".into(),
                        Value::Object(attributes.clone()),
                    );
                }
                Value::Object(entry)
            })
            .collect();
        op.insert("cio_relationships".into(), Value::Array(related));
    }
    Value::Object(op)
}

/// Whether a v2 pipeline sends the call by Track v1, on its own: v2 has no manual segments, and
/// an operation over v2's 32 KB fits v1's limits when v1 has the call (event data up to
/// 100000 bytes), instead of being refused.
pub fn by_v1_instead_of_v2(call: &TrackCall) -> bool {
    let data = match &call.operation {
        Operation::Segment { .. } => return true,
        Operation::Identify(attributes) => attributes,
        Operation::Track(event) => &event.data,
        Operation::Page(view) | Operation::Screen(view) => &view.data,
        // Only v2 has objects (an oversized one is refused by v2's own limit); the rest is small.
        _ => return false,
    };
    // Counting the data's bytes is cheap; the whole operation is built only when it may be big.
    counted_len(data.as_map()).saturating_add(1024) > MAX_V2_OPERATION_BYTES
        && v2_operation(call).is_ok_and(|op| json_len(&op) > MAX_V2_OPERATION_BYTES)
}

/// Serialized size of `value`, counted without building the bytes.
fn counted_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// Serialized size of a JSON value, as it goes on the wire.
pub fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Checks Customer.io's documented limits for a Track call (both API versions).
pub fn check_limits(call: &TrackCall) -> Result<(), CioError> {
    if let Operation::Object(object) = &call.operation {
        return check_object(object);
    }
    let viewable = matches!(
        call.operation,
        Operation::Track(_) | Operation::Page(_) | Operation::Screen(_)
    );
    if call.person.is_anonymous() && !viewable {
        return Err(not_anonymous());
    }
    check_identifier(
        &format!("identifiers.{}", call.person.kind),
        &call.person.value,
    )?;
    match &call.operation {
        Operation::Identify(attributes) => check_attributes(attributes),
        Operation::Track(event) => check_event(event),
        Operation::Page(view) | Operation::Screen(view) => {
            // The 100-byte event-name limit is documented for events; a view is named by its
            // path or screen, which is routinely longer, and the docs give no limit for it.
            if view.name.trim().is_empty() {
                return Err(CioError::invalid("a page or screen name must not be empty"));
            }
            check_data(&view.data)
        }
        Operation::AddDevice(device) => {
            if device.id.is_empty() {
                return Err(CioError::invalid("device id must not be empty"));
            }
            if !matches!(device.platform.as_str(), "ios" | "android") {
                return Err(CioError::invalid(format!(
                    "device platform must be ios or android, got {:?}",
                    device.platform
                )));
            }
            Ok(())
        }
        Operation::DeleteDevice(token) if token.is_empty() => {
            Err(CioError::invalid("device id must not be empty"))
        }
        Operation::Merge { primary, secondary } => {
            check_identifier(&format!("primary.{}", primary.kind), &primary.value)?;
            check_identifier(&format!("secondary.{}", secondary.kind), &secondary.value)
        }
        Operation::Transactional(_) | Operation::Broadcast(_) => Err(not_track()),
        Operation::Object(object) => check_object(object),
        Operation::Segment { .. }
        | Operation::Delete
        | Operation::Suppress
        | Operation::Unsuppress
        | Operation::DeleteDevice(_) => Ok(()),
    }
}

fn check_object(object: &ObjectOp) -> Result<(), CioError> {
    check_identifier("identifiers.object_id", &object.object_id)?;
    check_attributes(&object.attributes)?;
    for (i, related) in object.relationships.iter().enumerate() {
        check_identifier(
            &format!("cio_relationships.{i}.identifiers.{}", related.person.kind),
            &related.person.value,
        )?;
    }
    Ok(())
}

fn check_identifier(field: &str, value: &str) -> Result<(), CioError> {
    if value.is_empty() {
        return Err(CioError::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(CioError::invalid(format!(
            "{field} is {} bytes, Customer.io allows at most {MAX_IDENTIFIER_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

fn check_attributes(attributes: &Attributes) -> Result<(), CioError> {
    let map = attributes.as_map();
    if map.len() > MAX_ATTRIBUTES_PER_CALL {
        return Err(CioError::invalid(format!(
            "identify has {} attributes, Customer.io allows at most {MAX_ATTRIBUTES_PER_CALL} per call",
            map.len()
        )));
    }
    for (name, value) in map {
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(CioError::invalid(format!(
                "attribute name {:?} must be 1..={MAX_ATTRIBUTE_NAME_BYTES} bytes",
                truncate(name)
            )));
        }
        if STRUCTURED_ATTRIBUTES.contains(&name.as_str()) {
            continue;
        }
        let size = attribute_value_len(value);
        if size > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(CioError::invalid(format!(
                "attribute {:?} is {size} bytes, Customer.io allows at most {MAX_ATTRIBUTE_VALUE_BYTES}",
                truncate(name)
            )));
        }
    }
    Ok(())
}

/// The length Customer.io counts for an attribute value: a string's bytes, else its JSON.
pub fn attribute_value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        other => json_len(other),
    }
}

fn check_event(event: &Event) -> Result<(), CioError> {
    let name = event.name.as_str();
    if name.trim().is_empty() {
        return Err(CioError::invalid("event name must not be empty"));
    }
    if name.len() > MAX_EVENT_NAME_BYTES {
        return Err(CioError::invalid(format!(
            "event name is {} bytes, Customer.io allows at most {MAX_EVENT_NAME_BYTES}",
            name.len()
        )));
    }
    check_data(&event.data)
}

fn check_data(data: &Attributes) -> Result<(), CioError> {
    let size = json_len(&attributes_value(data));
    if size > MAX_EVENT_DATA_BYTES {
        return Err(CioError::invalid(format!(
            "event data is {size} bytes, Customer.io allows at most {MAX_EVENT_DATA_BYTES}"
        )));
    }
    Ok(())
}

fn truncate(name: &str) -> String {
    name.chars().take(32).collect()
}

/// The App API path of a channel, relative to the `.../v1` base.
pub fn send_path(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "/send/email",
        Channel::Push => "/send/push",
        Channel::Sms => "/send/sms",
        Channel::InApp => "/send/in_app",
        Channel::InboxMessage => "/send/inbox_message",
    }
}

/// The App API path that triggers a broadcast, relative to the `.../v1` base.
pub fn broadcast_path(trigger: &BroadcastTrigger) -> String {
    format!("/campaigns/{}/triggers", trigger.broadcast_id)
}

/// The App API send body: the request's fields, the resolved `transactional_message_id`, and
/// `identifiers` as exactly one of `id`, `email` or `cio_id`.
pub fn send_body(
    request: &TransactionalRequest,
    message_id: Option<&Value>,
) -> Result<Value, CioError> {
    let message_id = match (message_id, &request.template) {
        (Some(id), _) => Some(id.clone()),
        (None, TemplateRef::Id(id)) => Some(id.clone()),
        (None, TemplateRef::Named(name)) => {
            return Err(CioError::invalid(format!(
                "template {name:?} was not resolved to a transactional_message_id"
            )));
        }
        (None, TemplateRef::Inline) => None,
    };
    match &message_id {
        Some(Value::Number(_)) => {}
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(other) => {
            return Err(CioError::invalid(format!(
                "transactional_message_id must be a number or a trigger name, got {other}"
            )));
        }
        // Only email can be composed inline (`body`, `subject`, `from`); the other channels need
        // a template (App API `sendpush`, `sendsms`, `sendinapp`, `sendinboxmessage` require
        // transactional_message_id: "you cannot send a transactional in-app message without a
        // template").
        None if request.channel != Channel::Email => {
            return Err(CioError::invalid(format!(
                "a {} send needs a transactional_message_id",
                request.channel.as_str()
            )));
        }
        None => {}
    }
    check_identifier(
        &format!("identifiers.{}", request.identifiers.kind),
        &request.identifiers.value,
    )?;
    let mut body = request.body.clone();
    if let Some(id) = message_id {
        body.insert("transactional_message_id".into(), id);
    }
    body.insert("identifiers".into(), person_ref(&request.identifiers));
    Ok(Value::Object(body))
}

fn attributes_value(attributes: &Attributes) -> Value {
    Value::Object(attributes.as_map().clone())
}

fn person_ref(person: &PersonRef) -> Value {
    let mut map = Map::new();
    map.insert(person.kind.to_string(), Value::String(person.value.clone()));
    Value::Object(map)
}

/// `{<key>: token, platform, last_used?, attributes?}`; `key` is `id` (v1) or `token` (v2).
fn device_value(key: &str, device: &Device) -> Value {
    let mut out = Map::new();
    out.insert(key.into(), device.id.as_str().into());
    out.insert("platform".into(), device.platform.as_str().into());
    let mut attributes = device.data.as_map().clone();
    if let Some(last_used) = attributes.get("last_used").filter(|v| v.is_i64()).cloned() {
        attributes.remove("last_used");
        out.insert("last_used".into(), last_used);
    }
    if !attributes.is_empty() {
        out.insert("attributes".into(), Value::Object(attributes));
    }
    Value::Object(out)
}

fn v1_only() -> CioError {
    CioError::invalid("manual segments exist only in Track v1: /segments/{id}/add_customers")
}

fn v2_only() -> CioError {
    CioError::invalid("objects exist only in Track v2: send them with /entity or /batch")
}

fn not_anonymous() -> CioError {
    CioError::invalid("only events, page and screen views can be anonymous")
}

fn not_track() -> CioError {
    CioError::invalid("a transactional send or a broadcast is not a Track API call")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventName, ObjectOp, UserId, View};

    fn call(operation: Operation) -> TrackCall {
        TrackCall::new(UserId::parse("a/b c").unwrap(), operation)
    }

    fn naming(kind: &'static str, value: &str, operation: Operation) -> TrackCall {
        TrackCall {
            person: PersonRef {
                kind,
                value: value.into(),
            },
            ..call(operation)
        }
    }

    #[test]
    fn v1_names_a_person_by_shape_and_v2_by_key() {
        let cases = [
            ("id", "7", "/customers/7", json!({"id": "7"})),
            (
                "email",
                "a@example.com",
                "/customers/a%40example.com",
                json!({"email": "a@example.com"}),
            ),
            (
                "cio_id",
                "f00",
                "/customers/cio_f00",
                json!({"cio_id": "f00"}),
            ),
        ];
        for (kind, value, path, identifiers) in cases {
            let c = naming(kind, value, Operation::Delete);
            assert_eq!(v1_request(&c).unwrap().path, path);
            assert_eq!(v2_operation(&c).unwrap()["identifiers"], identifiers);
        }
    }

    #[test]
    fn identify_and_page_carry_the_ordering_timestamp() {
        let identify = TrackCall {
            timestamp: Some(1_700_000_000),
            ..call(Operation::Identify(Attributes::default()))
        };
        assert_eq!(
            v1_request(&identify).unwrap().body.unwrap()["_timestamp"],
            1_700_000_000
        );
        assert_eq!(v2_operation(&identify).unwrap()["timestamp"], 1_700_000_000);
        let page = TrackCall {
            timestamp: Some(1_700_000_001),
            ..call(Operation::Page(View {
                name: "/pricing".into(),
                data: Attributes::default(),
            }))
        };
        assert_eq!(
            v1_request(&page).unwrap().body.unwrap()["timestamp"],
            1_700_000_001
        );
        assert_eq!(v2_operation(&page).unwrap()["timestamp"], 1_700_000_001);
        let untimed = call(Operation::Identify(Attributes::default()));
        assert!(v2_operation(&untimed).unwrap().get("timestamp").is_none());
    }

    #[test]
    fn anonymous_events_and_views_carry_the_anonymous_id() {
        let anonymous = UserId::parse("anon-1").unwrap();
        let view = View {
            name: "Home".into(),
            data: Attributes::default(),
        };
        let screen = TrackCall {
            person: PersonRef::anonymous(&anonymous),
            timestamp: Some(1_700_000_002),
            ..TrackCall::new(anonymous.clone(), Operation::Screen(view))
        };
        let v1 = v1_request(&screen).unwrap();
        assert_eq!((v1.method, v1.path.as_str()), (Method::POST, "/events"));
        assert_eq!(
            v1.body.unwrap(),
            json!({"type": "screen", "name": "Home", "data": {}, "anonymous_id": "anon-1",
                "timestamp": 1_700_000_002})
        );
        assert_eq!(
            v2_operation(&screen).unwrap(),
            json!({"type": "person", "action": "screen", "identifiers": {"anonymous_id": "anon-1"},
                "name": "Home", "attributes": {}, "timestamp": 1_700_000_002})
        );
        let delete = TrackCall {
            person: PersonRef::anonymous(&anonymous),
            ..TrackCall::new(anonymous, Operation::Delete)
        };
        assert!(matches!(v1_request(&delete), Err(CioError::Invalid(_))));
        assert!(matches!(check_limits(&delete), Err(CioError::Invalid(_))));
    }

    #[test]
    fn an_object_is_a_v2_object_operation_with_its_relationships() {
        let op = ObjectOp::parse(
            Some(&json!("1")),
            Some(&json!("acme")),
            &json!({"action": "identify", "attributes": {"name": "Acme"},
                "relationships": [{"identifiers": {"email": "a@example.com"},
                    "relationship_attributes": {"role": "admin"}}]}),
        )
        .unwrap();
        let key = UserId::parse("object:1:acme").unwrap();
        let object = TrackCall::new(key, Operation::Object(op));
        assert_eq!(
            v2_operation(&object).unwrap(),
            json!({"type": "object", "action": "identify",
                "identifiers": {"object_type_id": "1", "object_id": "acme"},
                "attributes": {"name": "Acme"},
                "cio_relationships": [{"identifiers": {"email": "a@example.com"},
                    "relationship_attributes": {"role": "admin"}}]})
        );
        assert!(check_limits(&object).is_ok());
        assert!(matches!(v1_request(&object), Err(CioError::Invalid(_))));
    }

    #[test]
    fn a_segment_change_is_a_v1_request_for_one_person_by_id_type() {
        let add = naming(
            "email",
            "a@example.com",
            Operation::Segment {
                segment_id: 7,
                add: true,
            },
        );
        let r = v1_request(&add).unwrap();
        assert_eq!(
            (r.method, r.path.as_str()),
            (Method::POST, "/segments/7/add_customers?id_type=email")
        );
        assert_eq!(r.body.unwrap(), json!({"ids": ["a@example.com"]}));
        assert!(v2_operation(&add).is_err());
    }

    #[test]
    fn an_operation_too_big_for_v2_goes_by_v1_when_v1_takes_it() {
        let event = |bytes: usize| {
            let mut data = Attributes::default();
            data.insert("blob", "x".repeat(bytes));
            Operation::Track(Event {
                name: EventName::parse("e").unwrap(),
                data,
                timestamp: None,
            })
        };
        assert!(!by_v1_instead_of_v2(&call(event(1000))));
        let big = call(event(40 * 1024));
        assert!(by_v1_instead_of_v2(&big));
        assert!(
            check_limits(&big).is_ok(),
            "within v1's 100000 bytes of event data"
        );
        assert!(!by_v1_instead_of_v2(&call(Operation::Delete)));
    }

    #[test]
    fn path_ids_are_percent_encoded() {
        let r = v1_request(&call(Operation::Delete)).unwrap();
        assert_eq!(r.path, "/customers/a%2Fb%20c");
        assert_eq!(encode_segment("é+x~y").unwrap(), "%C3%A9%2Bx~y");
        assert!(encode_segment("..").is_err());
    }

    #[test]
    fn v2_shapes_follow_the_docs() {
        let mut data = Attributes::default();
        data.insert("last_used", 17);
        data.insert("app_version", "1.2");
        let op = v2_operation(&call(Operation::AddDevice(Device {
            id: "tok".into(),
            platform: "ios".into(),
            data,
        })))
        .unwrap();
        assert_eq!(
            op,
            json!({"type": "person", "action": "add_device", "identifiers": {"id": "a/b c"},
                "device": {"token": "tok", "platform": "ios", "last_used": 17,
                    "attributes": {"app_version": "1.2"}}})
        );
        let merge = v2_operation(&call(Operation::Merge {
            primary: PersonRef {
                kind: "id",
                value: "1".into(),
            },
            secondary: PersonRef {
                kind: "email",
                value: "x@y.z".into(),
            },
        }))
        .unwrap();
        assert!(merge.get("identifiers").is_none());
        assert_eq!(merge["secondary"], json!({"email": "x@y.z"}));
    }

    #[test]
    fn limits_are_checked() {
        let event = |name: &str| Event {
            name: EventName::parse(name).unwrap(),
            data: Attributes::default(),
            timestamp: None,
        };
        assert!(check_limits(&call(Operation::Track(event("ok")))).is_ok());
        let mut data = Attributes::default();
        data.insert("big", "x".repeat(MAX_EVENT_DATA_BYTES));
        let big = Event {
            data,
            ..event("ok")
        };
        assert!(matches!(
            check_limits(&call(Operation::Track(big))),
            Err(CioError::Invalid(_))
        ));
        let mut attrs = Attributes::default();
        attrs.insert("v", "x".repeat(1001));
        assert!(check_limits(&call(Operation::Identify(attrs))).is_err());
    }
}
