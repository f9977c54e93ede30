//! The transport-free half of the inbound Pipelines API: one call of Customer.io's (or
//! Segment's) source spec becomes the envelope it means (docs/reference.md §4), or an error
//! naming the call's field that prevents it.

use crate::domain::{MessageType, ParseError};
use serde_json::{Map, Value, json};

/// The calls of the Pipelines API, each with a route `POST /v1/<call>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

/// The object type a group becomes when its traits name none.
const DEFAULT_OBJECT_TYPE_ID: &str = "1";

impl CallKind {
    pub const ALL: [CallKind; 6] = [
        Self::Identify,
        Self::Track,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// The envelope type the call becomes.
    pub fn envelope_type(self) -> MessageType {
        match self {
            Self::Identify => MessageType::Identify,
            Self::Track => MessageType::Track,
            Self::Page => MessageType::Page,
            Self::Screen => MessageType::Screen,
            Self::Group => MessageType::Object,
            Self::Alias => MessageType::Merge,
        }
    }
}

/// Which call `call` is: the route's (`route`), or on `/v1/batch` (`None`) its own `type`.
pub fn call_kind(call: &Value, route: Option<CallKind>) -> Result<CallKind, ParseError> {
    if let Some(kind) = route {
        return Ok(kind);
    }
    match call.get("type") {
        Some(Value::String(s)) => CallKind::parse(s).ok_or_else(|| {
            ParseError::new(
                "type",
                format!("unknown call {s:?}: identify, track, page, screen, group or alias"),
            )
        }),
        Some(_) => Err(ParseError::new("type", "must be a string")),
        None => Err(ParseError::new("type", "is required in a batch")),
    }
}

/// The envelope of one call; not yet validated as an envelope (`Publisher::prepare` does).
pub fn envelope_of(call: &Value, route: Option<CallKind>) -> Result<Value, ParseError> {
    let obj = call
        .as_object()
        .ok_or_else(|| ParseError::new("", "a call must be a JSON object"))?;
    let mut envelope = match call_kind(call, route)? {
        CallKind::Identify => identify(obj)?,
        CallKind::Track => track(obj)?,
        CallKind::Page => page(obj)?,
        CallKind::Screen => screen(obj)?,
        CallKind::Group => group(obj)?,
        CallKind::Alias => alias(obj)?,
    };
    if let Some(message_id) = present(obj, "messageId") {
        // The gateway de-duplicates on (user, type, correlationId): an SDK's retried batch
        // is delivered once.
        envelope.insert("correlationId".into(), message_id.clone());
    }
    if let Some(timestamp) = timestamp_ms(obj)? {
        envelope.insert("timestamp".into(), timestamp.into());
    }
    Ok(Value::Object(envelope))
}

/// identify → identify: the traits are the attributes; an `anonymousId` beside the `userId`
/// lets Customer.io merge that visitor's activity into the person.
fn identify(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let mut envelope = of_user("identify", required_user(obj, CallKind::Identify)?);
    if let Some(anonymous_id) = present(obj, "anonymousId") {
        envelope.insert("anonymousId".into(), anonymous_id.clone());
    }
    envelope.insert("payload".into(), object_or_empty(obj, "traits")?.into());
    Ok(envelope)
}

/// track → track: `event` is the name, `properties` the data.
fn track(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let mut payload = Map::new();
    payload.insert("name".into(), required_str(obj, "event")?.into());
    add_data(&mut payload, obj)?;
    event_of("track", obj, payload)
}

/// page → page: the envelope needs the page's URL as its `path`.
fn page(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let mut payload = Map::new();
    payload.insert("path".into(), page_url(obj)?.into());
    add_data(&mut payload, obj)?;
    // The page's name would be lost otherwise: it rides along in the data.
    if let Some(name) = present(obj, "name")
        && let Value::Object(data) = payload
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()))
    {
        data.entry("name").or_insert_with(|| name.clone());
    }
    event_of("page", obj, payload)
}

/// screen → screen: `name` is the screen's name, `properties` the data.
fn screen(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let mut payload = Map::new();
    payload.insert("name".into(), required_str(obj, "name")?.into());
    add_data(&mut payload, obj)?;
    event_of("screen", obj, payload)
}

