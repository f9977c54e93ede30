//! `cio_gateway_active_users` follows the lanes (issue 24, item 2): lanes a consumer restart
//! drops leave the gauge, so once everything is delivered it is back to 0. Its own test
//! binary: the metrics recorder is process-wide.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::partition_queue;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "ingest-secret";
const USERS: usize = 10;

fn active_users(gateway: &Gateway) -> Option<f64> {
    gateway
        .state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("cio_gateway_active_users "))
        .and_then(|v| v.trim().parse().ok())
}

#[actix_rt::test]
async fn lanes_dropped_by_a_consumer_restart_leave_the_gauge() {
    let vhost = TestVhost::new("active-users");
    let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    // Every attempt fails (the circuit never opens), so each user's lane waits on a retry.
    sb.sandbox.set_faults(Faults {
        outage_ms: 600_000,
        outage_status: 500,
        ..Faults::default()
    });
    let gateway = common::start_gateway(&[
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", "2".into()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
        ("GATEWAY__INGEST__TOKEN", TOKEN.into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sb.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sb.app_url()),
        ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
        (
            "GATEWAY__CUSTOMERIO__CIRCUIT_FAILURE_THRESHOLD",
            "1000000".into(),
        ),
        ("GATEWAY__DELIVERY__TRACK_API", "v1".into()),
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "100000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "300".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "300".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "2".into()),
    ])
    .await;
    let items: Vec<Value> = (0..USERS)
        .map(|u| json!({"type": "track", "userId": format!("u{u}"), "payload": {"name": "e"}}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gateway.addr))
        .bearer_auth(TOKEN)
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert!(
        eventually(Duration::from_secs(10), || active_users(&gateway)
            == Some(USERS as f64))
        .await,
        "every user has a lane: {:?}",
        active_users(&gateway)
    );

    // The consumers restart; the broker redelivers every message to new lanes.
    vhost.close_connections();
    let resubscribed = eventually_async(Duration::from_secs(20), || async {
        let consumers = vhost.consumer_counts();
        let partitions = [partition_queue(0), partition_queue(1)];
        gateway.broker().is_connected()
            && partitions
                .iter()
                .all(|q| consumers.get(q).is_some_and(|n| *n > 0))
    })
    .await;
    assert!(resubscribed, "consumers are back");

    sb.sandbox.set_faults(Faults::default());
    let delivered = eventually(Duration::from_secs(20), || {
        (0..USERS).all(|u| {
            // The sandbox records what it accepted, not what an outage refused.
            !sb.sandbox.records_for(&format!("u{u}")).is_empty()
        })
    })
    .await;
    assert!(delivered, "every user's event is delivered");
    assert!(
        eventually(Duration::from_secs(10), || active_users(&gateway)
            == Some(0.0))
        .await,
        "no lane is left, so no user is active: {:?}",
        active_users(&gateway)
    );
    gateway.shutdown().await;
}
