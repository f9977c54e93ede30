//! Issue 13.8: local mode tells the truth at exit. The in-process broker dies with the process,
//! so on shutdown the gateway stops taking work (503) and first delivers what it already
//! answered 202 for; what it cannot deliver within `shutdown.drain_secs` is reported, queue by
//! queue, instead of being dropped silently.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::config::Settings;
use cio_gateway::sandbox::{Faults, Sandbox};
use serde_json::{Value, json};
use std::time::Duration;

const USERS: usize = 20;
const PER_USER: usize = 10;

fn local_gateway_settings(dir: &tempfile::TempDir, drain_secs: &str) -> Settings {
    let data = dir.path().display().to_string();
    let warehouse = dir.path().join("warehouse").display().to_string();
    common::settings(&[
        ("GATEWAY__BROKER__URL", "memory://"),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
        ("GATEWAY__APP__DATA_DIR", &data),
        ("GATEWAY__WAREHOUSE__PATH", &warehouse),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", drain_secs),
        ("GATEWAY__CUSTOMERIO__CIRCUIT_MAX_BACKOFF_MS", "200"),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5"),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "100"),
    ])
}

/// `PER_USER` numbered track events for each of `USERS` users, accepted with 202.
async fn post_events(client: &reqwest::Client, base: &str) {
    let envelopes: Vec<Value> = (0..USERS)
        .flat_map(|u| {
            (0..PER_USER).map(move |seq| {
                json!({"type": "track", "userId": format!("drain-{u}"),
                    "payload": {"name": "step", "data": {"seq": seq}}})
            })
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/events"))
        .json(&envelopes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
}

/// The `seq` numbers Customer.io (the sandbox) received for `user`, in arrival order.
fn delivered_seqs(sandbox: &Sandbox, user: &str) -> Vec<u64> {
    fn find_seq(value: &Value) -> Option<u64> {
        match value {
            Value::Object(map) => map
                .get("seq")
                .and_then(Value::as_u64)
                .or_else(|| map.values().find_map(find_seq)),
            Value::Array(items) => items.iter().find_map(find_seq),
            _ => None,
        }
    }
    sandbox
        .records_for(user)
        .iter()
        .filter(|r| !r.duplicate)
        .filter_map(|r| find_seq(&r.body))
        .collect()
}

#[actix_rt::test]
async fn on_shutdown_local_mode_delivers_what_it_accepted_and_refuses_new_work() {
    common::init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(local_gateway_settings(&dir, "30"))
        .await
        .expect("gateway starts");
    let base = format!("http://{}", gateway.addr);
    let sandbox = gateway.sandbox().expect("local mode sandbox").clone();
    // Customer.io is down for a moment: everything accepted is still queued when shutdown begins.
    sandbox.set_faults(Faults {
        outage_ms: 1500,
        ..Faults::default()
    });
    let client = reqwest::Client::new();
    post_events(&client, &base).await;

    let stopping = actix_rt::spawn(gateway.shutdown());
    let refused = common::eventually_async(Duration::from_secs(10), || async {
        let response = client
            .post(format!("{base}/v1/events"))
            .json(&json!({"type": "track", "userId": "late", "payload": {"name": "x"}}))
            .send()
            .await;
        response.is_ok_and(|r| r.status() == 503 && r.headers().contains_key("retry-after"))
    })
    .await;
    assert!(refused, "new work is refused while draining");

    let report = stopping.await.unwrap();
    assert!(report.settled, "{report:?}");
    assert!(report.lost.is_empty(), "nothing left behind: {report:?}");
    let expected: Vec<u64> = (0..PER_USER as u64).collect();
    for u in 0..USERS {
        let user = format!("drain-{u}");
        assert_eq!(
            delivered_seqs(&sandbox, &user),
            expected,
            "{user}: all, in order"
        );
    }
    assert!(
        sandbox.records_for("late").is_empty(),
        "the refused event was not taken"
    );
}

#[actix_rt::test]
async fn local_mode_reports_what_it_could_not_deliver_by_the_deadline() {
    common::init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(local_gateway_settings(&dir, "1"))
        .await
        .expect("gateway starts");
    let base = format!("http://{}", gateway.addr);
    let sandbox = gateway.sandbox().expect("local mode sandbox").clone();
    sandbox.set_faults(Faults {
        outage_ms: 120_000,
        ..Faults::default()
    });
    post_events(&reqwest::Client::new(), &base).await;

    let report = gateway.shutdown().await;
    let lost: u64 = report
        .lost
        .iter()
        .filter(|q| q.queue.starts_with("customerio.partition."))
        .map(|q| q.total())
        .sum();
    assert_eq!(
        lost,
        (USERS * PER_USER) as u64,
        "every undelivered event is named: {report:?}"
    );
    assert!(
        report.lost.iter().all(|q| q.total() > 0),
        "only queues that hold something are listed: {report:?}"
    );
}
