//! The producer examples (`examples/python/publish.py` with pika, `examples/node/publish.js`
//! with amqplib) against the real RabbitMQ: their envelopes reach the partition queues, one
//! user always in one partition and in order, routing key = userId, persistent JSON, and each
//! parses as the gateway's `Envelope`.
//!
//! The client libraries are installed by `examples/setup.sh` into `.cache/producer-kit`
//! (PyPI / npm; skipped when already there).

mod common;

use cio_gateway::broker::topology::{
    BindingSpec, IDENTIFY_EXCHANGE, QueueKind, QueueSpec, TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE,
};
use cio_gateway::broker::{self, SharedBroker, Topology};
use cio_gateway::domain::{Envelope, MessageType};
use common::TestVhost;
use futures::StreamExt;
use lapin::options::BasicGetOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PARTITIONS: u16 = 4;
const TAP: &str = "test.producer-tap";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    repo().join(".cache/producer-kit")
}

/// The gateway's topology plus a classic queue that copies everything producers publish.
fn topology() -> Topology {
    let mut t = Topology::new(PARTITIONS);
    t.queues.push(QueueSpec {
        name: TAP.into(),
        kind: QueueKind::Classic,
    });
    for exchange in [IDENTIFY_EXCHANGE, TRACK_EXCHANGE, TRANSACTIONAL_EXCHANGE] {
        t.queue_bindings.push(BindingSpec {
            source: exchange.into(),
            destination: TAP.into(),
            routing_key: String::new(),
        });
    }
    t
}

/// Installs a language's client library once; two tests installing into one cache at the same
/// time would race.
fn setup(language: &str) {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("bash")
        .arg(repo().join("examples/setup.sh"))
        .arg(language)
        .arg(cache())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "examples/setup.sh {language} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs an example; returns the correlation ids it printed as confirmed.
fn run_example(mut cmd: Command, vhost: &TestVhost) -> Vec<String> {
    let out = cmd
        .env("AMQP_URL", &vhost.url)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line per message");
            assert_eq!(v["published"], true);
            v["correlationId"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Everything in the partition queues: partition -> deliveries (routing key, envelope).
async fn drain_partitions(
    broker: &SharedBroker,
    expected: usize,
) -> BTreeMap<u16, Vec<(String, Envelope)>> {
    let mut found: BTreeMap<u16, Vec<(String, Envelope)>> = BTreeMap::new();
    let mut streams = Vec::new();
    for p in 0..PARTITIONS {
        let stream = broker
            .consume(&cio_gateway::broker::topology::partition_queue(p), 1000)
            .await
            .unwrap();
        streams.push((p, stream));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut total = 0;
    while total < expected && tokio::time::Instant::now() < deadline {
        for (p, stream) in &mut streams {
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_millis(50), stream.next()).await
            {
                let envelope = Envelope::parse(&d.body).expect("the example's envelope parses");
                d.acker.ack().await.unwrap();
                found
                    .entry(*p)
                    .or_default()
                    .push((d.routing_key.clone(), envelope));
                total += 1;
            }
        }
    }
    for (_, stream) in streams {
        stream.close().await;
    }
    found
}

/// The tap's messages, with their AMQP properties, via basic.get.
async fn tap_properties(vhost: &TestVhost) -> Vec<(Option<u8>, Option<String>)> {
    let connection = lapin::Connection::connect(&vhost.url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(TAP.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let props = &message.delivery.properties;
        out.push((
            *props.delivery_mode(),
            props
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_string()),
        ));
    }
    let _ = connection.close(200, "done".into()).await;
    out
}

/// Runs an example for five senders (users, anonymous visitors with `--anonymous-id`, or objects
/// of type 1 with `--object`).
async fn check(language: &str, example: Command, kind: MessageType, sender_flag: &str) {
    let vhost = TestVhost::new(&format!("producers-{language}-{}", kind.as_str()));
    let broker = broker::connect(&vhost.url, topology())
        .await
        .expect("topology declared");
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let per_user = 3;
    let mut example = example;
    example.arg(kind.as_str());
    for u in users {
        let sender = if sender_flag == "--object" {
            format!("1:{u}")
        } else {
            u.to_string()
        };
        example.args([sender_flag, &sender]);
    }
    example.args(["--count", &per_user.to_string()]);
    example.args([
        "--payload",
        r#"{"name": "step", "path": "/step", "plan": "pro", "action": "identify"}"#,
    ]);
    let ids = run_example(example, &vhost);
    let expected = users.len() * per_user;
    assert_eq!(
        ids.len(),
        expected,
        "{language}: one confirmed line per envelope"
    );

    let partitions = drain_partitions(&broker, expected).await;
    let mut seen_ids = BTreeSet::new();
    let mut partition_of: BTreeMap<String, u16> = BTreeMap::new();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (p, deliveries) in &partitions {
        for (routing_key, envelope) in deliveries {
            assert_eq!(
                routing_key,
                envelope.user.as_str(),
                "{language}: routing key = userId (anonymousId)"
            );
            assert_eq!(envelope.kind, kind);
            let previous = partition_of.insert(routing_key.clone(), *p);
            assert!(
                previous.is_none_or(|q| q == *p),
                "{language}: user {routing_key} in two partitions"
            );
            seen_ids.insert(envelope.correlation_id.clone().unwrap().to_string());
            order
                .entry(routing_key.clone())
                .or_default()
                .push(envelope.timestamp.unwrap());
        }
    }
    assert_eq!(
        seen_ids,
        ids.iter().cloned().collect(),
        "{language}: every envelope arrived once"
    );
    for (user, stamps) in order {
        assert!(
            stamps.is_sorted(),
            "{language}: {user}'s messages out of order: {stamps:?}"
        );
    }

    let props = tap_properties(&vhost).await;
    assert_eq!(props.len(), expected);
    for (mode, content_type) in props {
        assert_eq!(mode, Some(2), "{language}: persistent");
        assert_eq!(content_type.as_deref(), Some("application/json"));
    }
    broker.close().await;
}

#[tokio::test]
async fn python_pika_example_publishes_to_the_partitions() {
    setup("python");
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", cache().join("python"))
        .arg(repo().join("examples/python/publish.py"));
    check("python", cmd, MessageType::Track, "--user").await;
}

#[tokio::test]
async fn python_pika_example_publishes_anonymous_screen_views() {
    setup("python");
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", cache().join("python"))
        .arg(repo().join("examples/python/publish.py"));
    check("python", cmd, MessageType::Screen, "--anonymous-id").await;
}

#[tokio::test]
async fn python_pika_example_publishes_objects_by_their_own_key() {
    setup("python");
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", cache().join("python"))
        .arg(repo().join("examples/python/publish.py"));
    check("python", cmd, MessageType::Object, "--object").await;
}

#[tokio::test]
async fn node_amqplib_example_publishes_to_the_partitions() {
    setup("node");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", cache().join("node/node_modules"))
        .arg(repo().join("examples/node/publish.js"));
    check("node", cmd, MessageType::Identify, "--user").await;
}

#[tokio::test]
async fn node_amqplib_example_publishes_anonymous_page_views() {
    setup("node");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", cache().join("node/node_modules"))
        .arg(repo().join("examples/node/publish.js"));
    check("node", cmd, MessageType::Page, "--anonymous-id").await;
}

#[tokio::test]
async fn node_amqplib_example_publishes_objects_by_their_own_key() {
    setup("node");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", cache().join("node/node_modules"))
        .arg(repo().join("examples/node/publish.js"));
    check("node", cmd, MessageType::Object, "--object").await;
}
