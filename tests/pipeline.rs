//! The delivery pipeline against the real RabbitMQ and the sandbox (issue 3's "Show").
//!
//! Every test has its own vhost; "Customer.io" is a sandbox on an ephemeral port. Each message
//! carries its position `seq` in its payload, so what the sandbox received tells order and loss.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::{
    BindingSpec, DLQ_QUEUE, PROCESSED_EXCHANGE, QueueKind, QueueSpec, TRACK_EXCHANGE,
};
use cio_gateway::broker::{self, Publish, SharedBroker, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, Record, RunningSandbox, SandboxConfig};
use common::{TestVhost, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PROCESSED_TAP: &str = "test.processed";
const PARTITIONS: u16 = 4;

/// The gateway's topology plus a queue that taps `customerio.processed` for the test.
fn topology_with_tap() -> Topology {
    let mut t = Topology::new(PARTITIONS);
    t.queues.push(QueueSpec {
        name: PROCESSED_TAP.into(),
        kind: QueueKind::Classic,
    });
    t.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: PROCESSED_TAP.into(),
        routing_key: String::new(),
    });
    t
}

async fn producer(vhost: &TestVhost) -> SharedBroker {
    broker::connect(&vhost.url, topology_with_tap())
        .await
        .expect("test producer connects")
}

fn gateway_env<'a>(
    vhost: &'a TestVhost,
    sandbox: &'a RunningSandbox,
) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", PARTITIONS.to_string()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
        ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
        ("GATEWAY__CUSTOMERIO__APP_RPS", "1000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "30".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "5".into()),
        ("GATEWAY__TEMPLATES__WELCOME", "7".into()),
    ]
}

async fn start_gateway(vars: &[(&'static str, String)]) -> Gateway {
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start(common::settings(&pairs))
        .await
        .expect("gateway starts")
}

/// The n-th message of a user: identify, track and transactional interleaved.
fn envelope(user: &str, seq: u32) -> Value {
    let correlation_id = ulid::Ulid::new().to_string();
    match seq % 5 {
        0 | 1 => json!({"type": "identify", "userId": user, "correlationId": correlation_id,
            "payload": {"seq": seq, "plan": "pro"}}),
        2 | 3 => json!({"type": "track", "userId": user, "correlationId": correlation_id,
            "payload": {"name": "step", "data": {"seq": seq}}}),
        _ => json!({"type": "transactional", "userId": user, "correlationId": correlation_id,
            "payload": {"template": "welcome", "to": format!("{user}@example.com"),
                "message_data": {"seq": seq}}}),
    }
}

/// The `seq` a sandbox record carries, wherever its operation keeps it.
fn seq_of(record: &Record) -> Option<u64> {
    let body = &record.body;
    [
        body.pointer("/attributes/seq"),
        body.pointer("/seq"),
        body.pointer("/data/seq"),
        body.pointer("/message_data/seq"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_u64)
}

/// What Customer.io keeps of a user's stream: events with an already seen `id` are dropped.
fn delivered_seqs(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| !r.duplicate)
        .filter_map(seq_of)
        .collect()
}

/// Order holds when the first deliveries are exactly 0..n, and any repeat is a replay that
/// resends from an earlier point onwards (it never jumps ahead), ending at the newest.
fn assert_ordered(user: &str, seqs: &[u64], n: u64) {
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for s in seqs {
        if seen.insert(*s) {
            first.push(*s);
        }
    }
    assert_eq!(
        first,
        (0..n).collect::<Vec<_>>(),
        "user {user}: lost or reordered: {seqs:?}"
    );
    for pair in seqs.windows(2) {
        assert!(
            pair[1] == pair[0] + 1 || pair[1] <= pair[0],
            "user {user}: jumped from {} to {}: {seqs:?}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(
        seqs.last(),
        Some(&(n - 1)),
        "user {user}: does not end at the newest"
    );
}

async fn publish_all(publisher: &Publisher, users: usize, per_user: u32) -> usize {
    // Interleaved across users, in order within each user.
    let mut count = 0;
    for seq in 0..per_user {
        let sends = (0..users).map(|u| publisher.publish(envelope(&format!("user-{u}"), seq)));
        for result in futures::future::join_all(sends).await {
            result.expect("published with confirm");
            count += 1;
        }
    }
    count
}

fn depth(vhost: &TestVhost, queue: &str) -> u64 {
    vhost.queue_depths().get(queue).copied().unwrap_or(0)
}

#[actix_rt::test]
async fn ordered_exactly_once_under_503s_and_429s() {
    let vhost = TestVhost::new("pipeline-faults");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        error_rate: 0.2,
        error_status: 503,
        ..Faults::default()
    });
    // A request budget below what the gateway may send makes the sandbox answer 429s too.
    sandbox.sandbox.set_rps(Some(150));
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox)).await;

    let (users, per_user) = (200, 50);
    let published = publish_all(&Publisher::new(producer.clone()), users, per_user).await;
    assert_eq!(published, users * per_user as usize);

    let done = eventually(Duration::from_secs(240), || {
        depth(&vhost, PROCESSED_TAP) >= published as u64
    })
    .await;
    assert!(
        done,
        "processed {} of {published}",
        depth(&vhost, PROCESSED_TAP)
    );

    let stats = sandbox.sandbox.stats();
    assert!(
        stats.injected_failures > 0,
        "the sandbox injected no 503: {stats:?}"
    );
    assert!(
        stats.rate_limited > 0,
        "the sandbox answered no 429: {stats:?}"
    );
    for u in 0..users {
        let user = format!("user-{u}");
        let seqs = delivered_seqs(&sandbox.sandbox.records_for(&user));
        // Nothing crashed: every message exactly once, in order.
        assert_eq!(
            seqs,
            (0..per_user as u64).collect::<Vec<_>>(),
            "user {user}"
        );
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE), 0);
    assert_eq!(depth(&vhost, PROCESSED_TAP), published as u64);
    gateway.shutdown().await;
    producer.close().await;
}

