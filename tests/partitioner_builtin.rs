//! `broker.partitioner = builtin`: partitions with nothing but core RabbitMQ. The producer
//! exchanges feed one intake queue whose single active consumer (a replica) forwards each
//! message to its partition, forward and ack in one transaction. Killing that replica while
//! producers publish loses nothing, forwards nothing twice out of place, and keeps each user's
//! order: the standby takes the intake queue over where the commit left it.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::broker::topology::{DLQ_QUEUE, INTAKE_QUEUE};
use cio_gateway::broker::{self, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually};
use faults::{
    ChildGateway, PARTITIONS, TAP, check_all_users, delivered_seqs, gateway_env,
    publish_range_with, user_name, with_tap,
};
use std::collections::BTreeSet;
use std::time::Duration;

#[actix_rt::test]
async fn killing_the_forwarding_replica_mid_stream_loses_nothing_and_keeps_order() {
    let vhost = TestVhost::new("builtin-partitioner");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Slow enough that deliveries are still under way when the kill lands.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    // The builtin topology (no `x-modulus-hash` exchange) with the tests' tap.
    let topology = with_tap(Topology::new(PARTITIONS).routed_by_gateway());
    let producer = broker::connect(&vhost.url, topology).await.unwrap();
    let publisher = Publisher::new(producer.clone());
    let env = gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &[("GATEWAY__BROKER__PARTITIONER", "builtin".into())],
    );
    let dir = tempfile::tempdir().unwrap();
    let consumed_by = |n: u64| {
        let counts = vhost.consumer_counts();
        counts.get(INTAKE_QUEUE) == Some(&n)
            && (0..PARTITIONS).all(|i| counts.get(&format!("customerio.partition.{i}")) == Some(&n))
    };
    // The first replica forwards the intake queue and consumes every partition.
    let mut first = ChildGateway::spawn(&env, dir.path(), "first");
    assert!(
        eventually(Duration::from_secs(30), || consumed_by(1)).await,
        "{}",
        first.log()
    );
    let second = ChildGateway::spawn(&env, dir.path(), "second");
    assert!(
        eventually(Duration::from_secs(30), || consumed_by(2)).await,
        "{}",
        second.log()
    );

    let (users, per_user) = (60usize, 60u64);
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move { publish_range_with(&publisher, users, 0, per_user, |_, _| "track").await }
    });
    // Killed while producers still publish into the intake queue it forwards.
    let total = users as u64 * per_user;
    let depth = |q: &str| vhost.queue_depths().get(q).copied().unwrap_or(0);
    assert!(eventually(Duration::from_secs(60), || depth(TAP) >= total / 6).await);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        !publishing.is_finished(),
        "the kill must land while publishing"
    );
    let sent = publishing.await.unwrap();
    assert_eq!(sent.len() as u64, total);

    let all_delivered = || {
        (0..users).all(|u| {
            let seqs: BTreeSet<u64> = delivered_seqs(&sandbox.sandbox.records_for(&user_name(u)))
                .into_iter()
                .collect();
            seqs.len() as u64 == per_user
        })
    };
    assert!(
        eventually(Duration::from_secs(120), all_delivered).await,
        "not everything delivered; survivor's log:\n{}",
        second.log()
    );
    // In order per user; a repeat only as a replay from an earlier point, and only of events
    // Customer.io drops by their id. A message forwarded twice would show as a jump.
    let repeats = check_all_users(&sandbox.sandbox, users, per_user);
    println!(
        "builtin partitioner, router killed: {} duplicate events dropped by id",
        repeats.duplicate_events
    );
    assert!(eventually(Duration::from_secs(30), || depth(INTAKE_QUEUE) == 0).await);
    assert_eq!(depth(DLQ_QUEUE), 0, "nothing dead-lettered");
    drop(second);
    producer.close().await;
}
