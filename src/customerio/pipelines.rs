//! Track operations as Data Pipelines calls (`cdp.customer.io/v1`, the Segment-compatible API).
//!
//! The Pipelines API names a person by `userId` (their id) or, before they are identified, by
//! `anonymousId`; it has no way to name one by email or `cio_id`, so such calls are refused
//! here (`Invalid`) rather than sent about somebody else. What the Track API does with a path
//! of its own, Pipelines does with a `track` call of a reserved name, its semantic events
//! ("User Deleted", "Device Created or Updated", ...). One operation may take several calls
//! (an object related to three people is one `group` call per person); they go in one batch, in
//! order, and their `messageId`s are the correlation id with `#2`, `#3`, ... after the first.

use super::{CioError, TrackCall};
use crate::domain::{
    Attributes, Device, ObjectAction, ObjectOp, Operation, PersonRef, Relationship, limits,
};
use serde_json::{Map, Value, json};

/// Semantic event names (Customer.io, "Customer.io events" of Data Pipelines).
pub const USER_DELETED: &str = "User Deleted";
pub const USER_SUPPRESSED: &str = "User Suppressed";
pub const USER_UNSUPPRESSED: &str = "User Unsuppressed";
pub const DEVICE_UPDATED: &str = "Device Created or Updated";
pub const DEVICE_DELETED: &str = "Device Deleted";
pub const OBJECT_DELETED: &str = "Object Deleted";
pub const RELATIONSHIP_DELETED: &str = "Relationship Deleted";

/// "32 KB per call" and "500 KB per batch": over either, Pipelines answers 200 and drops it.
pub const MAX_CALL_BYTES: usize = limits::MAX_V2_OPERATION_BYTES;
pub const MAX_BATCH_BYTES: usize = limits::MAX_V2_BATCH_BYTES;

/// The calls that perform `call`, in order, each serialized as it is sent. `Invalid` when the
/// Pipelines API cannot express it, or when a call passes its 32 KB limit.
pub fn encoded_calls(call: &TrackCall) -> Result<Vec<Vec<u8>>, CioError> {
    calls(call)?
        .iter()
        .map(|c| {
            let bytes = serde_json::to_vec(c).map_err(|e| CioError::invalid(e.to_string()))?;
            if bytes.len() > MAX_CALL_BYTES {
                return Err(CioError::invalid(format!(
                    "Pipelines call is {} bytes, the Pipelines API allows at most {MAX_CALL_BYTES} \
                     per call (and drops a bigger one with a 200)",
                    bytes.len()
                )));
            }
            Ok(bytes)
        })
        .collect()
}

/// The calls that perform `call`, in order.
pub fn calls(call: &TrackCall) -> Result<Vec<Value>, CioError> {
    let calls = match &call.operation {
        Operation::Identify(attributes) => vec![identify(call, attributes)?],
        Operation::Track(event) => {
            let mut c = person_call(call, "track")?;
            c.insert("event".into(), event.name.as_str().into());
            c.insert("properties".into(), map_value(&event.data));
            // An event's own time (unix seconds) beats the time it was published.
            if let Some(secs) = event.timestamp {
                c.insert("timestamp".into(), rfc3339(secs * 1000).into());
            }
            vec![c]
        }
        Operation::Page(view) => {
            let mut c = person_call(call, "page")?;
            let mut properties = view.data.as_map().clone();
            properties
                .entry("url")
                .or_insert_with(|| view.name.clone().into());
            c.insert("name".into(), view.name.as_str().into());
            c.insert("properties".into(), Value::Object(properties));
            vec![c]
        }
        Operation::Screen(view) => {
            let mut c = person_call(call, "screen")?;
            c.insert("name".into(), view.name.as_str().into());
            c.insert("properties".into(), map_value(&view.data));
            vec![c]
        }
        Operation::Delete => vec![semantic(call, USER_DELETED)?],
        Operation::Suppress => vec![semantic(call, USER_SUPPRESSED)?],
        Operation::Unsuppress => vec![semantic(call, USER_UNSUPPRESSED)?],
        Operation::AddDevice(device) => vec![add_device(call, device)?],
        Operation::DeleteDevice(token) => {
            let mut c = semantic(call, DEVICE_DELETED)?;
            c.insert("context".into(), json!({"device": {"token": token}}));
            vec![c]
        }
        Operation::Merge { primary, secondary } => {
            let mut c = common(call, "alias");
            c.insert(
                "userId".into(),
                person_id(primary, "a merge's primary")?.into(),
            );
            c.insert(
                "previousId".into(),
                person_id(secondary, "a merge's secondary")?.into(),
            );
            vec![c]
        }
        Operation::Object(object) => object_calls(call, object)?,
        Operation::Segment { .. } => {
            return Err(CioError::invalid(
                "manual segments are Track API calls, not Pipelines calls",
            ));
        }
        Operation::Transactional(_) | Operation::Broadcast(_) => {
            return Err(CioError::invalid(
                "a transactional send or a broadcast is an App API call, not a Pipelines call",
            ));
        }
    };
    Ok(number(call, calls))
}