#[actix_rt::test]
async fn rejected_user_is_dead_lettered_and_others_proceed() {
    let vhost = TestVhost::new("pipeline-rejected");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([("user-0".to_string(), 400)]),
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox)).await;

    let published = publish_all(&Publisher::new(producer.clone()), 5, 4).await;
    // Unparseable bodies and an unknown template are invalid, and do not stop the gateway.
    producer
        .publish(Publish::new(
            TRACK_EXCHANGE,
            "user-9",
            b"{not json".to_vec(),
        ))
        .await
        .unwrap();
    Publisher::new(producer.clone())
        .publish(json!({"type": "transactional", "userId": "user-9",
            "payload": {"template": "no-such-template"}}))
        .await
        .unwrap();
    let user0 = 4; // every message of user-0 is rejected
    let expected_dead = user0 + 2;
    let settled = eventually(Duration::from_secs(60), || {
        depth(&vhost, DLQ_QUEUE) == expected_dead
            && depth(&vhost, PROCESSED_TAP) == (published as u64 - user0)
    })
    .await;
    assert!(
        settled,
        "dlq {} processed {}",
        depth(&vhost, DLQ_QUEUE),
        depth(&vhost, PROCESSED_TAP)
    );
    for u in 1..5 {
        let seqs = delivered_seqs(&sandbox.sandbox.records_for(&format!("user-{u}")));
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }

    // Read the dead letters back: fields and headers of CONTRACT §5.
    let mut stream = producer.consume(DLQ_QUEUE, 10).await.unwrap();
    let mut kinds = BTreeMap::new();
    for _ in 0..expected_dead {
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["status"], "failed");
        assert!(body["attempts"].is_u64() && body["processingTime"].is_u64());
        assert!(
            d.headers.contains_key("x-original-exchange"),
            "{:?}",
            d.headers
        );
        assert!(d.headers.contains_key("x-original-routing-key"));
        let kind = body["errorKind"].as_str().unwrap().to_string();
        if kind == "invalid" && body.get("raw").is_some() {
            assert_eq!(body["raw"], "{not json");
        }
        if body["payload"]["template"] == "no-such-template" {
            assert!(body["error"].as_str().unwrap().contains("no-such-template"));
        }
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(kinds.get("rejected"), Some(&4));
    assert_eq!(kinds.get("invalid"), Some(&2));
    drop(stream);
    assert!(gateway.state.is_ready(), "the gateway keeps running");
    gateway.shutdown().await;
    producer.close().await;
}

#[actix_rt::test]
async fn recovers_when_rabbitmq_closes_all_connections() {
    let vhost = TestVhost::new("pipeline-reconnect");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Slow enough that the close lands mid-run.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox)).await;
    let (users, per_user) = (50, 20);
    let published = publish_all(&Publisher::new(producer.clone()), users, per_user).await as u64;

    let midway = eventually(Duration::from_secs(60), || {
        depth(&vhost, PROCESSED_TAP) >= published / 4
    })
    .await;
    assert!(midway);
    vhost.close_connections();
    let producer = producer_after_close(&vhost).await;

    let done = eventually(Duration::from_secs(120), || {
        depth(&vhost, PROCESSED_TAP) >= published
    })
    .await;
    assert!(
        done,
        "processed {} of {published}",
        depth(&vhost, PROCESSED_TAP)
    );
    for u in 0..users {
        let user = format!("user-{u}");
        assert_ordered(
            &user,
            &delivered_seqs(&sandbox.sandbox.records_for(&user)),
            per_user as u64,
        );
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE), 0);
    assert!(
        eventually(Duration::from_secs(10), || gateway.state.is_ready()).await,
        "ready again after reconnecting"
    );
    gateway.shutdown().await;
    producer.close().await;
}

/// The test's own connection was closed too; it reconnects like any client.
async fn producer_after_close(vhost: &TestVhost) -> SharedBroker {
    producer(vhost).await
}
