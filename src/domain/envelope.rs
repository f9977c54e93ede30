//! The envelope producers publish (docs/reference.md §4), parsed into a typed operation.

use super::attributes::kind as json_kind;
use super::event::object;
use super::{
    Attributes, BroadcastTrigger, CorrelationId, Device, Event, ObjectOp, ParseError, PersonRef,
    TransactionalRequest, UserId, View, limits,
};
use serde_json::{Map, Value};

/// The envelope's `type`, as producers spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MessageType {
    Identify,
    Track,
    Transactional,
    Page,
    Screen,
    Delete,
    Suppress,
    Unsuppress,
    AddDevice,
    DeleteDevice,
    Merge,
    Object,
    Segment,
    Broadcast,
}

/// Which of the three producer exchanges a message type belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Identify,
    Track,
    Transactional,
}

impl MessageType {
    pub const ALL: [MessageType; 14] = [
        Self::Identify,
        Self::Track,
        Self::Transactional,
        Self::Page,
        Self::Screen,
        Self::Delete,
        Self::Suppress,
        Self::Unsuppress,
        Self::AddDevice,
        Self::DeleteDevice,
        Self::Merge,
        Self::Object,
        Self::Segment,
        Self::Broadcast,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Transactional => "transactional",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Delete => "delete",
            Self::Suppress => "suppress",
            Self::Unsuppress => "unsuppress",
            Self::AddDevice => "addDevice",
            Self::DeleteDevice => "deleteDevice",
            Self::Merge => "merge",
            Self::Object => "object",
            Self::Segment => "segment",
            Self::Broadcast => "broadcast",
        }
    }

    /// The types that may name an `anonymousId` instead of a `userId`: Customer.io's anonymous
    /// events are events, page views and screen views.
    pub fn allows_anonymous(self) -> bool {
        matches!(self, Self::Track | Self::Page | Self::Screen)
    }

    pub fn route(self) -> Route {
        match self {
            Self::Track | Self::Page | Self::Screen => Route::Track,
            Self::Transactional | Self::Broadcast => Route::Transactional,
            _ => Route::Identify,
        }
    }
}

/// What to do in Customer.io, fully validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Identify(Attributes),
    Track(Event),
    Page(View),
    Screen(View),
    Delete,
    Suppress,
    Unsuppress,
    AddDevice(Device),
    DeleteDevice(String),
    Merge {
        primary: PersonRef,
        secondary: PersonRef,
    },
    Transactional(TransactionalRequest),
    Object(ObjectOp),
    /// Add the person to (`add: true`) or remove them from a manual segment.
    Segment {
        segment_id: u32,
        add: bool,
    },
    Broadcast(BroadcastTrigger),
}

/// A parsed envelope. `timestamp` is milliseconds since the epoch, as published. `user` orders
/// and routes: the `userId`, or the `anonymousId` of an anonymous event. `person` is whom
/// Customer.io is told about (`identifiers`, default the user's id; the anonymous id of an
/// anonymous event). `anonymous_id` is the envelope's `anonymousId`: on an identify, the
/// anonymous activity Customer.io merges into the person.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub kind: MessageType,
    pub user: UserId,
    pub person: PersonRef,
    pub anonymous_id: Option<UserId>,
    pub timestamp: Option<i64>,
    pub correlation_id: Option<CorrelationId>,
    pub operation: Operation,
}

