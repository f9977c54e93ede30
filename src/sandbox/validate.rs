//! Body validation against Customer.io's documented shapes and limits (Track API OpenAPI:
//! `/api/v1/...` request bodies, the v2 `person_*` schemas; App API `sendemail`, `sendpush`,
//! `sendsms`; the "Limits" table: ids and attribute names 150 bytes, attribute values 1000 bytes,
//! 300 attributes per call, event names 100 bytes, event data 100000 bytes, v2 operations 32 KB,
//! v2 batches 500 KB).
//!
//! Where the documentation is silent the sandbox is strict rather than lenient, so that what it
//! accepts Customer.io accepts too: unknown v2 actions, malformed event ids, and wrong JSON types
//! are 400s.

use crate::domain::limits::{
    MAX_ATTRIBUTE_NAME_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES_PER_CALL,
    MAX_EVENT_NAME_BYTES, MAX_IDENTIFIER_BYTES, MAX_SEGMENT_IDS, STRUCTURED_ATTRIBUTES,
};
use serde_json::{Map, Value};

/// "Event Data | 100000 bytes".
pub const MAX_EVENT_DATA_BYTES: usize = 100_000;

/// Why a body (or one v2 operation) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: "invalid",
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn required(field: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            status: 400,
            reason: "required",
            message: format!("{field} is required"),
            field,
        }
    }

    pub(crate) fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 413,
            reason: "too_large",
            field: field.into(),
            message: message.into(),
        }
    }
}

type Checked<T> = Result<T, Rejection>;

/// What one accepted operation is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct OpInfo {
    pub user: Option<String>,
    pub action: String,
    pub event_id: Option<String>,
    /// The `anonymous_id` of an anonymous event, page or screen view.
    pub anonymous_id: Option<String>,
    /// The `anonymous_id` attribute of an identify: the anonymous activity to merge.
    pub merges: Option<String>,
    /// An object operation's object: `<object_type_id>:<object_id>`, or its `cio_object_id`.
    pub object: Option<String>,
}

impl OpInfo {
    pub(crate) fn new(user: Option<String>, action: &str, event_id: Option<String>) -> Self {
        Self {
            user,
            action: action.to_string(),
            event_id,
            ..Self::default()
        }
    }
}

/// The `anonymous_id` attribute of identify attributes, if it is a non-empty string.
pub(crate) fn merged_anonymous_id(attributes: Option<&Map<String, Value>>) -> Option<String> {
    attributes?
        .get("anonymous_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(crate) fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Parses a JSON object body; an empty body is `{}` when `empty_ok`.
pub(crate) fn object_body(bytes: &[u8], empty_ok: bool) -> Checked<Map<String, Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(Map::new())
        } else {
            Err(Rejection::invalid("", "request body is required"))
        };
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::invalid("", "request body must be a JSON object")),
        Err(e) => Err(Rejection::invalid("", format!("invalid JSON: {e}"))),
    }
}