fn identify(call: &TrackCall, attributes: &Attributes) -> Result<Map<String, Value>, CioError> {
    let mut c = person_call(call, "identify")?;
    let mut traits = attributes.as_map().clone();
    // The Track path carries an envelope's anonymousId as the `anonymous_id` attribute; here it
    // is the call's own `anonymousId`, by which Pipelines merges the anonymous activity.
    if let Some(Value::String(anonymous)) = traits.remove(PersonRef::ANONYMOUS) {
        c.insert("anonymousId".into(), anonymous.into());
    }
    c.insert("traits".into(), Value::Object(traits));
    Ok(c)
}

fn add_device(call: &TrackCall, device: &Device) -> Result<Map<String, Value>, CioError> {
    let mut c = semantic(call, DEVICE_UPDATED)?;
    c.insert(
        "context".into(),
        json!({"device": {"token": device.id, "type": device.platform}}),
    );
    c.insert("properties".into(), map_value(&device.data));
    Ok(c)
}

/// `group` calls for an object's attributes and each related person; a semantic event for a
/// deleted object or relationship.
fn object_calls(call: &TrackCall, object: &ObjectOp) -> Result<Vec<Map<String, Value>>, CioError> {
    let type_trait = || {
        let mut traits = Map::new();
        traits.insert("objectTypeId".into(), object.object_type_id.as_str().into());
        traits
    };
    match object.action {
        ObjectAction::Identify | ObjectAction::AddRelationships => {
            let mut traits = type_trait();
            if object.action == ObjectAction::Identify {
                traits.extend(object.attributes.as_map().clone());
            }
            // The object's own attributes ride with the first call; without relationships that
            // is a group call naming nobody, which Pipelines takes as "update the group".
            let mut calls = Vec::new();
            if object.relationships.is_empty() {
                let mut c = common(call, "group");
                c.insert("groupId".into(), object.object_id.as_str().into());
                c.insert("traits".into(), Value::Object(traits));
                return Ok(vec![c]);
            }
            for (i, related) in object.relationships.iter().enumerate() {
                let mut c = related_call(call, "group", related)?;
                let mut traits = if i == 0 { traits.clone() } else { type_trait() };
                if let Some(attributes) = &related.attributes {
                    traits.insert(
                        "relationshipAttributes".into(),
                        Value::Object(attributes.clone()),
                    );
                }
                c.insert("groupId".into(), object.object_id.as_str().into());
                c.insert("traits".into(), Value::Object(traits));
                calls.push(c);
            }
            Ok(calls)
        }
        ObjectAction::DeleteRelationships => object
            .relationships
            .iter()
            .map(|related| {
                let mut c = related_call(call, "track", related)?;
                c.insert("event".into(), RELATIONSHIP_DELETED.into());
                c.insert("properties".into(), Value::Object(type_trait()));
                c.insert(
                    "context".into(),
                    json!({"groupId": object.object_id.as_str()}),
                );
                Ok(c)
            })
            .collect(),
        ObjectAction::Delete => {
            // A track call needs a userId or an anonymousId, and no person deletes an object:
            // the object's own key (`object:<type>:<id>`, its ordering key) stands in.
            let mut c = common(call, "track");
            c.insert("anonymousId".into(), object.routing_key().into());
            c.insert("event".into(), OBJECT_DELETED.into());
            c.insert("properties".into(), Value::Object(type_trait()));
            c.insert(
                "context".into(),
                json!({"groupId": object.object_id.as_str()}),
            );
            Ok(vec![c])
        }
    }
}

/// A `track` call of a semantic event about the call's person.
fn semantic(call: &TrackCall, event: &str) -> Result<Map<String, Value>, CioError> {
    let mut c = person_call(call, "track")?;
    c.insert("event".into(), event.into());
    Ok(c)
}

/// A call of `kind` about the call's person: `userId`, or `anonymousId` for someone anonymous.
fn person_call(call: &TrackCall, kind: &str) -> Result<Map<String, Value>, CioError> {
    let mut c = common(call, kind);
    let (key, value) = identity(&call.person, "the person")?;
    c.insert(key.into(), value.into());
    Ok(c)
}

