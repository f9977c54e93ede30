//! The producer kit's `docs/envelope.schema.json` says what the gateway's Rust types accept:
//! for every sample, the schema's verdict equals `Envelope::from_value`'s, both ways.
//!
//! The schema cannot express byte-size limits of serialized values (attribute values at most
//! 1000 bytes, event data at most 100 KiB, the envelope at most 512 KiB); those are left to the
//! gateway (and its 400 answers) and are not sampled here.

use cio_gateway::domain::Envelope;
use serde_json::{Value, json};

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../docs/envelope.schema.json"))
        .expect("the schema is JSON");
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema is a valid JSON Schema"
    );
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn valid_samples() -> Vec<Value> {
    let ulid = "01JDZ5X3Q8W2V6T9N4M7K1P0RA";
    vec![
        // docs/reference.md §4's example.
        json!({"type": "track", "userId": "42", "payload": {"name": "signup", "data": {"plan": "pro"}},
            "timestamp": 1764115200000i64, "correlationId": ulid}),
        json!({"type": "identify", "userId": "42", "payload": {"email": "a@example.com", "plan": "pro"}}),
        json!({"type": "identify", "userId": "42"}),
        json!({"type": "identify", "userId": 42, "payload": {}}),
        json!({"type": "identify", "userId": "x".repeat(150), "payload": {"n": 1}}),
        json!({"type": "identify", "userId": "42", "timestamp": null, "correlationId": null, "payload": {}}),
        json!({"type": "identify", "userId": "42", "payload": {}, "extra": "ignored"}),
        json!({"type": "track", "userId": "7", "payload": {"name": "viewed", "timestamp": 1764115200}}),
        json!({"type": "track", "userId": "7", "payload": {"name": "viewed", "data": null}}),
        json!({"type": "page", "userId": "7", "payload": {"path": "/pricing", "data": {"ref": "ad"}}}),
        json!({"type": "screen", "userId": "7", "payload": {"name": "Checkout", "data": {"step": 2}}}),
        json!({"type": "track", "anonymousId": "anon-1", "payload": {"name": "viewed"}}),
        json!({"type": "page", "anonymousId": "anon-1", "userId": null, "identifiers": null,
            "payload": {"path": "/pricing"}}),
        json!({"type": "screen", "anonymousId": 17, "payload": {"name": "Home"}}),
        json!({"type": "identify", "userId": "7", "anonymousId": "anon-1", "payload": {"plan": "pro"}}),
        json!({"type": "track", "userId": "7", "anonymousId": "anon-1", "payload": {"name": "viewed"}}),
        // docs/reference.md §4's object example.
        json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
            "payload": {"action": "identify", "attributes": {"name": "Acme"},
                "relationships": [{"identifiers": {"id": "42"}}]},
            "timestamp": 1764115200000i64, "correlationId": ulid}),
        json!({"type": "object", "objectTypeId": 2, "objectId": 7, "payload": {"action": "delete"}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
            "payload": {"action": "add_relationships", "relationships": [{"identifiers": {"email": "a@b.c"},
                "relationship_attributes": {"role": "admin"}}]}}),
        json!({"type": "identify", "userId": "7", "payload": {"cio_relationships":
            [{"identifiers": {"object_type_id": "1", "object_id": "x".repeat(2000)}}]}}),
        json!({"type": "segment", "userId": "7", "payload": {"segmentId": 7, "action": "add"}}),
        json!({"type": "segment", "userId": "7", "identifiers": {"email": "a@b.c"},
            "payload": {"segmentId": "12", "action": "remove"}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 12}}),
        json!({"type": "broadcast", "payload": {"broadcastId": "12", "data": {"sale": "spring"},
            "emails": ["a@b.c"], "email_ignore_missing": true}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 12, "recipients": {"segment": {"id": 3}},
            "ids": null}}),
        json!({"type": "delete", "userId": "7"}),
        json!({"type": "suppress", "userId": "7", "payload": {}}),
        json!({"type": "unsuppress", "userId": "7"}),
        json!({"type": "addDevice", "userId": "7", "payload": {"deviceId": "tok", "platform": "ios"}}),
        json!({"type": "addDevice", "userId": "7", "payload": {"deviceId": "tok", "platform": "android",
            "data": {"app_version": "1.2"}}}),
        json!({"type": "deleteDevice", "userId": "7", "payload": {"deviceId": "tok"}}),
        json!({"type": "merge", "userId": "7", "payload": {"primary": "7", "secondary": {"email": "a@b.c"}}}),
        json!({"type": "merge", "userId": "7", "payload": {"primary": {"id": 7}, "secondary": {"cio_id": "abc"}}}),
        json!({"type": "transactional", "userId": "7", "payload": {"transactional_message_id": 3,
            "to": "a@b.c", "message_data": {"code": "123"}}}),
        json!({"type": "transactional", "userId": "7", "payload": {"transactional_message_id": "welcome"}}),
        json!({"type": "transactional", "userId": "7", "payload": {"template": "welcome", "channel": "sms"}}),
        json!({"type": "transactional", "userId": "7", "payload": {"template": "order", "channel": "in_app"}}),
        json!({"type": "transactional", "userId": "7", "payload": {"transactional_message_id": 9,
            "channel": "inbox_message", "message_data": {"n": 1}}}),
        json!({"type": "transactional", "userId": "7", "payload": {"template": "welcome",
            "identifiers": {"email": "a@b.c"}}}),
        json!({"type": "transactional", "userId": "7", "payload": {"body": "hi", "subject": "s",
            "from": "ops@example.com", "to": "a@b.c"}}),
        json!({"type": "transactional", "userId": "7", "payload": {"template": "w", "channel": null,
            "identifiers": null}}),
    ]
}