/// A person identifier value: a non-empty string (a number is accepted for `id`) of at most
/// 150 bytes.
pub(crate) fn identifier(field: &str, value: &Value) -> Checked<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if field.ends_with("id") => n.to_string(),
        _ => {
            return Err(Rejection::invalid(
                field,
                format!("{field} must be a string"),
            ));
        }
    };
    if text.is_empty() {
        return Err(Rejection::invalid(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if text.len() > MAX_IDENTIFIER_BYTES {
        return Err(Rejection::invalid(
            field,
            format!(
                "{field} is {} bytes, at most {MAX_IDENTIFIER_BYTES} allowed",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// An identifiers object naming exactly one of `allowed`; returns its value.
pub(crate) fn person(field: &str, value: Option<&Value>, allowed: &[&str]) -> Checked<String> {
    person_named(field, value, allowed).map(|(_, value)| value)
}

/// An identifiers object naming exactly one of `allowed`; returns its key and value.
fn person_named(field: &str, value: Option<&Value>, allowed: &[&str]) -> Checked<(String, String)> {
    let Some(value) = value else {
        return Err(Rejection::required(field));
    };
    let Some(map) = value.as_object() else {
        return Err(Rejection::invalid(
            field,
            format!("{field} must be an object"),
        ));
    };
    if let Some(other) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Rejection::invalid(
            format!("{field}.{other}"),
            format!("{field} takes one of {}", allowed.join(", ")),
        ));
    }
    match map.len() {
        1 => {
            let (key, value) = map.iter().next().expect("one entry");
            Ok((key.clone(), identifier(&format!("{field}.{key}"), value)?))
        }
        0 => Err(Rejection::invalid(
            field,
            format!("{field} must name one of {}", allowed.join(", ")),
        )),
        _ => Err(Rejection::invalid(
            field,
            format!("{field} must name exactly one identifier, not several"),
        )),
    }
}

/// The id of a person in a v1 path (already percent-decoded).
pub(crate) fn path_identifier(id: &str) -> Checked<String> {
    identifier("identifier", &Value::String(id.to_string()))
}

/// Person attributes: at most 300, names 1..=150 bytes, values at most 1000 bytes (a string's
/// bytes, otherwise its JSON). Structured reserved attributes (`cio_relationships`,
/// `cio_subscription_preferences`) are exempt from the value size.
pub(crate) fn attributes(field: &str, map: &Map<String, Value>) -> Checked<()> {
    if map.len() > MAX_ATTRIBUTES_PER_CALL {
        return Err(Rejection::invalid(
            field,
            format!(
                "{} attributes, at most {MAX_ATTRIBUTES_PER_CALL} per call",
                map.len()
            ),
        ));
    }
    for (name, value) in map {
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(Rejection::invalid(
                field,
                format!("attribute names must be 1..={MAX_ATTRIBUTE_NAME_BYTES} bytes"),
            ));
        }
        if STRUCTURED_ATTRIBUTES.contains(&name.as_str()) {
            continue;
        }
        let size = match value {
            Value::String(s) => s.len(),
            other => json_len(other),
        };
        if size > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(Rejection::invalid(
                join(field, name),
                format!("value is {size} bytes, at most {MAX_ATTRIBUTE_VALUE_BYTES} allowed"),
            ));
        }
    }
    Ok(())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn optional_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
) -> Checked<Option<&'a Map<String, Value>>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Rejection::invalid(key, format!("{key} must be an object"))),
    }
}

fn optional_integer(map: &Map<String, Value>, key: &str) -> Checked<()> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.is_i64() || v.is_u64() => Ok(()),
        Some(_) => Err(Rejection::invalid(
            key,
            format!("{key} must be a unix timestamp"),
        )),
    }
}

fn required_string<'a>(map: &'a Map<String, Value>, key: &str) -> Checked<&'a str> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(Rejection::invalid(key, format!("{key} must not be empty"))),
        Some(Value::Null) | None => Err(Rejection::required(key)),
        Some(_) => Err(Rejection::invalid(key, format!("{key} must be a string"))),
    }
}

/// An event's `id`: a ULID ("A ULID we use to deduplicate events").
fn event_id(map: &Map<String, Value>) -> Checked<Option<String>> {
    match map.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ulid::Ulid::from_string(s).is_ok() => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::invalid("id", "id must be a ULID")),
    }
}

/// Name, id, timestamp and properties of an event or page view (v1 and v2 share the rules;
/// v1 names properties `data`, v2 `attributes`).
fn event_common(map: &Map<String, Value>, kind: &str, data_key: &str) -> Checked<Option<String>> {
    let name = required_string(map, "name")?;
    // The 100-byte limit is documented for event names; a page or screen view is named by its
    // path or screen, for which no limit is given.
    if kind == "event" && name.len() > MAX_EVENT_NAME_BYTES {
        return Err(Rejection::invalid(
            "name",
            format!(
                "name is {} bytes, at most {MAX_EVENT_NAME_BYTES} allowed",
                name.len()
            ),
        ));
    }
    optional_integer(map, "timestamp")?;
    if let Some(data) = optional_object(map, data_key)? {
        let size = json_len(&Value::Object(data.clone()));
        if size > MAX_EVENT_DATA_BYTES {
            return Err(Rejection::too_large(
                data_key,
                format!("{data_key} is {size} bytes, at most {MAX_EVENT_DATA_BYTES} allowed"),
            ));
        }
    }
    event_id(map)
}