/// group → an `object` identify: the group is the object, the person (if any) related to it,
/// with `traits.relationshipAttributes` describing the relationship. Without a `userId` the
/// call only updates the group ("you can send a group call without a userId").
fn group(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let object_id = present(obj, "groupId")
        .filter(|v| v.is_string() || v.is_number())
        .map(id_text)
        .ok_or_else(|| ParseError::new("groupId", "is required (a string or a number)"))?;
    let mut attributes = object_or_empty(obj, "traits")?;
    let object_type_id = take_object_type_id(&mut attributes);
    let relationship_attributes = attributes.remove("relationshipAttributes");
    let relationships = match present(obj, "userId") {
        Some(user) => {
            let mut related = json!({"identifiers": {"id": id_text(user)}});
            if let Some(described) = relationship_attributes.filter(Value::is_object) {
                related["relationship_attributes"] = described;
            }
            vec![related]
        }
        None => Vec::new(),
    };
    let mut envelope = Map::new();
    envelope.insert("type".into(), "object".into());
    envelope.insert("objectTypeId".into(), object_type_id);
    envelope.insert("objectId".into(), object_id.into());
    envelope.insert(
        "payload".into(),
        json!({
            "action": "identify",
            "attributes": attributes,
            "relationships": relationships,
        }),
    );
    Ok(envelope)
}

/// alias → merge: `userId` stays, `previousId` is merged into it.
fn alias(obj: &Map<String, Value>) -> Result<Map<String, Value>, ParseError> {
    let user = required_user(obj, CallKind::Alias)?;
    let previous = present(obj, "previousId")
        .filter(|v| v.is_string() || v.is_number())
        .ok_or_else(|| ParseError::new("previousId", "is required: the id merged into userId"))?;
    let mut envelope = of_user("merge", user);
    envelope.insert(
        "payload".into(),
        json!({"primary": {"id": id_text(user)}, "secondary": {"id": id_text(previous)}}),
    );
    Ok(envelope)
}

/// An event (track, page, screen) of the `userId`, or else an anonymous one of the
/// `anonymousId`.
fn event_of(
    kind: &str,
    obj: &Map<String, Value>,
    payload: Map<String, Value>,
) -> Result<Map<String, Value>, ParseError> {
    let mut envelope = match (present(obj, "userId"), present(obj, "anonymousId")) {
        (Some(user), _) => of_user(kind, user),
        (None, Some(anonymous_id)) => {
            let mut envelope = Map::new();
            envelope.insert("type".into(), kind.into());
            envelope.insert("anonymousId".into(), anonymous_id.clone());
            envelope
        }
        (None, None) => {
            return Err(ParseError::new("userId", "or anonymousId is required"));
        }
    };
    envelope.insert("payload".into(), payload.into());
    Ok(envelope)
}

fn of_user(kind: &str, user: &Value) -> Map<String, Value> {
    let mut envelope = Map::new();
    envelope.insert("type".into(), kind.into());
    envelope.insert("userId".into(), user.clone());
    envelope
}

/// The `userId` of a call that only a known person can make.
fn required_user(obj: &Map<String, Value>, kind: CallKind) -> Result<&Value, ParseError> {
    present(obj, "userId").ok_or_else(|| {
        ParseError::new(
            "userId",
            format!(
                "is required for {}: Customer.io takes only track, page and screen from an \
                 anonymousId alone",
                kind.as_str()
            ),
        )
    })
}

/// A field that is there and not `null`.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ParseError> {
    match present(obj, key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ParseError::new(key, "must not be empty")),
        Some(_) => Err(ParseError::new(key, "must be a string")),
        None => Err(ParseError::new(key, "is required")),
    }
}

/// An object field, `{}` when absent.
fn object_or_empty(obj: &Map<String, Value>, key: &str) -> Result<Map<String, Value>, ParseError> {
    match present(obj, key) {
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ParseError::new(key, "must be an object")),
        None => Ok(Map::new()),
    }
}

/// `properties` as the envelope's `data`, when there are any.
fn add_data(payload: &mut Map<String, Value>, obj: &Map<String, Value>) -> Result<(), ParseError> {
    if present(obj, "properties").is_some() {
        payload.insert("data".into(), object_or_empty(obj, "properties")?.into());
    }
    Ok(())
}

/// The page's URL: `properties.url`, else `context.page.url` (what browser SDKs fill in),
/// else the page's `name`.
fn page_url(obj: &Map<String, Value>) -> Result<String, ParseError> {
    let call = Value::Object(obj.clone());
    ["/properties/url", "/context/page/url", "/name"]
        .into_iter()
        .filter_map(|pointer| call.pointer(pointer).and_then(Value::as_str))
        .find(|url| !url.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            ParseError::new(
                "properties.url",
                "is required for a page view (or context.page.url, or name)",
            )
        })
}

/// Removes the group's object type from its traits: `objectTypeId`, else `object_type_id`,
/// else [`DEFAULT_OBJECT_TYPE_ID`].
fn take_object_type_id(traits: &mut Map<String, Value>) -> Value {
    let camel = traits.remove("objectTypeId");
    let snake = traits.remove("object_type_id");
    camel
        .or(snake)
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| DEFAULT_OBJECT_TYPE_ID.into())
}