fn invalid_samples() -> Vec<Value> {
    vec![
        json!([]),
        json!("identify"),
        json!({"userId": "42"}),
        json!({"type": "fly", "userId": "42"}),
        json!({"type": 3, "userId": "42"}),
        json!({"type": "identify"}),
        json!({"type": "identify", "userId": ""}),
        json!({"type": "identify", "userId": "   "}),
        json!({"type": "identify", "userId": "a\nb"}),
        json!({"type": "identify", "userId": "x".repeat(151)}),
        json!({"type": "identify", "userId": true}),
        json!({"type": "identify", "userId": "1", "timestamp": -1}),
        json!({"type": "identify", "userId": "1", "timestamp": "yesterday"}),
        json!({"type": "identify", "userId": "1", "correlationId": ""}),
        json!({"type": "identify", "userId": "1", "correlationId": 7}),
        json!({"type": "identify", "userId": "1", "correlationId": "c".repeat(129)}),
        json!({"type": "identify", "userId": "1", "payload": 3}),
        json!({"type": "identify", "userId": "1", "payload": null}),
        json!({"type": "identify", "userId": "1", "payload": {"": 1}}),
        json!({"type": "identify", "userId": "1", "payload": {"k".repeat(151): 1}}),
        json!({"type": "track", "userId": "1"}),
        json!({"type": "track", "userId": "1", "payload": {}}),
        json!({"type": "track", "userId": "1", "payload": {"name": ""}}),
        json!({"type": "track", "userId": "1", "payload": {"name": "  "}}),
        json!({"type": "track", "userId": "1", "payload": {"name": 5}}),
        json!({"type": "track", "userId": "1", "payload": {"name": "n".repeat(101)}}),
        json!({"type": "track", "userId": "1", "payload": {"name": "x", "data": [1]}}),
        json!({"type": "track", "userId": "1", "payload": {"name": "x", "timestamp": 0}}),
        json!({"type": "page", "userId": "1", "payload": {}}),
        json!({"type": "screen", "userId": "1", "payload": {"path": "/home"}}),
        json!({"type": "screen", "userId": "1", "payload": {"name": ""}}),
        json!({"type": "identify", "anonymousId": "anon-1"}),
        json!({"type": "broadcast"}),
        json!({"type": "broadcast", "payload": {"broadcastId": 0}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 1, "ids": ["1"], "emails": ["a@b.c"]}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 1, "ids": []}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 1, "recipients": [1]}}),
        json!({"type": "broadcast", "payload": {"broadcastId": 1, "data": 3}}),
        json!({"type": "segment", "userId": "7", "payload": {"segmentId": 0, "action": "add"}}),
        json!({"type": "segment", "userId": "7", "payload": {"segmentId": "x", "action": "add"}}),
        json!({"type": "segment", "userId": "7", "payload": {"segmentId": 7, "action": "join"}}),
        json!({"type": "segment", "userId": "7", "payload": {"action": "add"}}),
        json!({"type": "segment", "userId": "7"}),
        json!({"type": "segment", "anonymousId": "a", "payload": {"segmentId": 7, "action": "add"}}),
        json!({"type": "object", "objectId": "acme", "payload": {"action": "delete"}}),
        json!({"type": "object", "objectTypeId": "0", "objectId": "acme", "payload": {"action": "delete"}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": " ", "payload": {"action": "delete"}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a", "payload": {"action": "merge"}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a"}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a",
            "payload": {"action": "add_relationships"}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a",
            "payload": {"action": "delete_relationships", "relationships": []}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a",
            "payload": {"action": "delete", "attributes": {"n": 1}}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a",
            "payload": {"action": "delete", "relationships": []}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "a",
            "payload": {"action": "identify", "relationships": [{"identifiers": {"phone": "1"}}]}}),
        json!({"type": "delete", "anonymousId": "anon-1"}),
        json!({"type": "track", "anonymousId": "", "payload": {"name": "x"}}),
        json!({"type": "track", "anonymousId": "a", "identifiers": {"id": "1"}, "payload": {"name": "x"}}),
        json!({"type": "track", "userId": null, "payload": {"name": "x"}}),
        json!({"type": "page", "userId": "1", "payload": {"path": ""}}),
        json!({"type": "addDevice", "userId": "1", "payload": {"deviceId": "t"}}),
        json!({"type": "addDevice", "userId": "1", "payload": {"deviceId": "t", "platform": "web"}}),
        json!({"type": "deleteDevice", "userId": "1", "payload": {}}),
        json!({"type": "merge", "userId": "1", "payload": {"primary": {"id": "a"}}}),
        json!({"type": "merge", "userId": "1", "payload": {"primary": "a", "secondary": {"id": "b", "email": "c"}}}),
        json!({"type": "merge", "userId": "1", "payload": {"primary": "a", "secondary": {}}}),
        json!({"type": "merge", "userId": "1", "payload": {"primary": "", "secondary": "b"}}),
        json!({"type": "transactional", "userId": "1", "payload": {}}),
        json!({"type": "transactional", "userId": "1"}),
        json!({"type": "transactional", "userId": "1", "payload": {"to": "a@b.c"}}),
        json!({"type": "transactional", "userId": "1", "payload": {"template": "w", "transactional_message_id": 1}}),
        json!({"type": "transactional", "userId": "1", "payload": {"template": ""}}),
        json!({"type": "transactional", "userId": "1", "payload": {"transactional_message_id": ""}}),
        json!({"type": "transactional", "userId": "1", "payload": {"transactional_message_id": null}}),
        json!({"type": "transactional", "userId": "1", "payload": {"template": "w", "channel": "fax"}}),
        json!({"type": "transactional", "userId": "1", "payload": {"template": "w", "message_data": []}}),
        json!({"type": "transactional", "userId": "1", "payload": {"template": "w", "to": 5}}),
        json!({"type": "transactional", "userId": "1", "payload": {"body": "b", "subject": "s",
            "from": "f", "channel": "push"}}),
        json!({"type": "transactional", "userId": "1", "payload": {"body": "b", "subject": "s",
            "from": "f", "channel": "in_app"}}),
    ]
}

