//! A silent network partition between one replica and RabbitMQ (issue 21): the path is
//! black-holed by a TCP proxy the test runs (bytes dropped both ways, no socket closed), so
//! only heartbeats can tell. The replica that held every partition loses them to the standby
//! within the failover window (at most three heartbeat intervals, docs/operations.md), and
//! delivery resumes there: nothing lost, each user's order intact.
//!
//! Timings are scaled down by configuration: `broker.heartbeat_secs = 2` here, so the window
//! is at most about 6 s instead of 30 s at the default of 10.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use faults::{
    BlackholeProxy, ChildGateway, assert_all_processed, check_all_users, gateway_env, list_queues,
    producer, publish_range,
};
use std::time::{Duration, Instant};

const HEARTBEAT_SECS: u64 = 2;

/// Partition queues consumed by exactly `n` consumers each (asked without blocking the
/// runtime, which also runs the proxy).
async fn partitions_consumed_by(vhost: &TestVhost, n: u64) -> bool {
    let counts = list_queues(vhost, "consumers").await;
    (0..faults::PARTITIONS).all(|i| counts.get(&format!("customerio.partition.{i}")) == Some(&n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_loses_its_partitions_to_the_standby_in_seconds() {
    let vhost = TestVhost::new("partition");
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Each call takes a while, so the partition lands with deliveries in flight.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 50,
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let publisher = Publisher::new(producer.clone());
    let proxy = BlackholeProxy::start(common::amqp_host()).await;
    let scaled = [
        (
            "GATEWAY__BROKER__HEARTBEAT_SECS",
            HEARTBEAT_SECS.to_string(),
        ),
        ("GATEWAY__BROKER__CONNECT_TIMEOUT_MS", "1000".to_string()),
    ];
    let env_with = |url: String| {
        let mut extra = scaled.to_vec();
        extra.push(("GATEWAY__BROKER__URL", url));
        gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &extra)
    };

    // The replica behind the proxy registers first: the active consumer of every partition.
    let behind_proxy = ChildGateway::spawn(&env_with(proxy.url_for(&vhost.url)), dir.path(), "a");
    let active = eventually_async(Duration::from_secs(30), || {
        partitions_consumed_by(&vhost, 1)
    });
    assert!(active.await, "replica a consumes: {}", behind_proxy.log());
    let standby = ChildGateway::spawn(&env_with(vhost.url.clone()), dir.path(), "b");
    let both = eventually_async(Duration::from_secs(30), || {
        partitions_consumed_by(&vhost, 2)
    });
    assert!(both.await, "replica b registers: {}", standby.log());

    let (users, per_user) = (20usize, 30u64);
    let sent = publish_range(&publisher, users, 0, per_user).await;
    let total = sent.len();
    let delivered = || sandbox.sandbox.stats().accepted_ops as usize;
    assert!(
        eventually(Duration::from_secs(60), || delivered() >= total / 5).await,
        "replica a delivers: {}",
        behind_proxy.log()
    );
    proxy.blackhole();
    let partitioned_at = Instant::now();
    let at_partition = delivered();
    assert!(at_partition < total, "the partition must land mid-run");

    // Replica a can still finish what it had in flight (one message per user at most: a
    // user's next waits for the processed event, which cannot be confirmed any more). More
    // than that is the standby's work: it took over once RabbitMQ gave up the silent
    // connection and returned a's unacked messages to the partitions.
    let resumed = eventually(Duration::from_secs(60), || {
        delivered() > at_partition + users + 5
    })
    .await;
    let resumed_after = partitioned_at.elapsed();
    assert!(resumed, "delivery did not resume: {}", standby.log());
    eprintln!(
        "heartbeat {HEARTBEAT_SECS} s: delivery resumed on the standby after {resumed_after:?}"
    );
    assert!(
        resumed_after < Duration::from_secs(3 * HEARTBEAT_SECS + 5),
        "failover took {resumed_after:?}, beyond three heartbeat intervals plus a margin"
    );
    let released = eventually_async(Duration::from_secs(10), || {
        partitions_consumed_by(&vhost, 1)
    });
    assert!(released.await, "RabbitMQ still lists replica a's consumers");

    assert_all_processed(&producer, &sent, false, Duration::from_secs(60)).await;
    let repeats = check_all_users(&sandbox.sandbox, users, per_user);
    eprintln!("{total} envelopes, repeats after the partition: {repeats:?}");
    drop(behind_proxy);
    drop(standby);
}
