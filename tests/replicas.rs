//! Two gateway processes on one vhost; one is killed with SIGKILL mid-run (issue 3).
//! The survivor takes over the partitions (single-active-consumer), nothing is lost, and each
//! user's order holds: replays resend from the oldest unacked message onwards.

mod common;

use cio_gateway::broker::topology::{BindingSpec, DLQ_QUEUE, PROCESSED_EXCHANGE, QueueKind, QueueSpec};
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

fn spawn_replica(vhost: &TestVhost, track_url: &str, app_url: &str) -> Replica {
    let child = Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .arg("serve")
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
        latency_ms: 5,
        ..Faults::default()
    });
    let mut topology = Topology::new(4);
    topology.queues.push(QueueSpec { name: TAP.into(), kind: QueueKind::Classic });
    topology.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: TAP.into(),
        routing_key: String::new(),
    });
    let producer = broker::connect(&vhost.url, topology).await.unwrap();
    let publisher = Publisher::new(producer.clone());

    let mut first = spawn_replica(&vhost, &sandbox.track_url(), &sandbox.app_url());
    let second = spawn_replica(&vhost, &sandbox.track_url(), &sandbox.app_url());

    let (users, per_user) = (100u32, 30u32);
    for seq in 0..per_user {
        for u in 0..users {
            let event = json!({"type": "track", "userId": format!("user-{u}"),
                "correlationId": ulid::Ulid::new().to_string(),
                "payload": {"name": "step", "data": {"seq": seq}}});
            publisher.publish(event).await.unwrap();
        }
    }
    let total = (users * per_user) as u64;
    let depth = |q: &str| vhost.queue_depths().get(q).copied().unwrap_or(0);
    assert!(eventually(Duration::from_secs(60), || depth(TAP) >= total / 5).await);
    // Which replica is active is up to RabbitMQ; kill the first, active or standby.
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let done = eventually(Duration::from_secs(120), || depth(TAP) >= total).await;
    assert!(done, "processed {} of {total}", depth(TAP));
    for u in 0..users {
        let user = format!("user-{u}");
        let records = sandbox.sandbox.records_for(&user);
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| !r.duplicate)
            .filter_map(|r| r.body.pointer("/attributes/seq").or(r.body.pointer("/data/seq")))
            .filter_map(|v| v.as_u64())
            .collect();
        // Events carry their ULID as `id`: Customer.io (and the sandbox) drop resends.
        assert_eq!(seqs, (0..per_user as u64).collect::<Vec<_>>(), "user {user}");
        let ids: BTreeSet<_> = records.iter().filter_map(|r| r.event_id.clone()).collect();
        assert_eq!(ids.len(), per_user as usize, "user {user}: every event has its id");
    }
    assert_eq!(depth(DLQ_QUEUE), 0);
    drop(second);
    producer.close().await;
}
