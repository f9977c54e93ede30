//! The track batcher is supervised (issue 24, item 1): killed, it is restarted and every
//! message is still delivered, in order, with nothing dead-lettered; with its supervisor gone
//! too, `/healthz` and `/readyz` both say so.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::DLQ_QUEUE;
use common::eventually;
use serde_json::{Value, json};
use std::time::Duration;

const USERS: usize = 6;
const ROUNDS: usize = 5;

/// A local-mode gateway (in-process broker, embedded sandbox) with short backoffs.
async fn local_gateway(data: &tempfile::TempDir) -> Gateway {
    let dir = data.path().display().to_string();
    common::start_gateway(&[
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__APP__DATA_DIR", format!("{dir}/data")),
        ("GATEWAY__WAREHOUSE__PATH", format!("{dir}/warehouse")),
        ("GATEWAY__BROKER__PARTITIONS", "2".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "50".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "2".into()),
    ])
    .await
}

fn dead_letters(gateway: &Gateway) -> u64 {
    gateway
        .broker()
        .volatile_backlog()
        .unwrap_or_default()
        .iter()
        .filter(|q| q.queue == DLQ_QUEUE)
        .map(|q| q.total())
        .sum()
}

fn event_names(gateway: &Gateway, user: &str) -> Vec<String> {
    let sandbox = gateway.sandbox().expect("local mode runs the sandbox");
    sandbox
        .records_for(user)
        .iter()
        .filter(|r| r.action == "event")
        .filter_map(|r| r.body["name"].as_str().map(str::to_string))
        .collect()
}

async fn status(http: &reqwest::Client, gateway: &Gateway, path: &str) -> u16 {
    let url = format!("http://{}{path}", gateway.addr);
    http.get(url).send().await.unwrap().status().as_u16()
}

#[actix_rt::test]
async fn a_killed_batcher_is_restarted_and_nothing_is_dead_lettered() {
    let data = tempfile::tempdir().unwrap();
    let gateway = local_gateway(&data).await;
    let http = reqwest::Client::new();
    for round in 0..ROUNDS {
        let items: Vec<Value> = (0..USERS)
            .map(|u| {
                json!({"type": "track", "userId": format!("u{u}"),
                "payload": {"name": format!("e{round}")}})
            })
            .collect();
        let response = http
            .post(format!("http://{}/v1/events", gateway.addr))
            .json(&items)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        // While this round's operations are on their way to the batcher.
        gateway.track_sender().kill(false);
    }
    let expected: Vec<String> = (0..ROUNDS).map(|r| format!("e{r}")).collect();
    let delivered = eventually(Duration::from_secs(20), || {
        (0..USERS).all(|u| event_names(&gateway, &format!("u{u}")).len() >= ROUNDS)
            || dead_letters(&gateway) > 0
    })
    .await;
    assert!(delivered, "not every event reached the sandbox");
    assert_eq!(dead_letters(&gateway), 0, "nothing is dead-lettered");
    for u in 0..USERS {
        assert_eq!(
            event_names(&gateway, &format!("u{u}")),
            expected,
            "user u{u}"
        );
    }
    assert!(gateway.track_sender().is_running());
    assert_eq!(status(&http, &gateway, "/readyz").await, 200);
    assert_eq!(status(&http, &gateway, "/healthz").await, 200);
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn a_batcher_without_its_supervisor_fails_liveness_and_readiness() {
    let data = tempfile::tempdir().unwrap();
    let gateway = local_gateway(&data).await;
    let http = reqwest::Client::new();
    assert_eq!(status(&http, &gateway, "/healthz").await, 200);
    assert_eq!(status(&http, &gateway, "/readyz").await, 200);
    gateway.track_sender().kill(true);
    let seen = common::eventually_async(Duration::from_secs(5), || {
        let http = http.clone();
        let url = format!("http://{}/healthz", gateway.addr);
        async move { http.get(url).send().await.unwrap().status().as_u16() == 503 }
    })
    .await;
    assert!(
        seen,
        "/healthz still says ok with the batcher dead for good"
    );
    assert_eq!(status(&http, &gateway, "/readyz").await, 503);
    gateway.shutdown().await;
}