/// `POST /customers/{id}/events` and `POST /events`: returns the action and the event id.
pub(crate) fn v1_event(
    map: &Map<String, Value>,
    anonymous: bool,
) -> Checked<(String, Option<String>)> {
    let kind = match map.get("type") {
        None | Some(Value::Null) => "event",
        Some(Value::String(t)) if matches!(t.as_str(), "event" | "page" | "screen") => t.as_str(),
        Some(_) => {
            return Err(Rejection::invalid(
                "type",
                "type must be event, page or screen",
            ));
        }
    };
    if anonymous {
        match map.get("anonymous_id") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => {
                return Err(Rejection::invalid(
                    "anonymous_id",
                    "anonymous_id must be a string",
                ));
            }
        }
    }
    let id = event_common(map, kind, "data")?;
    let action = if anonymous {
        "anonymous_event".to_string()
    } else {
        kind.to_string()
    };
    Ok((action, id))
}

fn device_common(device: &Map<String, Value>, token_key: &str) -> Checked<()> {
    required_string(device, token_key).map_err(|e| within("device", e))?;
    match device.get("platform") {
        Some(Value::String(p)) if matches!(p.as_str(), "ios" | "android") => {}
        Some(_) => {
            return Err(Rejection::invalid(
                "device.platform",
                "device.platform must be ios or android",
            ));
        }
        None => return Err(Rejection::required("device.platform")),
    }
    optional_integer(device, "last_used").map_err(|e| within("device", e))?;
    optional_object(device, "attributes").map_err(|e| within("device", e))?;
    Ok(())
}

fn within(parent: &str, mut e: Rejection) -> Rejection {
    e.field = join(parent, &e.field);
    e.message = format!("{parent}.{}", e.message);
    e
}

fn device_object(map: &Map<String, Value>) -> Checked<&Map<String, Value>> {
    match map.get("device") {
        Some(Value::Object(d)) => Ok(d),
        None | Some(Value::Null) => Err(Rejection::required("device")),
        Some(_) => Err(Rejection::invalid("device", "device must be an object")),
    }
}

/// `PUT /customers/{id}/devices`: `{"device": {"id", "platform", "last_used"?, "attributes"?}}`.
pub(crate) fn v1_device(map: &Map<String, Value>) -> Checked<()> {
    device_common(device_object(map)?, "id")
}

/// `POST /merge_customers`: returns the primary and secondary identifier values.
pub(crate) fn merge(map: &Map<String, Value>) -> Checked<(String, String)> {
    const KINDS: &[&str] = &["id", "email", "cio_id"];
    Ok((
        person("primary", map.get("primary"), KINDS)?,
        person("secondary", map.get("secondary"), KINDS)?,
    ))
}

/// A manual segment change's `{"ids": [...]}` for `id_type` (`id`, `email` or `cio_id`):
/// returns the people it names. "We'll ignore values in the ids array that don't match the
/// id_type parameter": an email-typed value without `@` is left out, as Customer.io does.
pub(crate) fn segment_ids(map: &Map<String, Value>, id_type: &str) -> Checked<Vec<String>> {
    if !matches!(id_type, "id" | "email" | "cio_id") {
        return Err(Rejection::invalid(
            "id_type",
            "id_type must be id, email or cio_id",
        ));
    }
    let ids = match map.get("ids") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(Rejection::required("ids"));
        }
        Some(_) => return Err(Rejection::invalid("ids", "ids must be an array")),
    };
    if ids.len() > MAX_SEGMENT_IDS {
        return Err(Rejection::invalid(
            "ids",
            format!("{} ids, at most {MAX_SEGMENT_IDS} per request", ids.len()),
        ));
    }
    let mut people = Vec::with_capacity(ids.len());
    for (i, value) in ids.iter().enumerate() {
        let person = identifier(&format!("ids.{i}"), value)?;
        if id_type != "email" || person.contains('@') {
            people.push(person);
        }
    }
    Ok(people)
}