impl Envelope {
    /// Parses a message body. Any byte string gives an envelope or a precise error.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        if body.len() > limits::MAX_ENVELOPE_BYTES {
            return Err(ParseError::new(
                "",
                format!(
                    "envelope is {} bytes, at most {} allowed",
                    body.len(),
                    limits::MAX_ENVELOPE_BYTES
                ),
            ));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::new("", format!("invalid JSON: {e}")))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, ParseError> {
        let obj = object(value).map_err(|_| {
            ParseError::new(
                "",
                format!("envelope must be an object, got {}", json_kind(value)),
            )
        })?;
        let kind = match obj.get("type") {
            Some(Value::String(s)) => MessageType::parse(s)
                .ok_or_else(|| ParseError::new("type", format!("unknown type {s:?}")))?,
            Some(other) => {
                return Err(ParseError::new(
                    "type",
                    format!("must be a string, got {}", json_kind(other)),
                ));
            }
            None => return Err(ParseError::new("type", "is required")),
        };
        let timestamp = match obj.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|t| *t >= 0).ok_or_else(|| {
                ParseError::new("timestamp", "must be milliseconds since the epoch")
            })?),
        };
        let correlation_id = match obj.get("correlationId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(CorrelationId::parse(s)?),
            Some(_) => return Err(ParseError::new("correlationId", "must be a string")),
        };
        match kind {
            MessageType::Object => return Self::object_from(obj, timestamp, correlation_id),
            MessageType::Broadcast => {
                return Self::broadcast_from(obj, timestamp, correlation_id);
            }
            _ => {}
        }
        let user_id = optional_key(obj, "userId")?;
        let anonymous_id = optional_key(obj, "anonymousId")?;
        let identifiers = match obj.get("identifiers") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                Some(PersonRef::parse(v).map_err(|e| e.within("identifiers"))?)
            }
            Some(other) => {
                return Err(ParseError::new(
                    "identifiers",
                    format!("must be an object, got {}", json_kind(other)),
                ));
            }
        };
        let (user, person) = match (user_id, &anonymous_id) {
            (Some(user), _) => {
                let person = identifiers.unwrap_or_else(|| PersonRef::id(&user));
                (user, person)
            }
            (None, Some(anonymous)) if kind.allows_anonymous() => {
                if identifiers.is_some() {
                    return Err(ParseError::new(
                        "identifiers",
                        "names a person, and an anonymous event has none: send userId with it",
                    ));
                }
                (anonymous.clone(), PersonRef::anonymous(anonymous))
            }
            (None, Some(_)) => {
                return Err(ParseError::new(
                    "userId",
                    format!(
                        "is required for {}: only track, page and screen may carry anonymousId instead",
                        kind.as_str()
                    ),
                ));
            }
            (None, None) => return Err(ParseError::new("userId", "is required")),
        };
        let empty = Value::Object(Map::new());
        let payload = obj.get("payload").unwrap_or(&empty);
        let operation = parse_operation(kind, payload, &person).map_err(|e| e.within("payload"))?;
        if let (Operation::Identify(attributes), Some(_)) = (&operation, &anonymous_id) {
            attributes
                .check_room_for(PersonRef::ANONYMOUS)
                .map_err(|e| e.within("payload"))?;
        }
        Ok(Self {
            kind,
            user,
            person,
            anonymous_id,
            timestamp,
            correlation_id,
            operation,
        })
    }
}

impl Envelope {
    /// An `object` envelope: `objectTypeId`, `objectId` and the payload; it orders and routes
    /// by `object:<objectTypeId>:<objectId>`, and names no person.
    fn object_from(
        obj: &Map<String, Value>,
        timestamp: Option<i64>,
        correlation_id: Option<CorrelationId>,
    ) -> Result<Self, ParseError> {
        let empty = Value::Object(Map::new());
        let op = ObjectOp::parse(
            obj.get("objectTypeId"),
            obj.get("objectId"),
            obj.get("payload").unwrap_or(&empty),
        )?;
        let key = op.routing_key();
        Ok(Self::of_no_person(
            MessageType::Object,
            key,
            Operation::Object(op),
            timestamp,
            correlation_id,
        ))
    }

    /// A `broadcast` envelope: it orders and routes by `broadcast:<broadcastId>`.
    fn broadcast_from(
        obj: &Map<String, Value>,
        timestamp: Option<i64>,
        correlation_id: Option<CorrelationId>,
    ) -> Result<Self, ParseError> {
        let empty = Value::Object(Map::new());
        let trigger = BroadcastTrigger::parse(obj.get("payload").unwrap_or(&empty))
            .map_err(|e| e.within("payload"))?;
        let key = trigger.routing_key();
        Ok(Self::of_no_person(
            MessageType::Broadcast,
            key,
            Operation::Broadcast(trigger),
            timestamp,
            correlation_id,
        ))
    }

    /// An envelope about no person, ordered by `key` (its `person` is the key, never sent).
    fn of_no_person(
        kind: MessageType,
        key: String,
        operation: Operation,
        timestamp: Option<i64>,
        correlation_id: Option<CorrelationId>,
    ) -> Self {
        let user = UserId::ordering_key(key);
        Self {
            kind,
            person: PersonRef::id(&user),
            user,
            anonymous_id: None,
            timestamp,
            correlation_id,
            operation,
        }
    }
}

/// `{segmentId, action: "add" | "remove"}`: the segment is a manual one, named by its id
/// (Customer.io: "segment_id: integer").
fn parse_segment(payload: &Value) -> Result<Operation, ParseError> {
    let obj = object(payload)?;
    let segment_id = match obj.get("segmentId") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        None => return Err(ParseError::new("segmentId", "is required")),
        Some(_) => None,
    }
    .filter(|id| *id >= 1)
    .and_then(|id| u32::try_from(id).ok())
    .ok_or_else(|| ParseError::new("segmentId", "must be a segment id: an integer from 1"))?;
    let add = match obj.get("action").and_then(Value::as_str) {
        Some("add") => true,
        Some("remove") => false,
        _ => return Err(ParseError::new("action", "must be \"add\" or \"remove\"")),
    };
    Ok(Operation::Segment { segment_id, add })
}