/// An id as text: the SDKs allow numbers where Customer.io's identifiers are strings.
fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The call's `timestamp` (ISO 8601 / RFC 3339, as the SDKs send it) in ms since the epoch.
fn timestamp_ms(obj: &Map<String, Value>) -> Result<Option<i64>, ParseError> {
    let Some(value) = present(obj, "timestamp") else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
        .filter(|ms| *ms >= 0)
        .map(Some)
        .ok_or_else(|| {
            ParseError::new(
                "timestamp",
                "must be an ISO 8601 date and time with a zone, after 1970",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Envelope;

    fn batch_call(call: Value) -> Value {
        envelope_of(&call, None).unwrap()
    }

    /// The mapped envelope also parses as one.
    fn parses(envelope: &Value) -> Envelope {
        Envelope::from_value(envelope).unwrap_or_else(|e| panic!("{envelope}: {e}"))
    }

    #[test]
    fn identify_carries_the_traits_and_the_anonymous_id() {
        let envelope = batch_call(json!({"type": "identify", "userId": "42",
            "anonymousId": "anon-1", "traits": {"email": "a@example.com"},
            "messageId": "m-1", "timestamp": "2026-12-07T10:00:00.250Z",
            "context": {"library": {"name": "x"}}}));
        assert_eq!(
            envelope,
            json!({"type": "identify", "userId": "42", "anonymousId": "anon-1",
                "payload": {"email": "a@example.com"}, "correlationId": "m-1",
                "timestamp": 1_796_637_600_250_i64})
        );
        assert_eq!(parses(&envelope).anonymous_id.unwrap().as_str(), "anon-1");
        let bare = batch_call(json!({"type": "identify", "userId": 7}));
        assert_eq!(
            bare,
            json!({"type": "identify", "userId": 7, "payload": {}})
        );
    }

    #[test]
    fn track_names_the_event_and_its_properties_are_the_data() {
        let envelope = batch_call(json!({"type": "track", "userId": "42", "event": "signup",
            "properties": {"plan": "pro"}}));
        assert_eq!(
            envelope,
            json!({"type": "track", "userId": "42",
                "payload": {"name": "signup", "data": {"plan": "pro"}}})
        );
        parses(&envelope);
        let e = envelope_of(&json!({"type": "track", "userId": "42"}), None).unwrap_err();
        assert_eq!(e.field, "event");
    }

    #[test]
    fn page_takes_its_path_from_the_url_and_keeps_its_name() {
        let from_properties = batch_call(json!({"type": "page", "userId": "42", "name": "Pricing",
            "properties": {"url": "https://example.com/pricing", "referrer": "r"}}));
        assert_eq!(
            from_properties,
            json!({"type": "page", "userId": "42", "payload": {"path": "https://example.com/pricing",
                "data": {"url": "https://example.com/pricing", "referrer": "r", "name": "Pricing"}}})
        );
        parses(&from_properties);
        let from_context = batch_call(json!({"type": "page", "userId": "42",
            "context": {"page": {"url": "https://example.com/a"}}}));
        assert_eq!(from_context["payload"]["path"], "https://example.com/a");
        let from_name = batch_call(json!({"type": "page", "userId": "42", "name": "Home"}));
        assert_eq!(from_name["payload"]["path"], "Home");
        let e = envelope_of(&json!({"type": "page", "userId": "42"}), None).unwrap_err();
        assert_eq!(e.field, "properties.url");
    }

    #[test]
    fn screen_is_named() {
        let envelope = batch_call(json!({"type": "screen", "userId": "42", "name": "Checkout",
            "properties": {"step": 2}}));
        assert_eq!(
            envelope,
            json!({"type": "screen", "userId": "42",
                "payload": {"name": "Checkout", "data": {"step": 2}}})
        );
        parses(&envelope);
        let e = envelope_of(&json!({"type": "screen", "userId": "42"}), None).unwrap_err();
        assert_eq!(e.field, "name");
    }

    #[test]
    fn group_is_an_object_related_to_the_person() {
        let envelope = batch_call(json!({"type": "group", "userId": "42", "groupId": "acme",
            "traits": {"name": "Acme", "objectTypeId": "2"}}));
        assert_eq!(
            envelope,
            json!({"type": "object", "objectTypeId": "2", "objectId": "acme",
                "payload": {"action": "identify", "attributes": {"name": "Acme"},
                    "relationships": [{"identifiers": {"id": "42"}}]}})
        );
        assert_eq!(parses(&envelope).user.as_str(), "object:2:acme");
        let snake = batch_call(json!({"type": "group", "userId": "42", "groupId": 9,
            "traits": {"object_type_id": 3}}));
        assert_eq!(
            (&snake["objectTypeId"], &snake["objectId"]),
            (&json!(3), &json!("9"))
        );
        assert_eq!(snake["payload"]["attributes"], json!({}));
        let default = batch_call(json!({"type": "group", "userId": "42", "groupId": "g"}));
        assert_eq!(default["objectTypeId"], "1");
        parses(&default);
        let e = envelope_of(&json!({"type": "group", "userId": "42"}), None).unwrap_err();
        assert_eq!(e.field, "groupId");
        let unrelated = batch_call(json!({"type": "group", "groupId": "g",
            "traits": {"plan": "pro"}}));
        assert_eq!(unrelated["payload"]["relationships"], json!([]));
        parses(&unrelated);
        let described = batch_call(json!({"type": "group", "userId": "42", "groupId": "g",
            "traits": {"relationshipAttributes": {"role": "admin"}}}));
        assert_eq!(
            described["payload"]["relationships"][0]["relationship_attributes"]["role"],
            "admin"
        );
        assert_eq!(described["payload"]["attributes"], json!({}));
    }

    #[test]
    fn alias_is_a_merge_of_the_previous_id_into_the_user() {
        let envelope = batch_call(json!({"type": "alias", "userId": "42", "previousId": "old-42"}));
        assert_eq!(
            envelope,
            json!({"type": "merge", "userId": "42",
                "payload": {"primary": {"id": "42"}, "secondary": {"id": "old-42"}}})
        );
        parses(&envelope);
        let e = envelope_of(&json!({"type": "alias", "userId": "42"}), None).unwrap_err();
        assert_eq!(e.field, "previousId");
    }

    #[test]
    fn without_a_user_id_events_are_anonymous_and_the_rest_cannot_be_expressed() {
        for (call, path) in [
            (json!({"type": "track", "event": "viewed"}), "/payload/name"),
            (json!({"type": "page", "name": "Home"}), "/payload/path"),
            (json!({"type": "screen", "name": "Home"}), "/payload/name"),
        ] {
            let mut call = call;
            call["anonymousId"] = json!("anon-1");
            let envelope = batch_call(call);
            assert_eq!(envelope["anonymousId"], "anon-1");
            assert!(envelope.get("userId").is_none());
            assert!(envelope.pointer(path).is_some(), "{envelope}");
            assert!(parses(&envelope).person.is_anonymous());
        }
        for kind in ["identify", "alias"] {
            let call = json!({"type": kind, "anonymousId": "anon-1", "groupId": "g",
                "previousId": "p"});
            let e = envelope_of(&call, None).unwrap_err();
            assert_eq!(e.field, "userId", "{kind}");
            assert!(e.reason.contains(kind), "{e}");
            assert!(e.reason.contains("anonymousId"), "{e}");
        }
        let e = envelope_of(&json!({"type": "track", "event": "e"}), None).unwrap_err();
        assert_eq!(e.field, "userId");
    }

    #[test]
    fn the_route_decides_the_kind_and_a_batch_call_names_its_own() {
        let call = json!({"type": "identify", "userId": "42", "event": "signup"});
        let on_track_route = envelope_of(&call, Some(CallKind::Track)).unwrap();
        assert_eq!(on_track_route["type"], "track");
        let untyped = json!({"userId": "42", "event": "signup"});
        assert_eq!(envelope_of(&untyped, None).unwrap_err().field, "type");
        let unknown = json!({"type": "teleport", "userId": "42"});
        let e = envelope_of(&unknown, None).unwrap_err();
        assert!(e.reason.contains("teleport"), "{e}");
        assert_eq!(envelope_of(&json!([1]), None).unwrap_err().field, "");
    }

    #[test]
    fn a_timestamp_must_be_an_rfc3339_date() {
        let with_offset = batch_call(json!({"type": "track", "userId": "1", "event": "e",
            "timestamp": "1970-01-01T01:00:01+01:00"}));
        assert_eq!(with_offset["timestamp"], 1000);
        for bad in [
            json!("yesterday"),
            json!(1764115200000_i64),
            json!("1969-12-31T23:59:59Z"),
        ] {
            let call = json!({"type": "track", "userId": "1", "event": "e", "timestamp": bad});
            assert_eq!(envelope_of(&call, None).unwrap_err().field, "timestamp");
        }
    }

    #[test]
    fn every_kind_has_a_route_name_and_an_envelope_type() {
        for kind in CallKind::ALL {
            assert_eq!(CallKind::parse(kind.as_str()), Some(kind));
            let _ = kind.envelope_type().route();
        }
    }
}