/// An API-triggered broadcast's trigger body ("Trigger Data | 50000 bytes", "Recipient List |
/// 10000 recipients"): `data` an object, at most one of `recipients` (a filter object), `ids`
/// and `emails` (lists).
pub(crate) fn broadcast_trigger(map: &Map<String, Value>) -> Checked<()> {
    use crate::domain::limits::{MAX_TRIGGER_DATA_BYTES, MAX_TRIGGER_RECIPIENTS};
    if let Some(data) = optional_object(map, "data")? {
        let size = json_len(&Value::Object(data.clone()));
        if size > MAX_TRIGGER_DATA_BYTES {
            return Err(Rejection::too_large(
                "data",
                format!("data is {size} bytes, at most {MAX_TRIGGER_DATA_BYTES} allowed"),
            ));
        }
    }
    let audiences: Vec<&str> = [
        "recipients",
        "ids",
        "emails",
        "per_user_data",
        "data_file_url",
    ]
    .into_iter()
    .filter(|k| map.get(*k).is_some_and(|v| !v.is_null()))
    .collect();
    if audiences.len() > 1 {
        return Err(Rejection::invalid(
            audiences[1],
            format!("only one of {} may be given", audiences.join(", ")),
        ));
    }
    optional_object(map, "recipients")?;
    for key in ["ids", "emails"] {
        match map.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.len() <= MAX_TRIGGER_RECIPIENTS => {}
            Some(Value::Array(_)) => {
                return Err(Rejection::invalid(
                    key,
                    format!("{key} lists more than {MAX_TRIGGER_RECIPIENTS} recipients"),
                ));
            }
            Some(_) => return Err(Rejection::invalid(key, format!("{key} must be an array"))),
        }
    }
    Ok(())
}

/// One v2 operation (`/entity` body or `batch` element).
pub(crate) fn v2_operation(op: &Value) -> Checked<OpInfo> {
    let Some(map) = op.as_object() else {
        return Err(Rejection::invalid("", "each operation must be an object"));
    };
    let kind = required_string(map, "type")?;
    let action = required_string(map, "action")?.to_string();
    match kind {
        "person" => {}
        "object" => return v2_object(map, &action),
        // Deliveries are outside what the gateway sends; accepted with their shape checked
        // only loosely, so a tool pointed at the sandbox still sees them recorded.
        "delivery" => {
            if !map.get("identifiers").is_some_and(Value::is_object) {
                return Err(Rejection::required("identifiers"));
            }
            return Ok(OpInfo::new(None, &action, None));
        }
        other => {
            return Err(Rejection::invalid(
                "type",
                format!("type must be person, object or delivery, got {other:?}"),
            ));
        }
    }
    if action == "merge" {
        let (primary, _) = merge(map)?;
        return Ok(OpInfo::new(Some(primary), &action, None));
    }
    // Only events and views can be about someone not identified yet (Track v2: "anonymous_id"
    // is an identifier of the event, page and screen actions).
    let identifiers: &[&str] = match action.as_str() {
        "event" | "page" | "screen" => &["id", "email", "phone", "cio_id", "anonymous_id"],
        _ => &["id", "email", "phone", "cio_id"],
    };
    let (key, value) = person_named("identifiers", map.get("identifiers"), identifiers)?;
    let mut info = if key == "anonymous_id" {
        OpInfo {
            anonymous_id: Some(value),
            ..OpInfo::new(None, &action, None)
        }
    } else {
        OpInfo::new(Some(value), &action, None)
    };
    match action.as_str() {
        "identify" => {
            let attributes = optional_object(map, "attributes")?;
            if let Some(attributes) = attributes {
                self::attributes("attributes", attributes)?;
            }
            info.merges = merged_anonymous_id(attributes);
            optional_integer(map, "timestamp")?;
        }
        "event" | "page" | "screen" => info.event_id = event_common(map, &action, "attributes")?,
        "add_device" => device_common(device_object(map)?, "token")?,
        "delete_device" => {
            required_string(device_object(map)?, "token").map_err(|e| within("device", e))?;
        }
        "delete" | "suppress" | "unsuppress" | "add_relationships" | "delete_relationships" => {}
        other => {
            return Err(Rejection::invalid(
                "action",
                format!("unknown action {other:?} for a person"),
            ));
        }
    }
    Ok(info)
}