/// A `userId` or `anonymousId`: a string (or a number, as producers often send ids), if present.
fn optional_key(obj: &Map<String, Value>, field: &str) -> Result<Option<UserId>, ParseError> {
    let parse = |s: &str| UserId::parse(s).map_err(|e| ParseError::new(field, e.reason));
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse(s).map(Some),
        Some(Value::Number(n)) => parse(&n.to_string()).map(Some),
        Some(other) => Err(ParseError::new(
            field,
            format!("must be a string, got {}", json_kind(other)),
        )),
    }
}

fn parse_operation(
    kind: MessageType,
    payload: &Value,
    person: &PersonRef,
) -> Result<Operation, ParseError> {
    Ok(match kind {
        MessageType::Identify => Operation::Identify(Attributes::parse_person(payload)?),
        MessageType::Track => Operation::Track(Event::parse(payload)?),
        MessageType::Page => Operation::Page(View::page(payload)?),
        MessageType::Screen => Operation::Screen(View::screen(payload)?),
        MessageType::Delete => Operation::Delete,
        MessageType::Suppress => Operation::Suppress,
        MessageType::Unsuppress => Operation::Unsuppress,
        MessageType::AddDevice => Operation::AddDevice(Device::parse(payload)?),
        MessageType::DeleteDevice => Operation::DeleteDevice(Device::parse_id(payload)?),
        MessageType::Merge => {
            let obj = object(payload)?;
            let side = |key: &str| {
                obj.get(key)
                    .ok_or_else(|| ParseError::new(key, "is required"))
                    .and_then(|v| PersonRef::parse(v).map_err(|e| e.within(key)))
            };
            Operation::Merge {
                primary: side("primary")?,
                secondary: side("secondary")?,
            }
        }
        MessageType::Transactional => {
            Operation::Transactional(TransactionalRequest::parse_for(payload, person.clone())?)
        }
        MessageType::Segment => parse_segment(payload)?,
        // Objects and broadcasts name no person; `Envelope::from_value` parses them apart.
        MessageType::Object | MessageType::Broadcast => {
            return Err(ParseError::new("type", "not a person operation"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Envelope, ParseError> {
        Envelope::parse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn contract_example_parses() {
        let env = parse(json!({"type": "track", "userId": "42",
            "payload": {"name": "signup", "data": {"plan": "pro"}},
            "timestamp": 1764115200000i64, "correlationId": "01JDZ5X3Q8W2V6T9N4M7K1P0RA"}))
        .unwrap();
        assert_eq!(env.kind, MessageType::Track);
        assert_eq!(env.user.as_str(), "42");
        assert!(env.correlation_id.unwrap().as_ulid().is_some());
        match env.operation {
            Operation::Track(e) => assert_eq!(e.name.as_str(), "signup"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(json!({"type": "track", "userId": "1", "payload": {}})).unwrap_err();
        assert_eq!(e.field, "payload.name");
        let e = parse(json!({"type": "fly", "userId": "1"})).unwrap_err();
        assert_eq!(e.field, "type");
        let e = parse(json!({"type": "identify"})).unwrap_err();
        assert_eq!(e.field, "userId");
        let e = parse(json!({"type": "identify", "userId": "1", "payload": 3})).unwrap_err();
        assert_eq!(e.field, "payload");
        let e = Envelope::parse(b"{not json").unwrap_err();
        assert!(e.reason.starts_with("invalid JSON"));
        let e = parse(json!({"type": "merge", "userId": "1", "payload": {"primary": {"id": "a"}}}))
            .unwrap_err();
        assert_eq!(e.field, "payload.secondary");
    }

    #[test]
    fn identifiers_name_the_person_and_user_id_still_orders() {
        let env = parse(json!({"type": "identify", "userId": "42",
            "identifiers": {"email": "a@example.com"}}))
        .unwrap();
        assert_eq!(env.user.as_str(), "42");
        assert_eq!(
            (env.person.kind, env.person.value.as_str()),
            ("email", "a@example.com")
        );
        let default = parse(json!({"type": "delete", "userId": "42"})).unwrap();
        assert_eq!(default.person, PersonRef::id(&default.user));
        for bad in [
            json!("42"),
            json!({"id": "1", "email": "a@b"}),
            json!({"phone": "1"}),
        ] {
            let e =
                parse(json!({"type": "delete", "userId": "42", "identifiers": bad})).unwrap_err();
            assert!(e.field.starts_with("identifiers"), "{e:?}");
        }
        let send = parse(json!({"type": "transactional", "userId": "42",
            "identifiers": {"cio_id": "f00"}, "payload": {"transactional_message_id": 3}}))
        .unwrap();
        match send.operation {
            Operation::Transactional(t) => assert_eq!(t.identifiers.kind, "cio_id"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_anonymous_event_is_routed_by_its_anonymous_id() {
        for (kind, payload) in [
            ("track", json!({"name": "viewed_pricing"})),
            ("page", json!({"path": "/pricing"})),
            ("screen", json!({"name": "Home"})),
        ] {
            let env =
                parse(json!({"type": kind, "anonymousId": "anon-1", "payload": payload})).unwrap();
            assert_eq!(env.user.as_str(), "anon-1", "{kind}");
            assert!(env.person.is_anonymous(), "{kind}");
            assert_eq!(env.person.value, "anon-1");
        }
        let e = parse(json!({"type": "identify", "anonymousId": "anon-1"})).unwrap_err();
        assert_eq!(e.field, "userId");
        assert!(e.reason.contains("only track, page and screen"), "{e}");
        let e = parse(
            json!({"type": "track", "anonymousId": "a", "identifiers": {"email": "x@y.z"},
            "payload": {"name": "n"}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "identifiers");
        let e = parse(json!({"type": "track", "anonymousId": "", "payload": {"name": "n"}}))
            .unwrap_err();
        assert_eq!(e.field, "anonymousId");
    }

    #[test]
    fn an_identify_with_an_anonymous_id_names_the_person_and_keeps_the_anonymous_id() {
        let env = parse(
            json!({"type": "identify", "userId": "42", "anonymousId": "anon-1",
            "payload": {"email": "a@example.com"}}),
        )
        .unwrap();
        assert_eq!(env.user.as_str(), "42");
        assert_eq!(env.person, PersonRef::id(&env.user));
        assert_eq!(env.anonymous_id.unwrap().as_str(), "anon-1");

        // The gateway adds `anonymous_id` to the attributes: it must fit Customer.io's 300.
        let full: serde_json::Map<String, Value> =
            (0..298).map(|n| (format!("a{n}"), json!(n))).collect();
        let e = parse(
            json!({"type": "identify", "userId": "42", "anonymousId": "anon-1",
            "payload": full}),
        )
        .unwrap_err();
        assert_eq!(e.field, "payload", "{e:?}");
        assert!(e.reason.contains("anonymous_id makes one more"), "{e:?}");
    }

    #[test]
    fn a_screen_view_is_named() {
        let env = parse(json!({"type": "screen", "userId": "42",
            "payload": {"name": "Checkout", "data": {"step": 2}}}))
        .unwrap();
        assert_eq!(env.kind.route(), Route::Track);
        match env.operation {
            Operation::Screen(view) => assert_eq!(view.name, "Checkout"),
            other => panic!("unexpected {other:?}"),
        }
        let e = parse(json!({"type": "screen", "userId": "42", "payload": {"path": "/x"}}))
            .unwrap_err();
        assert_eq!(e.field, "payload.name");
    }

    #[test]
    fn a_segment_membership_names_a_manual_segment() {
        let env = parse(json!({"type": "segment", "userId": "42",
            "payload": {"segmentId": 7, "action": "remove"}}))
        .unwrap();
        assert_eq!(env.kind.route(), Route::Identify);
        assert_eq!(
            env.operation,
            Operation::Segment {
                segment_id: 7,
                add: false
            }
        );
        for (payload, field) in [
            (json!({"action": "add"}), "payload.segmentId"),
            (
                json!({"segmentId": 0, "action": "add"}),
                "payload.segmentId",
            ),
            (
                json!({"segmentId": "x", "action": "add"}),
                "payload.segmentId",
            ),
            (json!({"segmentId": 7, "action": "join"}), "payload.action"),
        ] {
            let e =
                parse(json!({"type": "segment", "userId": "42", "payload": payload})).unwrap_err();
            assert_eq!(e.field, field);
        }
    }

    #[test]
    fn every_type_has_a_route() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::parse(t.as_str()), Some(t));
            let _ = t.route();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_bytes_parse_or_fail_precisely(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = Envelope::parse(&bytes) {
                prop_assert!(!e.reason.is_empty());
            }
        }

        #[test]
        fn any_json_envelope_parses_or_fails_precisely(
            kind in prop_oneof![Just("identify".to_string()), Just("track".to_string()),
                Just("transactional".to_string()), Just("page".to_string()), Just("merge".to_string()),
                Just("screen".to_string()),
                Just("addDevice".to_string()), ".{0,12}"],
            user in ".{0,200}",
            payload in arb_json(),
        ) {
            let v = json!({"type": kind, "userId": user, "payload": payload});
            if let Err(e) = parse(v) {
                prop_assert!(!e.reason.is_empty());
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::hash_map(
                    prop_oneof![
                        Just("name".to_string()),
                        Just("data".to_string()),
                        Just("path".to_string()),
                        Just("deviceId".to_string()),
                        Just("platform".to_string()),
                        Just("primary".to_string()),
                        Just("template".to_string()),
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
