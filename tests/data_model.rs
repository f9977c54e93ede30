//! Customer.io's data model beyond people and events, through RabbitMQ and the sandbox on both
//! Track API versions: anonymous events, page and screen views merged into the person who
//! identifies with their anonymous id; screen views of a known person; objects and their
//! relationships to people, in order per object; envelopes that Customer.io has no call for
//! are dead-lettered, alone.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::app::Gateway;
use cio_gateway::broker::Publish;
use cio_gateway::broker::SharedBroker;
use cio_gateway::broker::topology::{DLQ_QUEUE, IDENTIFY_EXCHANGE};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Record, RunningSandbox, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use faults::{assert_ordered, delivered_seqs, depth, gateway_env, producer, start_gateway};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// One test's vhost, sandbox, producer connection (which declared the topology), gateway and
/// publisher.
struct Setup {
    vhost: TestVhost,
    sandbox: RunningSandbox,
    producer: SharedBroker,
    gateway: Gateway,
    publisher: Publisher,
}

impl Setup {
    async fn start(name: &str, config: SandboxConfig, extra: &[(&'static str, String)]) -> Self {
        let vhost = TestVhost::new(name);
        let sandbox = sandbox::spawn(config).await.unwrap();
        let producer = producer(&vhost).await;
        let gateway = start_gateway(&gateway_env(
            &vhost,
            &sandbox.track_url(),
            &sandbox.app_url(),
            extra,
        ))
        .await;
        let publisher = Publisher::new(producer.clone());
        Self {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        }
    }
}

/// What an anonymous record says it is: its type (v1 body `type`, v2 action) and name.
fn view_of(version: &str, record: &Record) -> (String, String) {
    let kind = if version == "v1" {
        record.body["type"].as_str().unwrap_or("event").to_string()
    } else {
        record.action.clone()
    };
    (kind, record.body["name"].as_str().unwrap_or("").to_string())
}

#[actix_rt::test]
async fn an_anonymous_visitor_who_signs_up_has_their_activity_merged() {
    for version in ["v1", "v2"] {
        let Setup {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        } = Setup::start(
            &format!("data-anonymous-{version}"),
            SandboxConfig::default(),
            &[("GATEWAY__DELIVERY__TRACK_API", version.to_string())],
        )
        .await;
        let anonymous = format!("anon-{version}");
        let user = format!("signed-up-{version}");

        for (kind, payload) in [
            (
                "track",
                json!({"name": "viewed_pricing", "data": {"plan": "pro"}}),
            ),
            ("page", json!({"path": "/pricing"})),
            ("screen", json!({"name": "Plans"})),
        ] {
            publisher
                .publish(json!({"type": kind, "anonymousId": anonymous, "payload": payload}))
                .await
                .unwrap();
        }
        let before = eventually(WAIT, || {
            sandbox.sandbox.records_of_anonymous(&anonymous).len() == 3
        })
        .await;
        let records = sandbox.sandbox.records_of_anonymous(&anonymous);
        assert!(before, "{version}: {records:#?}");
        let views: Vec<_> = records.iter().map(|r| view_of(version, r)).collect();
        assert_eq!(
            views,
            [
                ("event".to_string(), "viewed_pricing".to_string()),
                ("page".to_string(), "/pricing".to_string()),
                ("screen".to_string(), "Plans".to_string()),
            ],
            "{version}: in publish order, as anonymous events"
        );
        for r in &records {
            assert_eq!(r.user, None, "{version}: {r:?}");
            assert_eq!(r.merged_into, None, "{version}: nobody identified yet");
            if version == "v1" {
                assert_eq!(r.path, "/api/v1/events");
                assert_eq!(r.body["anonymous_id"], anonymous.as_str());
            } else {
                assert_eq!(r.body["identifiers"], json!({"anonymous_id": anonymous}));
            }
        }

        // The visitor signs up: the identify names the person and the anonymous id.
        publisher
            .publish(
                json!({"type": "identify", "userId": user, "anonymousId": anonymous,
                "payload": {"email": format!("{user}@example.com")}}),
            )
            .await
            .unwrap();
        publisher
            .publish(json!({"type": "screen", "userId": user, "payload": {"name": "Welcome"}}))
            .await
            .unwrap();
        let identified = eventually(WAIT, || sandbox.sandbox.records_for(&user).len() == 2).await;
        let own = sandbox.sandbox.records_for(&user);
        assert!(identified, "{version}: {own:#?}");
        let attributes = if version == "v1" {
            &own[0].body
        } else {
            &own[0].body["attributes"]
        };
        assert_eq!(own[0].action, "identify");
        assert_eq!(attributes["anonymous_id"], anonymous.as_str(), "{version}");
        assert_eq!(own[1].action, "screen");
        if version == "v1" {
            assert_eq!(own[1].body["type"], "screen");
        }
        assert_eq!(own[1].body["name"], "Welcome");
        assert!(
            sandbox
                .sandbox
                .records_of_anonymous(&anonymous)
                .iter()
                .all(|r| r.merged_into.as_deref() == Some(user.as_str())),
            "{version}: the anonymous activity belongs to {user} now"
        );

        // Customer.io also merges what arrives with the anonymous id soon after the identify.
        publisher
            .publish(json!({"type": "track", "anonymousId": anonymous,
                "payload": {"name": "late_click"}}))
            .await
            .unwrap();
        let late = eventually(WAIT, || {
            sandbox.sandbox.records_of_anonymous(&anonymous).len() == 4
        })
        .await;
        let records = sandbox.sandbox.records_of_anonymous(&anonymous);
        assert!(late, "{version}: {records:#?}");
        assert_eq!(records[3].merged_into.as_deref(), Some(user.as_str()));
        assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{version}");
        gateway.shutdown().await;
        producer.close().await;
    }
}

#[actix_rt::test]
async fn objects_and_their_relationships_arrive_in_order_per_object() {
    for version in ["v1", "v2"] {
        let Setup {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        } = Setup::start(
            &format!("data-objects-{version}"),
            SandboxConfig::default(),
            &[("GATEWAY__DELIVERY__TRACK_API", version.to_string())],
        )
        .await;
        let object = |id: &str, payload: Value| json!({"type": "object", "objectTypeId": "1", "objectId": id, "payload": payload});
        // Two objects' lives, interleaved; each in order.
        let steps = [
            (
                "acme",
                json!({"action": "identify", "attributes": {"name": "Acme"},
                "relationships": [{"identifiers": {"id": "42"}}]}),
            ),
            (
                "globex",
                json!({"action": "identify", "attributes": {"name": "Globex"}}),
            ),
            (
                "acme",
                json!({"action": "add_relationships",
                "relationships": [{"identifiers": {"email": "ops@acme.test"},
                    "relationship_attributes": {"role": "admin"}}]}),
            ),
            ("globex", json!({"action": "delete"})),
            (
                "acme",
                json!({"action": "delete_relationships",
                "relationships": [{"identifiers": {"id": "42"}}]}),
            ),
        ];
        for (id, payload) in &steps {
            publisher
                .publish(object(id, payload.clone()))
                .await
                .unwrap();
        }
        // A person's identify names the objects they belong to, as Customer.io's reserved
        // attribute.
        let member = format!("member-{version}");
        let relationships = json!([{"identifiers": {"object_type_id": "1", "object_id": "acme"}}]);
        publisher
            .publish(json!({"type": "identify", "userId": member,
                "payload": {"cio_relationships": relationships}}))
            .await
            .unwrap();

        let arrived = eventually(WAIT, || {
            sandbox.sandbox.records_of_object("1:acme").len() == 3
                && sandbox.sandbox.records_of_object("1:globex").len() == 2
                && sandbox.sandbox.records_for(&member).len() == 1
        })
        .await;
        assert!(arrived, "{version}: {:#?}", sandbox.sandbox.records());
        let actions = |object: &str| -> Vec<String> {
            sandbox
                .sandbox
                .records_of_object(object)
                .iter()
                .map(|r| r.action.clone())
                .collect()
        };
        assert_eq!(
            actions("1:acme"),
            ["identify", "add_relationships", "delete_relationships"],
            "{version}"
        );
        assert_eq!(actions("1:globex"), ["identify", "delete"], "{version}");
        let acme = sandbox.sandbox.records_of_object("1:acme");
        for r in &acme {
            // Track v1 has no objects: they take v2 `/entity` whatever the configured version.
            if version == "v1" {
                assert!(r.path.ends_with("/api/v2/entity"), "{}", r.path);
            }
            assert_eq!(r.body["type"], "object");
            assert_eq!(
                r.body["identifiers"],
                json!({"object_type_id": "1", "object_id": "acme"})
            );
        }
        assert_eq!(acme[0].body["attributes"]["name"], "Acme");
        assert_eq!(
            acme[0].body["cio_relationships"],
            json!([{"identifiers": {"id": "42"}}])
        );
        assert_eq!(
            acme[1].body["cio_relationships"][0]["relationship_attributes"],
            json!({"role": "admin"})
        );
        let identify = &sandbox.sandbox.records_for(&member)[0];
        let attributes = if version == "v1" {
            &identify.body
        } else {
            &identify.body["attributes"]
        };
        assert_eq!(attributes["cio_relationships"], relationships, "{version}");
        assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{version}");
        gateway.shutdown().await;
        producer.close().await;
    }
}

#[actix_rt::test]
async fn manual_segment_membership_follows_the_person_in_order() {
    for version in ["v1", "v2"] {
        let Setup {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        } = Setup::start(
            &format!("data-segments-{version}"),
            SandboxConfig::default(),
            &[("GATEWAY__DELIVERY__TRACK_API", version.to_string())],
        )
        .await;
        let user = format!("member-{version}");
        let email = format!("{user}@example.com");
        for envelope in [
            json!({"type": "identify", "userId": user, "payload": {"plan": "pro"}}),
            json!({"type": "segment", "userId": user, "payload": {"segmentId": 7, "action": "add"}}),
            json!({"type": "segment", "userId": user, "payload": {"segmentId": 7, "action": "remove"}}),
            // An email-keyed workspace names the person by email: `id_type=email`.
            json!({"type": "segment", "userId": user, "identifiers": {"email": email},
                "payload": {"segmentId": "8", "action": "add"}}),
        ] {
            publisher.publish(envelope).await.unwrap();
        }
        let arrived = eventually(WAIT, || {
            sandbox.sandbox.records_for(&user).len() == 3
                && sandbox.sandbox.records_for(&email).len() == 1
        })
        .await;
        assert!(arrived, "{version}: {:#?}", sandbox.sandbox.records());
        let own = sandbox.sandbox.records_for(&user);
        let actions: Vec<_> = own.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["identify", "add_to_segment", "remove_from_segment"],
            "{version}"
        );
        assert_eq!(own[1].path, "/api/v1/segments/7/add_customers");
        assert_eq!(own[1].body, json!({"segment_id": "7", "id_type": "id"}));
        let by_email = &sandbox.sandbox.records_for(&email)[0];
        assert_eq!(
            by_email.body,
            json!({"segment_id": "8", "id_type": "email"})
        );
        assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{version}");
        gateway.shutdown().await;
        producer.close().await;
    }
}

#[actix_rt::test]
async fn in_app_and_inbox_messages_are_sent_on_their_channels() {
    let Setup {
        vhost,
        sandbox,
        producer,
        gateway,
        publisher,
    } = Setup::start("data-channels", SandboxConfig::default(), &[]).await;
    for channel in ["in_app", "inbox_message"] {
        publisher
            .publish(json!({"type": "transactional", "userId": "reader",
                "payload": {"channel": channel, "transactional_message_id": "order_shipped",
                    "message_data": {"order": "ORD-1"}}}))
            .await
            .unwrap();
    }
    let sent = eventually(WAIT, || sandbox.sandbox.records_for("reader").len() == 2).await;
    let records = sandbox.sandbox.records_for("reader");
    assert!(sent, "{records:#?}");
    let paths: Vec<_> = records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/send/in_app", "/v1/send/inbox_message"]);
    for r in &records {
        assert_eq!(r.body["identifiers"], json!({"id": "reader"}));
        assert!(r.delivery_id.is_some());
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    gateway.shutdown().await;
    producer.close().await;
}

/// Publishes three triggers of broadcast 12 and one of 13 through a gateway allowed one
/// broadcast per `gateway_ms`, to a sandbox that allows one per `sandbox_ms`.
async fn trigger_broadcasts(tag: &str, gateway_ms: u64, sandbox_ms: u64) -> (Vec<Record>, u64) {
    let Setup {
        vhost,
        sandbox,
        producer,
        gateway,
        publisher,
    } = Setup::start(
        &format!("data-broadcasts-{tag}"),
        SandboxConfig {
            broadcast_interval: Duration::from_millis(sandbox_ms),
            ..SandboxConfig::default()
        },
        &[(
            "GATEWAY__CUSTOMERIO__BROADCAST_INTERVAL_MS",
            gateway_ms.to_string(),
        )],
    )
    .await;
    for (n, id) in [(1, 12), (2, 13), (3, 12), (4, 12)] {
        publisher
            .publish(json!({"type": "broadcast", "payload": {"broadcastId": id,
                "data": {"n": n}, "ids": ["42"]}}))
            .await
            .unwrap();
    }
    let triggers = || -> Vec<Record> {
        sandbox
            .sandbox
            .records()
            .into_iter()
            .filter(|r| r.action == "trigger_broadcast")
            .collect()
    };
    let all = eventually(WAIT, || triggers().len() == 4).await;
    assert!(all, "{tag}: {:#?}", sandbox.sandbox.records());
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{tag}");
    let rate_limited = sandbox.sandbox.stats().rate_limited;
    gateway.shutdown().await;
    producer.close().await;
    (triggers(), rate_limited)
}

#[actix_rt::test]
async fn broadcasts_keep_their_own_pace_and_their_order() {
    // The gateway's interval is a little longer than the one the sandbox enforces: not one 429.
    let (triggers, rate_limited) = trigger_broadcasts("paced", 400, 300).await;
    assert_eq!(rate_limited, 0, "the gateway kept the broadcast interval");
    for pair in triggers.windows(2) {
        let gap = pair[1].received_at_ms - pair[0].received_at_ms;
        assert!(gap >= 300, "triggers {gap} ms apart: {triggers:#?}");
    }
    let of_12: Vec<_> = triggers
        .iter()
        .filter(|r| r.path == "/v1/campaigns/12/triggers")
        .map(|r| r.body["trigger"]["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        of_12,
        [1, 3, 4],
        "one broadcast's triggers in publish order"
    );
    assert_eq!(triggers[0].body["trigger"]["ids"], json!(["42"]));

    // A workspace that allows fewer than configured answers 429s: each trigger waits for its
    // Retry-After, and all of them still arrive, in order, none dead-lettered.
    let (triggers, rate_limited) = trigger_broadcasts("throttled", 50, 700).await;
    assert!(rate_limited > 0, "the sandbox throttled nothing");
    let of_12: Vec<_> = triggers
        .iter()
        .filter(|r| r.path == "/v1/campaigns/12/triggers")
        .map(|r| r.body["trigger"]["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(of_12, [1, 3, 4]);
}

#[actix_rt::test]
async fn an_event_too_big_for_v2_goes_by_v1_in_the_persons_order() {
    let Setup {
        vhost,
        sandbox,
        producer,
        gateway,
        publisher,
    } = Setup::start(
        "data-v1-fallback",
        SandboxConfig::default(),
        &[("GATEWAY__DELIVERY__TRACK_API", "v2".to_string())],
    )
    .await;
    let blob = "x".repeat(60 * 1024);
    for (n, data) in [(0, json!({})), (1, json!({"blob": blob})), (2, json!({}))] {
        publisher
            .publish(json!({"type": "track", "userId": "big",
                "payload": {"name": format!("e{n}"), "data": data}}))
            .await
            .unwrap();
    }
    let arrived = eventually(WAIT, || sandbox.sandbox.records_for("big").len() == 3).await;
    let records = sandbox.sandbox.records_for("big");
    assert!(arrived, "{records:#?}");
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.api.as_str(), r.body["name"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [("track_v2", "e0"), ("track_v1", "e1"), ("track_v2", "e2")],
        "the 60 KB event went by v1, in order"
    );
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    gateway.shutdown().await;
    producer.close().await;
}

#[actix_rt::test]
async fn an_envelope_customerio_has_no_call_for_is_dead_lettered_alone() {
    let Setup {
        vhost,
        sandbox,
        producer,
        gateway,
        publisher,
    } = Setup::start("data-anonymous-invalid", SandboxConfig::default(), &[]).await;
    let anonymous = "anon-invalid";
    // A producer that does not validate: Customer.io identifies and deletes people, never an
    // anonymous id.
    for (key, body) in [
        (
            anonymous,
            json!({"type": "identify", "anonymousId": anonymous, "payload": {"plan": "pro"}}),
        ),
        (
            anonymous,
            json!({"type": "delete", "anonymousId": anonymous}),
        ),
        // Customer.io numbers object types from 1.
        (
            "object:0:acme",
            json!({"type": "object", "objectTypeId": "0", "objectId": "acme",
                "payload": {"action": "delete"}}),
        ),
    ] {
        producer
            .publish(Publish::new(
                IDENTIFY_EXCHANGE,
                key,
                serde_json::to_vec(&body).unwrap(),
            ))
            .await
            .unwrap();
    }
    publisher
        .publish(json!({"type": "track", "anonymousId": anonymous,
            "payload": {"name": "still_delivered"}}))
        .await
        .unwrap();
    let settled = eventually_async(WAIT, || async {
        depth(&vhost, DLQ_QUEUE).await == 3
            && sandbox.sandbox.records_of_anonymous(anonymous).len() == 1
    })
    .await;
    assert!(
        settled,
        "dlq {} records {:#?}",
        depth(&vhost, DLQ_QUEUE).await,
        sandbox.sandbox.records()
    );
    let mut stream = producer.consume(DLQ_QUEUE, 10).await.unwrap();
    let mut errors = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        let letter: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(letter["errorKind"], "invalid", "{letter}");
        errors.push(letter["error"].as_str().unwrap().to_string());
    }
    errors.sort();
    assert!(errors[0].starts_with("objectTypeId"), "{errors:?}");
    for error in &errors[1..] {
        assert!(error.contains("only track, page and screen"), "{error}");
    }
    drop(stream);
    gateway.shutdown().await;
    producer.close().await;
}

/// Objects, anonymous visitors and people, interleaved, through three replicas that take over
/// from each other: each key's messages are delivered by all three in turn, in order, none lost.
#[actix_rt::test]
async fn objects_visitors_and_people_keep_their_order_across_three_replicas() {
    let vhost = TestVhost::new("data-three-replicas");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let producer = producer(&vhost).await;
    let env = gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &[]);
    // The first to register is every partition's active consumer; the others stand by.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_gateway(&env).await);
    }
    let publisher = Publisher::new(producer.clone());
    let (keys, per_key, per_replica) = (8u64, 12u64, 4u64);
    let streams = |sandbox: &cio_gateway::sandbox::Sandbox| -> Vec<(String, Vec<u64>)> {
        (0..keys)
            .flat_map(|k| {
                [
                    (
                        format!("object 1:o{k}"),
                        sandbox.records_of_object(&format!("1:o{k}")),
                    ),
                    (
                        format!("visitor a{k}"),
                        sandbox.records_of_anonymous(&format!("a{k}")),
                    ),
                    (
                        format!("person p{k}"),
                        sandbox.records_for(&format!("p{k}")),
                    ),
                ]
            })
            .map(|(key, records)| (key, delivered_seqs(&records)))
            .collect()
    };
    let has_up_to = |sandbox: &cio_gateway::sandbox::Sandbox, n: u64| {
        streams(sandbox).iter().all(|(_, seqs)| {
            seqs.iter().collect::<std::collections::BTreeSet<_>>().len() as u64 == n
        })
    };
    // A third of every stream per replica; then the active one leaves and a standby takes over.
    for (turn, from) in (0..per_key).step_by(per_replica as usize).enumerate() {
        for seq in from..from + per_replica {
            for k in 0..keys {
                for envelope in [
                    json!({"type": "object", "objectTypeId": "1", "objectId": format!("o{k}"),
                        "payload": {"action": "identify", "attributes": {"seq": seq}}}),
                    json!({"type": "track", "anonymousId": format!("a{k}"),
                        "payload": {"name": "browse", "data": {"seq": seq}}}),
                    json!({"type": "track", "userId": format!("p{k}"),
                        "payload": {"name": "step", "data": {"seq": seq}}}),
                ] {
                    publisher.publish(envelope).await.unwrap();
                }
            }
        }
        let delivered = eventually(Duration::from_secs(60), || {
            has_up_to(&sandbox.sandbox, from + per_replica)
        })
        .await;
        assert!(delivered, "turn {turn}: {:?}", streams(&sandbox.sandbox));
        if turn < 2 {
            replicas.remove(0).shutdown().await;
        }
    }
    for (key, seqs) in streams(&sandbox.sandbox) {
        assert_ordered(&key, &seqs, per_key);
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    for gateway in replicas {
        gateway.shutdown().await;
    }
    producer.close().await;
}

/// Many people's changes to one segment share requests (Customer.io takes 1000 ids per
/// request), and each person's changes still arrive in their order.
#[actix_rt::test]
async fn segment_changes_of_many_people_share_requests_in_each_persons_order() {
    for version in ["v1", "v2"] {
        let Setup {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        } = Setup::start(
            &format!("data-segment-batches-{version}"),
            SandboxConfig::default(),
            &[
                ("GATEWAY__DELIVERY__TRACK_API", version.to_string()),
                ("GATEWAY__DELIVERY__BATCH_LINGER_MS", "50".to_string()),
            ],
        )
        .await;
        let people: Vec<String> = (0..120).map(|n| format!("seg-{version}-{n}")).collect();
        for action in ["add", "remove", "add"] {
            for person in &people {
                publisher
                    .publish(json!({"type": "segment", "userId": person,
                        "payload": {"segmentId": 9, "action": action}}))
                    .await
                    .unwrap();
            }
        }
        let all = eventually(WAIT, || {
            people
                .iter()
                .all(|p| sandbox.sandbox.records_for(p).len() == 3)
        })
        .await;
        assert!(
            all,
            "{version}: {} records",
            sandbox.sandbox.records().len()
        );
        for person in &people {
            let actions: Vec<_> = sandbox
                .sandbox
                .records_for(person)
                .iter()
                .map(|r| r.action.clone())
                .collect();
            assert_eq!(
                actions,
                ["add_to_segment", "remove_from_segment", "add_to_segment"],
                "{version}: {person}'s changes in their order"
            );
        }
        let requests = sandbox.sandbox.stats().requests;
        assert!(
            requests <= 90,
            "{version}: 360 changes took {requests} requests, not shared"
        );
        assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{version}");
        gateway.shutdown().await;
        producer.close().await;
    }
}

/// A Customer.io outage pauses every new kind: objects, anonymous events, segment changes,
/// in-app sends and broadcasts wait, then arrive in their order, none dead-lettered.
#[actix_rt::test]
async fn every_new_kind_waits_out_an_outage_then_arrives_in_order() {
    for version in ["v1", "v2"] {
        let Setup {
            vhost,
            sandbox,
            producer,
            gateway,
            publisher,
        } = Setup::start(
            &format!("data-outage-{version}"),
            SandboxConfig {
                broadcast_interval: Duration::from_millis(100),
                ..SandboxConfig::default()
            },
            &[
                ("GATEWAY__DELIVERY__TRACK_API", version.to_string()),
                ("GATEWAY__CUSTOMERIO__BROADCAST_INTERVAL_MS", "150".into()),
            ],
        )
        .await;
        let outage = Duration::from_secs(2);
        let outage_ends = chrono::Utc::now().timestamp_millis() + outage.as_millis() as i64;
        sandbox.sandbox.set_faults(sandbox::Faults {
            outage_ms: outage.as_millis() as u64,
            ..sandbox::Faults::default()
        });
        let (company, visitor, member, reader) = ("1:outage-co", "anon-outage", "member", "reader");
        for envelope in [
            json!({"type": "object", "objectTypeId": "1", "objectId": "outage-co",
                "payload": {"action": "identify", "attributes": {"n": 1}}}),
            json!({"type": "track", "anonymousId": visitor, "payload": {"name": "n1"}}),
            json!({"type": "segment", "userId": member, "payload": {"segmentId": 3, "action": "add"}}),
            json!({"type": "transactional", "userId": reader, "payload": {"channel": "in_app",
                "transactional_message_id": "t", "message_data": {"n": 1}}}),
            json!({"type": "broadcast", "payload": {"broadcastId": 21, "data": {"n": 1}}}),
            json!({"type": "object", "objectTypeId": "1", "objectId": "outage-co",
                "payload": {"action": "add_relationships",
                    "relationships": [{"identifiers": {"id": member}}]}}),
            json!({"type": "page", "anonymousId": visitor, "payload": {"path": "/n2"}}),
            json!({"type": "segment", "userId": member, "payload": {"segmentId": 3, "action": "remove"}}),
            json!({"type": "transactional", "userId": reader, "payload": {"channel": "in_app",
                "transactional_message_id": "t", "message_data": {"n": 2}}}),
            json!({"type": "broadcast", "payload": {"broadcastId": 21, "data": {"n": 2}}}),
        ] {
            publisher.publish(envelope).await.unwrap();
        }
        let triggers = || -> Vec<Record> {
            sandbox
                .sandbox
                .records()
                .into_iter()
                .filter(|r| r.action == "trigger_broadcast")
                .collect()
        };
        let arrived = eventually(WAIT, || {
            sandbox.sandbox.records_of_object(company).len() == 2
                && sandbox.sandbox.records_of_anonymous(visitor).len() == 2
                && sandbox.sandbox.records_for(member).len() == 2
                && sandbox.sandbox.records_for(reader).len() == 2
                && triggers().len() == 2
        })
        .await;
        let records = sandbox.sandbox.records();
        assert!(arrived, "{version}: {records:#?}");
        assert!(
            sandbox.sandbox.stats().injected_failures > 0,
            "{version}: the gateway never met the outage"
        );
        assert!(
            records.iter().all(|r| r.received_at_ms >= outage_ends - 50),
            "{version}: accepted during the outage: {records:#?}"
        );
        let actions = |records: Vec<Record>| -> Vec<String> {
            records.into_iter().map(|r| r.action).collect()
        };
        let object = actions(sandbox.sandbox.records_of_object(company));
        assert_eq!(object, ["identify", "add_relationships"], "{version}");
        let views: Vec<_> = sandbox
            .sandbox
            .records_of_anonymous(visitor)
            .iter()
            .map(|r| view_of(version, r))
            .collect();
        assert_eq!(
            views,
            [
                ("event".to_string(), "n1".to_string()),
                ("page".to_string(), "/n2".to_string())
            ],
            "{version}"
        );
        let segment = actions(sandbox.sandbox.records_for(member));
        assert_eq!(
            segment,
            ["add_to_segment", "remove_from_segment"],
            "{version}"
        );
        let sends: Vec<_> = sandbox
            .sandbox
            .records_for(reader)
            .iter()
            .map(|r| r.body["message_data"]["n"].as_i64())
            .collect();
        assert_eq!(sends, [Some(1), Some(2)], "{version}");
        let broadcasts: Vec<_> = triggers()
            .iter()
            .map(|r| r.body["trigger"]["data"]["n"].as_i64())
            .collect();
        assert_eq!(broadcasts, [Some(1), Some(2)], "{version}");
        assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "{version}");
        gateway.shutdown().await;
        producer.close().await;
    }
}

/// A workspace without in-app answers its sends 403: the channel is off for everyone, so the
/// sends wait (none dead-lettered) and go once it is enabled.
#[actix_rt::test]
async fn in_app_sends_wait_while_the_workspace_has_no_in_app() {
    let Setup {
        vhost,
        sandbox,
        producer,
        gateway,
        publisher,
    } = Setup::start("data-in-app-disabled", SandboxConfig::default(), &[]).await;
    sandbox.sandbox.set_faults(sandbox::Faults {
        disabled_channels: ["in_app".to_string()].into(),
        ..sandbox::Faults::default()
    });
    for n in 1..=3 {
        publisher
            .publish(
                json!({"type": "transactional", "userId": format!("in-app-{n}"),
                "payload": {"channel": "in_app", "transactional_message_id": "t",
                    "message_data": {"n": n}}}),
            )
            .await
            .unwrap();
    }
    let refused = eventually(WAIT, || sandbox.sandbox.stats().injected_failures >= 1).await;
    assert!(refused, "no send met the 403");
    assert!(
        sandbox.sandbox.records().is_empty(),
        "{:#?}",
        sandbox.sandbox.records()
    );
    assert_eq!(
        depth(&vhost, DLQ_QUEUE).await,
        0,
        "a disabled channel dead-letters nothing"
    );

    sandbox.sandbox.set_faults(sandbox::Faults::default());
    let sent = eventually(WAIT, || {
        (1..=3).all(|n| sandbox.sandbox.records_for(&format!("in-app-{n}")).len() == 1)
    })
    .await;
    assert!(sent, "{:#?}", sandbox.sandbox.records());
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    gateway.shutdown().await;
    producer.close().await;
}