/// One v2 object operation: `identifiers` names the object by `object_type_id` (an integer
/// from 1, as a string) and `object_id`, or by `cio_object_id`; `identify` may set
/// `attributes` (the person limits apply); `cio_relationships` relate people
/// (`{identifiers, relationship_attributes?}`), and the relationship actions need one.
fn v2_object(map: &Map<String, Value>, action: &str) -> Checked<OpInfo> {
    let Some(ids) = map.get("identifiers").and_then(Value::as_object) else {
        return Err(Rejection::required("identifiers"));
    };
    let object = match (
        ids.get("object_type_id"),
        ids.get("object_id"),
        ids.get("cio_object_id"),
    ) {
        (Some(Value::String(t)), Some(id), None)
            if !t.is_empty() && !t.starts_with('0') && t.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{t}:{}", identifier("identifiers.object_id", id)?)
        }
        (None, None, Some(id)) => identifier("identifiers.cio_object_id", id)?,
        _ => {
            return Err(Rejection::invalid(
                "identifiers",
                "identifiers must be {object_type_id (a string of an integer from 1), object_id} or {cio_object_id}",
            ));
        }
    };
    match action {
        "identify" | "delete" | "add_relationships" | "delete_relationships" => {}
        other => {
            return Err(Rejection::invalid(
                "action",
                format!("unknown action {other:?} for an object"),
            ));
        }
    }
    if let Some(attributes) = optional_object(map, "attributes")? {
        attributes_of_object(action, attributes)?;
    }
    let related = match map.get("cio_relationships") {
        None | Some(Value::Null) => 0,
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("cio_relationships.{i}");
                let Some(item) = item.as_object() else {
                    return Err(Rejection::invalid(
                        &field,
                        format!("{field} must be an object"),
                    ));
                };
                person(
                    &format!("{field}.identifiers"),
                    item.get("identifiers"),
                    &["id", "email", "cio_id"],
                )?;
                optional_object(item, "relationship_attributes").map_err(|e| within(&field, e))?;
            }
            items.len()
        }
        Some(_) => {
            return Err(Rejection::invalid(
                "cio_relationships",
                "cio_relationships must be an array",
            ));
        }
    };
    if related == 0 && action.ends_with("_relationships") {
        return Err(Rejection::required("cio_relationships"));
    }
    Ok(OpInfo {
        object: Some(object),
        ..OpInfo::new(None, action, None)
    })
}

fn attributes_of_object(action: &str, attributes: &Map<String, Value>) -> Checked<()> {
    if action != "identify" {
        return Err(Rejection::invalid(
            "attributes",
            format!("attributes are set by identify, not {action}"),
        ));
    }
    self::attributes("attributes", attributes)
}