/// A call of `kind` about a person related to an object.
fn related_call(
    call: &TrackCall,
    kind: &str,
    related: &Relationship,
) -> Result<Map<String, Value>, CioError> {
    let mut c = common(call, kind);
    let (key, value) = identity(&related.person, "a related person")?;
    c.insert(key.into(), value.into());
    Ok(c)
}

/// `type`, and the time the envelope was published (RFC 3339, as the Pipelines API takes it).
fn common(call: &TrackCall, kind: &str) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("type".into(), kind.into());
    if let Some(ms) = call.published_ms {
        c.insert("timestamp".into(), rfc3339(ms).into());
    }
    c
}

fn identity<'a>(person: &'a PersonRef, who: &str) -> Result<(&'static str, &'a str), CioError> {
    match person.kind {
        "id" => Ok(("userId", &person.value)),
        PersonRef::ANONYMOUS => Ok(("anonymousId", &person.value)),
        other => Err(unnamed(who, other)),
    }
}

fn person_id<'a>(person: &'a PersonRef, who: &str) -> Result<&'a str, CioError> {
    match person.kind {
        "id" => Ok(&person.value),
        other => Err(unnamed(who, other)),
    }
}

fn unnamed(who: &str, kind: &str) -> CioError {
    CioError::invalid(format!(
        "{who} is named by {kind}: the Pipelines API names people by userId (their id) or \
         anonymousId only; deliver it with customerio.api = track"
    ))
}

/// Sets each call's `messageId`: the correlation id, then `#2`, `#3`, ... so that Pipelines,
/// which drops a repeated messageId, keeps every call of one operation.
fn number(call: &TrackCall, calls: Vec<Map<String, Value>>) -> Vec<Value> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            if let Some(id) = &call.message_id {
                let id = if i == 0 {
                    id.clone()
                } else {
                    format!("{id}#{}", i + 1)
                };
                c.insert("messageId".into(), id.into());
            }
            Value::Object(c)
        })
        .collect()
}