#[test]
fn valid_samples_pass_both() {
    let schema = validator();
    for sample in valid_samples() {
        let rust = Envelope::from_value(&sample);
        assert!(rust.is_ok(), "Rust rejects {sample}: {:?}", rust.err());
        let errors: Vec<String> = schema.iter_errors(&sample).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "the schema rejects {sample}: {errors:?}");
    }
}

#[test]
fn invalid_samples_fail_both() {
    let schema = validator();
    for sample in invalid_samples() {
        assert!(
            Envelope::from_value(&sample).is_err(),
            "Rust accepts {sample}"
        );
        assert!(!schema.is_valid(&sample), "the schema accepts {sample}");
    }
}

/// Random envelopes built from the schema's vocabulary: wherever no byte-size limit is
/// involved, the schema and the Rust types agree.
#[test]
fn generated_envelopes_agree() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let schema = validator();
    let text = prop_oneof![
        1 => Just(String::new()),
        1 => Just(" ".to_string()),
        1 => Just("a\tb".to_string()),
        9 => "[a-z0-9@./]{1,12}",
    ];
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        text.clone().prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("data"),
        Just("path"),
        Just("deviceId"),
        Just("platform"),
        Just("primary"),
        Just("secondary"),
        Just("template"),
        Just("transactional_message_id"),
        Just("channel"),
        Just("to"),
        Just("identifiers"),
        Just("message_data"),
        Just("id"),
        Just("email"),
        Just("body"),
        Just("subject"),
        Just("from"),
        Just("timestamp"),
    ]
    .prop_map(str::to_string);
    let value = scalar.prop_recursive(2, 16, 4, move |inner| {
        prop_oneof![
            prop_oneof![Just("ios"), Just("android"), Just("email"), Just("sms")]
                .prop_map(Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let kind = prop_oneof![
        Just("identify"),
        Just("track"),
        Just("transactional"),
        Just("page"),
        Just("screen"),
        Just("delete"),
        Just("addDevice"),
        Just("deleteDevice"),
        Just("merge"),
        Just("nope"),
    ];
    // Named by a userId mostly, sometimes by an anonymousId only.
    let who = prop_oneof![3 => Just("userId"), 1 => Just("anonymousId")];
    let envelope =
        (kind, who, text, proptest::option::of(value)).prop_map(|(kind, who, user, payload)| {
            let mut v = json!({"type": kind, who: user});
            if let Some(p) = payload {
                v["payload"] = p;
            }
            v
        });
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        ..Config::default()
    });
    let valid = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&envelope, |sample| {
            let rust = Envelope::from_value(&sample).is_ok();
            let by_schema = schema.is_valid(&sample);
            prop_assert_eq!(rust, by_schema, "disagree on {}", sample);
            valid.fetch_add(usize::from(rust), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    // Both verdicts are well represented, so the agreement means something.
    let valid = valid.into_inner();
    assert!((300..3600).contains(&valid), "{valid} of 4000 valid");
}
