//! Two gateway processes on one vhost; one is killed with SIGKILL mid-run (issue 3).
//! The survivor takes over the partitions (single-active-consumer), nothing is lost, and each
//! user's order holds: replays resend from the oldest unacked message onwards.

mod common;

use cio_gateway::broker::topology::{
    BindingSpec, DLQ_QUEUE, PROCESSED_EXCHANGE, QueueKind, QueueSpec,
};
use cio_gateway::broker::{self, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually};
use serde_json::json;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TAP: &str = "test.processed";

/// Kills the child on drop, so a failing test leaves no gateway running.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `CIO_TEST_PARTITIONER=builtin`: the gateway's own partitioner (no plugin).
fn partitioner() -> String {
    std::env::var("CIO_TEST_PARTITIONER").unwrap_or_else(|_| "auto".into())
}

fn spawn_replica(vhost: &TestVhost, track_url: &str, app_url: &str) -> Replica {
    let child = Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .arg("serve")
        .env("GATEWAY__BROKER__PARTITIONER", partitioner())
        .env("GATEWAY__BROKER__URL", &vhost.url)
        .env("GATEWAY__BROKER__PARTITIONS", "4")
        .env("GATEWAY__HTTP__ADDR", "127.0.0.1:0")
        .env("GATEWAY__CUSTOMERIO__TRACK_URL", track_url)
        .env("GATEWAY__CUSTOMERIO__APP_URL", app_url)
        .env("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000")
        .env("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5")
        .env("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway binary starts");
    Replica(child)
}

#[actix_rt::test]
async fn sigkill_of_one_replica_loses_nothing_and_keeps_order() {
    let vhost = TestVhost::new("replicas");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        // Slow enough that the kill lands mid-run: each user's events go one round trip at a time.
        latency_ms: 100,
        ..Faults::default()
    });
    let mut topology = Topology::new(4);
    if partitioner() == "builtin" {
        topology = topology.routed_by_gateway();
    }
    topology.queues.push(QueueSpec {
        name: TAP.into(),
        kind: QueueKind::Classic,
    });
    topology.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: TAP.into(),
        routing_key: String::new(),
    });
    let producer = broker::connect(&vhost.url, topology).await.unwrap();
    let publisher = Publisher::new(producer.clone());

    // The first replica becomes the active consumer of every partition.
    let mut first = spawn_replica(&vhost, &sandbox.track_url(), &sandbox.app_url());
    let partitions_consumed_by = |n: u64| {
        let counts = vhost.consumer_counts();
        (0..4).all(|i| counts.get(&format!("customerio.partition.{i}")) == Some(&n))
    };
    assert!(eventually(Duration::from_secs(30), || partitions_consumed_by(1)).await);
    // The second registers behind it: a standby until the first goes.
    let second = spawn_replica(&vhost, &sandbox.track_url(), &sandbox.app_url());
    assert!(eventually(Duration::from_secs(30), || partitions_consumed_by(2)).await);

    let (users, per_user) = (100u32, 40u32);
    for seq in 0..per_user {
        let round = (0..users).map(|u| {
            publisher.publish(json!({"type": "track", "userId": format!("user-{u}"),
                "correlationId": ulid::Ulid::new().to_string(),
                "payload": {"name": "step", "data": {"seq": seq}}}))
        });
        for published in futures::future::join_all(round).await {
            published.unwrap();
        }
    }
    let total = (users * per_user) as u64;
    let depth = |q: &str| vhost.queue_depths().get(q).copied().unwrap_or(0);
    assert!(eventually(Duration::from_secs(60), || depth(TAP) >= total / 5).await);
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(depth(TAP) < total, "the kill must land mid-run");
    let before_kill = sandbox.sandbox.stats();

    // Every event reaches the sandbox (the tap alone is no measure: a message redelivered
    // after the kill is processed again), then every one has its processed event.
    let all_delivered = || {
        (0..users).all(|u| {
            let ids: BTreeSet<_> = sandbox
                .sandbox
                .records_for(&format!("user-{u}"))
                .into_iter()
                .filter_map(|r| r.event_id)
                .collect();
            ids.len() == per_user as usize
        })
    };
    assert!(
        eventually(Duration::from_secs(120), all_delivered).await,
        "not everything delivered"
    );
    let done = eventually(Duration::from_secs(30), || depth(TAP) >= total).await;
    assert!(done, "processed {} of {total}", depth(TAP));
    for u in 0..users {
        let user = format!("user-{u}");
        let records = sandbox.sandbox.records_for(&user);
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| !r.duplicate)
            .filter_map(|r| {
                r.body
                    .pointer("/attributes/seq")
                    .or(r.body.pointer("/data/seq"))
            })
            .filter_map(|v| v.as_u64())
            .collect();
        // Events carry their ULID as `id`: Customer.io (and the sandbox) drop resends.
        assert_eq!(
            seqs,
            (0..per_user as u64).collect::<Vec<_>>(),
            "user {user}"
        );
        let ids: BTreeSet<_> = records.iter().filter_map(|r| r.event_id.clone()).collect();
        assert_eq!(
            ids.len(),
            per_user as usize,
            "user {user}: every event has its id"
        );
    }
    assert_eq!(depth(DLQ_QUEUE), 0);
    assert!(
        sandbox.sandbox.stats().accepted_ops > before_kill.accepted_ops,
        "the standby replica delivered the rest"
    );
    drop(second);
    producer.close().await;
}