fn map_value(attributes: &Attributes) -> Value {
    Value::Object(attributes.as_map().clone())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Envelope, UserId};

    /// The call an envelope becomes, as the identify and track actors build it.
    fn call_of(envelope: Value) -> TrackCall {
        let envelope = Envelope::from_value(&envelope).unwrap();
        use crate::actors::{CallShape, EventCall, PersonCall};
        if envelope.kind.route() == crate::domain::Route::Track {
            EventCall::to_call(envelope, "test")
        } else {
            PersonCall::to_call(envelope, "test")
        }
    }

    fn only(call: &TrackCall) -> Value {
        let mut all = calls(call).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    const TS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn identify_track_page_screen_keep_ids_time_and_env() {
        let identify = only(&call_of(json!({"type": "identify", "userId": "u1",
            "anonymousId": "anon-1", "correlationId": "c-1", "timestamp": TS,
            "payload": {"plan": "pro"}})));
        assert_eq!(identify["type"], "identify");
        assert_eq!(identify["userId"], "u1");
        assert_eq!(identify["anonymousId"], "anon-1");
        assert_eq!(identify["messageId"], "c-1");
        assert_eq!(identify["timestamp"], "2026-01-01T00:00:00.000Z");
        assert_eq!(identify["traits"]["plan"], "pro");
        assert_eq!(identify["traits"]["_env"], "test");
        assert!(identify["traits"].get("anonymous_id").is_none());

        let track = only(&call_of(json!({"type": "track", "userId": "u1",
            "correlationId": "c-2", "timestamp": TS,
            "payload": {"name": "signup", "data": {"n": 1}}})));
        assert_eq!(track["event"], "signup");
        assert_eq!(track["properties"]["n"], 1);
        assert_eq!(track["properties"]["_env"], "test");

        let anonymous = only(&call_of(json!({"type": "page", "anonymousId": "anon-1",
            "payload": {"path": "/pricing"}})));
        assert_eq!(anonymous["type"], "page");
        assert_eq!(anonymous["anonymousId"], "anon-1");
        assert!(anonymous.get("userId").is_none());
        assert_eq!(anonymous["name"], "/pricing");
        assert_eq!(anonymous["properties"]["url"], "/pricing");

        let screen = only(&call_of(json!({"type": "screen", "userId": "u1",
            "payload": {"name": "Home"}})));
        assert_eq!(screen["type"], "screen");
        assert_eq!(screen["name"], "Home");
    }

    #[test]
    fn person_actions_are_semantic_events() {
        for (kind, payload, event) in [
            ("delete", json!({}), USER_DELETED),
            ("suppress", json!({}), USER_SUPPRESSED),
            ("unsuppress", json!({}), USER_UNSUPPRESSED),
            (
                "addDevice",
                json!({"deviceId": "tok", "platform": "ios"}),
                DEVICE_UPDATED,
            ),
            ("deleteDevice", json!({"deviceId": "tok"}), DEVICE_DELETED),
        ] {
            let c = only(&call_of(
                json!({"type": kind, "userId": "u1", "payload": payload}),
            ));
            assert_eq!(
                (c["type"].as_str(), c["event"].as_str()),
                (Some("track"), Some(event))
            );
            assert_eq!(c["userId"], "u1");
            if kind.ends_with("evice") {
                assert_eq!(c["context"]["device"]["token"], "tok", "{kind}");
            }
        }
        let device = only(&call_of(json!({"type": "addDevice", "userId": "u1",
            "payload": {"deviceId": "tok", "platform": "android"}})));
        assert_eq!(device["context"]["device"]["type"], "android");
    }

    #[test]
    fn a_merge_is_an_alias_and_needs_ids() {
        let alias = only(&call_of(json!({"type": "merge", "userId": "u1",
            "payload": {"primary": {"id": "u1"}, "secondary": {"id": "u0"}}})));
        assert_eq!(alias["type"], "alias");
        assert_eq!(
            (alias["userId"].as_str(), alias["previousId"].as_str()),
            (Some("u1"), Some("u0"))
        );
        let by_email = call_of(json!({"type": "merge", "userId": "u1",
            "payload": {"primary": {"id": "u1"}, "secondary": {"email": "a@example.com"}}}));
        let e = calls(&by_email).unwrap_err();
        assert!(e.to_string().contains("userId"), "{e}");
    }

    #[test]
    fn a_person_named_by_email_is_refused_not_sent_as_someone_else() {
        let call = call_of(json!({"type": "identify", "userId": "u1",
            "identifiers": {"email": "a@example.com"}, "payload": {}}));
        assert!(matches!(calls(&call), Err(CioError::Invalid(_))));
    }

    #[test]
    fn objects_are_group_calls_one_per_related_person() {
        let object = call_of(
            json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
            "correlationId": "c-9",
            "payload": {"action": "identify", "attributes": {"name": "Acme"},
                "relationships": [{"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "admin"}},
                                  {"identifiers": {"id": "u2"}}]}}),
        );
        let calls = calls(&object).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["type"], "group");
        assert_eq!(calls[0]["groupId"], "acme");
        assert_eq!(calls[0]["userId"], "u1");
        assert_eq!(calls[0]["traits"]["name"], "Acme");
        assert_eq!(calls[0]["traits"]["objectTypeId"], "1");
        assert_eq!(
            calls[0]["traits"]["relationshipAttributes"]["role"],
            "admin"
        );
        assert_eq!(calls[1]["userId"], "u2");
        assert_eq!(calls[0]["messageId"], "c-9");
        assert_eq!(calls[1]["messageId"], "c-9#2");

        let alone = only(&call_of(
            json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
            "payload": {"action": "identify", "attributes": {"name": "Acme"}}}),
        ));
        assert!(alone.get("userId").is_none() && alone.get("anonymousId").is_none());

        let unrelated = super::calls(&call_of(json!({"type": "object", "objectTypeId": "1",
            "objectId": "acme", "payload": {"action": "delete_relationships",
            "relationships": [{"identifiers": {"id": "u1"}}]}})))
        .unwrap();
        assert_eq!(unrelated[0]["event"], RELATIONSHIP_DELETED);
        assert_eq!(unrelated[0]["context"]["groupId"], "acme");

        let deleted = only(&call_of(json!({"type": "object", "objectTypeId": "1",
            "objectId": "acme", "payload": {"action": "delete"}})));
        assert_eq!(deleted["event"], OBJECT_DELETED);
        assert_eq!(deleted["anonymousId"], "object:1:acme");
    }

    #[test]
    fn a_call_over_32_kb_is_invalid_and_names_the_limit() {
        let mut call = TrackCall::new(
            UserId::parse("u1").unwrap(),
            Operation::Identify(Attributes::from_map(Map::new())),
        );
        let big: Map<String, Value> = (0..40)
            .map(|i| (format!("a{i}"), Value::String("x".repeat(900))))
            .collect();
        call.operation = Operation::Identify(Attributes::from_map(big));
        let e = encoded_calls(&call).unwrap_err();
        assert!(matches!(e, CioError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("32768"), "{e}");
    }
}
