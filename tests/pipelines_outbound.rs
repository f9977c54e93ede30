//! Delivery through Customer.io's Data Pipelines API (`customerio.api = pipelines`), through
//! RabbitMQ and the sandbox's Pipelines routes: every envelope kind arrives as its documented
//! call (semantic events for deletes, suppressions and devices, `group` for objects, `alias`
//! for merges) with the correlation id as `messageId`; many users share batches, each in
//! order; a call over 32 KB is dead-lettered and never sent (the real API would answer 200 and
//! drop it); an outage or a revoked key pauses delivery and dead-letters nothing. The sandbox
//! itself answers over-limit and invalid calls as the real API does.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::app::Gateway;
use cio_gateway::broker::SharedBroker;
use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{
    self, Record, RunningSandbox, SANDBOX_PIPELINES_API_KEY, SandboxConfig,
};
use common::{TestVhost, eventually, eventually_async};
use faults::{assert_ordered, delivered_seqs, depth, gateway_env, producer, start_gateway};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    vhost: TestVhost,
    sandbox: RunningSandbox,
    producer: SharedBroker,
    gateway: Gateway,
    publisher: Publisher,
}

impl Setup {
    async fn start(name: &str, extra: &[(&'static str, String)]) -> Self {
        let vhost = TestVhost::new(name);
        let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
        let producer = producer(&vhost).await;
        let mut vars = vec![
            ("GATEWAY__CUSTOMERIO__API", "pipelines".to_string()),
            (
                "GATEWAY__CUSTOMERIO__PIPELINES_URL",
                sandbox.pipelines_url(),
            ),
            ("GATEWAY__CUSTOMERIO__PIPELINES_RPS", "1000".to_string()),
        ];
        vars.extend(extra.iter().cloned());
        let gateway = start_gateway(&gateway_env(
            &vhost,
            &sandbox.track_url(),
            &sandbox.app_url(),
            &vars,
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

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.producer.close().await;
        drop(self.vhost);
    }
}

fn actions(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.action.clone()).collect()
}

#[actix_rt::test]
async fn every_kind_arrives_as_its_pipelines_call() {
    let setup = Setup::start("pipelines-kinds", &[]).await;
    let (person, visitor, company) = ("p-1", "anon-p1", "1:co");
    let envelopes = [
        json!({"type": "page", "anonymousId": visitor, "payload": {"path": "/pricing"}}),
        json!({"type": "identify", "userId": person, "anonymousId": visitor,
            "payload": {"plan": "pro"}}),
        json!({"type": "track", "userId": person, "payload": {"name": "signup", "data": {"n": 1}}}),
        json!({"type": "page", "userId": person, "payload": {"path": "/home"}}),
        json!({"type": "screen", "userId": person, "payload": {"name": "Settings"}}),
        json!({"type": "addDevice", "userId": person,
            "payload": {"deviceId": "tok-1", "platform": "ios"}}),
        json!({"type": "deleteDevice", "userId": person, "payload": {"deviceId": "tok-1"}}),
        json!({"type": "suppress", "userId": person}),
        json!({"type": "unsuppress", "userId": person}),
        json!({"type": "merge", "userId": person,
            "payload": {"primary": {"id": person}, "secondary": {"id": "p-0"}}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "co",
            "payload": {"action": "identify", "attributes": {"name": "Co"},
                "relationships": [{"identifiers": {"id": person}}]}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "co",
            "payload": {"action": "delete_relationships",
                "relationships": [{"identifiers": {"id": person}}]}}),
        json!({"type": "object", "objectTypeId": "1", "objectId": "co",
            "payload": {"action": "delete"}}),
        json!({"type": "delete", "userId": person}),
    ];
    let mut ids = Vec::new();
    for envelope in envelopes {
        ids.push(setup.publisher.publish(envelope).await.unwrap().to_string());
    }
    let sb = &setup.sandbox.sandbox;
    let personal = || -> Vec<Record> {
        sb.records_for(person)
            .into_iter()
            .filter(|r| r.object.is_none())
            .collect()
    };
    let arrived = eventually(WAIT, || {
        personal().len() == 10 && sb.records_of_object(company).len() == 3
    })
    .await;
    let records = sb.records();
    assert!(arrived, "{records:#?}");
    assert!(records.iter().all(|r| r.api == "pipelines"), "{records:#?}");
    assert_eq!(
        actions(&personal()),
        [
            "identify",
            "event",
            "page",
            "screen",
            "add_device",
            "delete_device",
            "suppress",
            "unsuppress",
            "merge",
            "delete"
        ]
    );
    assert_eq!(
        actions(&sb.records_of_object(company)),
        ["group", "delete_relationships", "delete"]
    );
    // The anonymous view is merged into the person by the identify's anonymousId.
    let views = sb.records_of_anonymous(visitor);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].merged_into.as_deref(), Some(person));
    // Every call carries its envelope's correlation id, and the time it was published.
    for record in &records {
        let id = record.event_id.as_deref().expect("messageId");
        assert!(ids.contains(&id.to_string()), "{record:#?}");
        assert!(record.body["timestamp"].is_string(), "{record:#?}");
    }
    let device = &personal()[4];
    assert_eq!(device.body["event"], "Device Created or Updated");
    assert_eq!(device.body["context"]["device"]["token"], "tok-1");
    assert_eq!(sb.stats().dropped, 0);
    assert_eq!(depth(&setup.vhost, DLQ_QUEUE).await, 0);
    setup.stop().await;
}

#[actix_rt::test]
async fn users_share_batches_each_in_order() {
    let setup = Setup::start(
        "pipelines-order",
        &[("GATEWAY__DELIVERY__BATCH_LINGER_MS", "20".to_string())],
    )
    .await;
    let (users, per_user) = (20, 15u64);
    faults::publish_range_with(&setup.publisher, users, 0, per_user, |_, seq| {
        if seq % 3 == 0 { "identify" } else { "track" }
    })
    .await;
    let sb = &setup.sandbox.sandbox;
    let all = eventually(WAIT, || {
        sb.records().len() as u64 == users as u64 * per_user
    })
    .await;
    assert!(all, "{} of {}", sb.records().len(), users as u64 * per_user);
    for u in 0..users {
        let user = faults::user_name(u);
        assert_ordered(&user, &delivered_seqs(&sb.records_for(&user)), per_user);
    }
    let stats = sb.stats();
    assert!(
        stats.requests < stats.accepted_ops / 2,
        "operations were batched: {stats:?}"
    );
    assert_eq!(stats.dropped, 0);
    setup.stop().await;
}

#[actix_rt::test]
async fn a_call_over_32_kb_is_dead_lettered_and_never_sent() {
    let setup = Setup::start("pipelines-limit", &[]).await;
    // 48 properties of 800 bytes: within the Track API's limits, over Pipelines' 32 KB a call.
    let big: serde_json::Map<String, Value> = (0..48)
        .map(|i| (format!("p{i}"), Value::String("x".repeat(800))))
        .collect();
    let user = "big-1";
    setup
        .publisher
        .publish(json!({"type": "track", "userId": user,
            "payload": {"name": "huge", "data": big}}))
        .await
        .unwrap();
    setup
        .publisher
        .publish(json!({"type": "track", "userId": user, "payload": {"name": "after"}}))
        .await
        .unwrap();
    let settled = eventually_async(WAIT, || async {
        depth(&setup.vhost, DLQ_QUEUE).await == 1
            && setup.sandbox.sandbox.records_for(user).len() == 1
    })
    .await;
    assert!(settled, "{:#?}", setup.sandbox.sandbox.records());
    let records = setup.sandbox.sandbox.records_for(user);
    assert_eq!(records[0].body["event"], "after");
    assert_eq!(
        setup.sandbox.sandbox.stats().dropped,
        0,
        "nothing was sent to be dropped"
    );
    let mut dlq = setup.producer.consume(DLQ_QUEUE, 1).await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    let letter: Value = serde_json::from_slice(&letter.body).unwrap();
    assert_eq!(letter["errorKind"], "invalid", "{letter}");
    let error = letter["error"].as_str().unwrap();
    assert!(error.contains("32768"), "the limit is named: {error}");
    drop(dlq);
    setup.stop().await;
}

/// A request the Pipelines API refuses as invalid (strict mode's 400, naming no call) is split
/// until the operation at fault is alone: only it is dead-lettered, the others are delivered.
#[actix_rt::test]
async fn a_refused_operation_is_dead_lettered_alone_and_its_batch_delivered() {
    let setup = Setup::start(
        "pipelines-bisect",
        &[("GATEWAY__DELIVERY__BATCH_LINGER_MS", "50".to_string())],
    )
    .await;
    let sb = &setup.sandbox.sandbox;
    sb.set_faults(sandbox::Faults {
        reject_requests_of: ["user-3".to_string()].into(),
        ..sandbox::Faults::default()
    });
    let users = 8;
    faults::publish_range_with(&setup.publisher, users, 0, 1, |_, _| "track").await;
    let settled = eventually_async(WAIT, || async {
        depth(&setup.vhost, DLQ_QUEUE).await == 1 && sb.records().len() == users - 1
    })
    .await;
    assert!(settled, "{:#?}", sb.records());
    assert!(sb.records_for("user-3").is_empty());
    assert!(sb.stats().invalid >= 1, "the sandbox refused requests");
    let mut dlq = setup.producer.consume(DLQ_QUEUE, 1).await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    let letter: Value = serde_json::from_slice(&letter.body).unwrap();
    assert_eq!(letter["userId"], "user-3", "{letter}");
    drop(dlq);
    setup.stop().await;
}

/// A 503 outage and a revoked key (401) across users pause delivery: nothing is accepted
/// during it, nothing is dead-lettered, and afterwards every user's events arrive in order.
#[actix_rt::test]
async fn an_outage_or_a_revoked_key_pauses_and_dead_letters_nothing() {
    for status in [503u16, 401] {
        let setup = Setup::start(&format!("pipelines-outage-{status}"), &[]).await;
        let outage = Duration::from_secs(2);
        let ends = chrono::Utc::now().timestamp_millis() + outage.as_millis() as i64;
        let sb = &setup.sandbox.sandbox;
        sb.set_faults(sandbox::Faults {
            outage_ms: outage.as_millis() as u64,
            outage_status: status,
            ..sandbox::Faults::default()
        });
        let (users, per_user) = (5, 6u64);
        faults::publish_range_with(&setup.publisher, users, 0, per_user, |_, _| "track").await;
        let all = eventually(WAIT, || {
            sb.records().len() as u64 == users as u64 * per_user
        })
        .await;
        assert!(all, "{status}: {} delivered", sb.records().len());
        assert!(sb.stats().injected_failures > 0, "{status}: met the outage");
        let records = sb.records();
        assert!(
            records.iter().all(|r| r.received_at_ms >= ends - 50),
            "{status}: accepted during the outage"
        );
        for u in 0..users {
            let user = faults::user_name(u);
            assert_ordered(&user, &delivered_seqs(&sb.records_for(&user)), per_user);
        }
        assert_eq!(depth(&setup.vhost, DLQ_QUEUE).await, 0, "{status}");
        setup.stop().await;
    }
}

/// The sandbox's Pipelines routes behave as the real API documents: Basic auth with the key and
/// a blank password; over 32 KB a call (500 KB a batch) is a 200 that does not go through;
/// an invalid call is a 400 under `X-Strict-Mode: 1` and a dropped 200 without it.
#[actix_rt::test]
async fn the_sandbox_answers_as_the_pipelines_api_does() {
    let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value, key: &str, strict: bool| {
        let mut request = http
            .post(format!("{}{path}", sb.pipelines_url()))
            .basic_auth(key, Some(""))
            .json(&body);
        if strict {
            request = request.header("X-Strict-Mode", "1");
        }
        request.send()
    };
    let key = SANDBOX_PIPELINES_API_KEY;
    let ok = json!({"userId": "s-1", "event": "ok", "messageId": "m-1"});
    assert_eq!(
        post("/track", ok.clone(), "wrong", true)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post("/track", ok.clone(), key, true)
            .await
            .unwrap()
            .status(),
        200
    );
    // A resent messageId is recorded as a duplicate.
    assert_eq!(post("/track", ok, key, true).await.unwrap().status(), 200);
    let records = sb.sandbox.records_for("s-1");
    assert_eq!(records.iter().filter(|r| r.duplicate).count(), 1);

    let big = json!({"userId": "s-2", "event": "big", "properties": {"x": "y".repeat(40_000)}});
    assert_eq!(
        post("/track", big.clone(), key, true)
            .await
            .unwrap()
            .status(),
        200
    );
    let batch = json!({"batch": [
        {"type": "track", "userId": "s-2", "event": "small"},
        {"type": "track", "userId": "s-2", "event": "big",
            "properties": {"x": "y".repeat(40_000)}},
    ]});
    assert_eq!(
        post("/batch", batch, key, true).await.unwrap().status(),
        200
    );
    let huge: Vec<Value> = (0..20)
        .map(|i| {
            json!({"type": "track", "userId": "s-3", "event": format!("e{i}"),
            "properties": {"x": "y".repeat(30_000)}})
        })
        .collect();
    assert_eq!(
        post("/batch", json!({ "batch": huge }), key, true)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(actions(&sb.sandbox.records_for("s-2")), ["event"]);
    assert!(sb.sandbox.records_for("s-3").is_empty());
    assert_eq!(sb.sandbox.stats().dropped, 3);

    let nameless = json!({"batch": [{"type": "track", "userId": "s-4"}]});
    assert_eq!(
        post("/batch", nameless.clone(), key, true)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("/batch", nameless, key, false).await.unwrap().status(),
        200
    );
    assert!(sb.sandbox.records_for("s-4").is_empty());
    assert_eq!(sb.sandbox.stats().dropped, 4);
}