/// An App API send body for `channel` (`email`, `push`, `sms`); returns the person's identifier.
pub(crate) fn send(channel: &str, map: &Map<String, Value>) -> Checked<String> {
    match map.get("transactional_message_id") {
        Some(Value::Number(n)) if n.is_u64() => {}
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(_) => {
            return Err(Rejection::invalid(
                "transactional_message_id",
                "transactional_message_id must be an integer or a trigger name",
            ));
        }
        // An email can be composed in the request instead: body, subject and from.
        None if channel == "email" => {
            for key in ["body", "subject", "from"] {
                required_string(map, key).map_err(|mut e| {
                    e.message = format!("{} (needed without transactional_message_id)", e.message);
                    e
                })?;
            }
        }
        None => return Err(Rejection::required("transactional_message_id")),
    }
    // `to` is required for email and SMS; for push it is optional (`all` by default); in-app
    // and inbox messages go to the person's devices and browsers, named by `identifiers` alone.
    match (channel, map.get("to")) {
        (_, Some(Value::String(s))) if !s.trim().is_empty() => {}
        ("push" | "in_app" | "inbox_message", None) => {}
        (_, None) => return Err(Rejection::required("to")),
        (_, Some(_)) => return Err(Rejection::invalid("to", "to must be a non-empty string")),
    }
    if optional_object(map, "message_data").is_err() {
        return Err(Rejection::invalid(
            "message_data",
            "message_data must be an object",
        ));
    }
    person(
        "identifiers",
        map.get("identifiers"),
        &["id", "email", "cio_id"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn events_need_a_name_and_a_ulid_id() {
        assert_eq!(v1_event(&obj(json!({})), false).unwrap_err().field, "name");
        assert!(v1_event(&obj(json!({"name": "x", "id": "nope"})), false).is_err());
        let (action, id) = v1_event(
            &obj(json!({"name": "/home", "type": "page", "id": "01JDZ5X3Q8W2V6T9N4M7K1P0RA"})),
            false,
        )
        .unwrap();
        assert_eq!((action.as_str(), id.is_some()), ("page", true));
        let big = json!({"name": "x", "data": {"a": "x".repeat(MAX_EVENT_DATA_BYTES)}});
        assert_eq!(v1_event(&obj(big), false).unwrap_err().status, 413);
    }

    #[test]
    fn identifiers_are_exactly_one() {
        let two = json!({"type": "person", "action": "delete", "identifiers": {"id": "1", "email": "a@b"}});
        assert!(v2_operation(&two).is_err());
        let long =
            json!({"type": "person", "action": "delete", "identifiers": {"id": "x".repeat(151)}});
        assert!(v2_operation(&long).is_err());
        let ok = json!({"type": "person", "action": "delete", "identifiers": {"id": 7}});
        assert_eq!(v2_operation(&ok).unwrap().user.as_deref(), Some("7"));
    }

    #[test]
    fn only_events_and_views_can_be_anonymous_and_an_identify_names_what_it_merges() {
        let screen = json!({"type": "person", "action": "screen", "name": "Home",
            "identifiers": {"anonymous_id": "anon-1"}});
        let info = v2_operation(&screen).unwrap();
        assert_eq!(
            (info.user, info.anonymous_id.as_deref()),
            (None, Some("anon-1"))
        );
        let identify = json!({"type": "person", "action": "identify",
            "identifiers": {"anonymous_id": "anon-1"}});
        assert_eq!(
            v2_operation(&identify).unwrap_err().field,
            "identifiers.anonymous_id"
        );
        let merging = json!({"type": "person", "action": "identify", "identifiers": {"id": "42"},
            "attributes": {"anonymous_id": "anon-1"}});
        assert_eq!(
            v2_operation(&merging).unwrap().merges.as_deref(),
            Some("anon-1")
        );
    }

    #[test]
    fn segment_ids_are_at_most_a_thousand_of_the_id_type() {
        let ids = |v: Value| obj(json!({"ids": v}));
        assert_eq!(
            segment_ids(&ids(json!(["a@b.c", "not-an-email"])), "email").unwrap(),
            ["a@b.c"],
            "a value not of the id_type is ignored"
        );
        assert!(segment_ids(&ids(json!([])), "id").is_err());
        assert!(segment_ids(&ids(json!(["1"])), "phone").is_err());
        let many: Vec<String> = (0..=MAX_SEGMENT_IDS).map(|i| i.to_string()).collect();
        assert!(segment_ids(&ids(json!(many)), "id").is_err());
    }

    #[test]
    fn sends_follow_the_channel_rules() {
        let ids = json!({"id": "1"});
        assert!(
            send(
                "push",
                &obj(json!({"transactional_message_id": 3, "identifiers": ids}))
            )
            .is_ok()
        );
        assert!(
            send(
                "sms",
                &obj(json!({"transactional_message_id": 3, "identifiers": ids}))
            )
            .is_err()
        );
        assert!(send("email", &obj(json!({"to": "a@b.c", "identifiers": ids}))).is_err());
        let inline = json!({"to": "a@b.c", "identifiers": ids, "body": "b", "subject": "s", "from": "f@x.y"});
        assert!(send("email", &obj(inline)).is_ok());
    }
}
