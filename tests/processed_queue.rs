//! `broker.processed_queue` (issue 21): off by default; when set, the gateway declares a durable
//! queue bound to `customerio.processed`, and every delivered envelope's processed event waits
//! there for a consumer.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::broker::{self, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, SandboxConfig};
use common::TestVhost;
use faults::{collect, correlation_id, gateway_env, list_queues, shutdown_within, start_gateway};
use std::collections::BTreeSet;
use std::time::Duration;

const QUEUE: &str = "audit.processed";

#[actix_rt::test]
async fn the_processed_queue_holds_one_event_per_delivered_envelope() {
    let vhost = TestVhost::new("processed-queue");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let extra = [("GATEWAY__BROKER__PROCESSED_QUEUE", QUEUE.to_string())];
    let gateway = start_gateway(&gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &extra,
    ))
    .await;
    // A producer that declares nothing of its own: the queue is the gateway's.
    let producer = broker::connect(&vhost.url, Topology::new(faults::PARTITIONS))
        .await
        .unwrap();
    let publisher = Publisher::new(producer.clone());
    let sent = faults::publish_range(&publisher, 3, 0, 2).await;
    let expected: BTreeSet<String> = sent.iter().map(|s| s.correlation_id.clone()).collect();
    let (bodies, counts) = collect(
        &producer,
        QUEUE,
        &expected,
        correlation_id,
        Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{bodies:?}"
    );
    assert!(
        bodies.iter().all(|b| b["status"] == "success"),
        "{bodies:?}"
    );
    shutdown_within(gateway, Duration::from_secs(15)).await;
}

#[actix_rt::test]
async fn without_the_setting_no_queue_is_declared() {
    let vhost = TestVhost::new("processed-queue-off");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let gateway = start_gateway(&gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &[],
    ))
    .await;
    let queues = list_queues(&vhost, "messages").await;
    assert!(queues.contains_key("customerio.partition.0"), "{queues:?}");
    assert!(!queues.contains_key(QUEUE), "{queues:?}");
    shutdown_within(gateway, Duration::from_secs(15)).await;
}
