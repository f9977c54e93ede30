//! Reporting webhooks at full speed while RabbitMQ drops the gateway's connection (issue 7).
//!
//! Signed events, each with its own `event_id`, 32 requests at a time (bounded: until 500 more
//! were sent after the last close, at most 40000), and the vhost's connections closed six times
//! mid-stream (more closes, more chances to hit a race; one found lapin leaving an ack
//! unresolved forever, which stalled the warehouse consumer). A 200 promises the event is durably in RabbitMQ, so
//! every event answered 200 must end up in the warehouse (the file sink, de-duplicated on
//! `event_id`), exactly once; every other answer must be one Customer.io retries (503). Then
//! Customer.io's retries are played: every refused event is posted again until it gets its
//! 200, and all of them are stored once.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::domain::webhook::sign;
use cio_gateway::sandbox::{self, SandboxConfig};
use common::{TestVhost, eventually};
use faults::{close_connections, depth, gateway_env, shutdown_within, start_gateway};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Requests go on until TAIL were started after the last close; never more than this.
const MAX_REQUESTS: usize = 40_000;
const TAIL: usize = 500;
/// The connections are closed CLOSES times, each after CLOSE_EVERY more answers.
const CLOSES: usize = 6;
const CLOSE_EVERY: usize = 600;
const CONCURRENCY: usize = 32;
const SECRET: &str = "s1";

/// A reporting event as Customer.io sends it; metrics without an action (only stored).
fn event(event_id: &str, n: usize) -> Value {
    let metric = ["sent", "delivered", "opened", "clicked"][n % 4];
    json!({
        "event_id": event_id,
        "object_type": "email",
        "metric": metric,
        "timestamp": 1_700_000_000 + (n as i64 % 3) * 86_400,
        "data": {
            "customer_id": format!("u-{}", n % 50),
            "identifiers": {"id": format!("u-{}", n % 50)},
            "delivery_id": format!("dlv-{event_id}"),
            "recipient": format!("u-{}@example.com", n % 50),
            "campaign_id": 23,
            "action_id": 96
        }
    })
}

/// POSTs one event signed as Customer.io does; a request that got no answer is `None`.
async fn post(client: &reqwest::Client, gateway: &str, event: &Value) -> Option<StatusCode> {
    let body = serde_json::to_vec(event).unwrap();
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = sign(SECRET, &ts, &body);
    let response = client
        .post(format!("http://{gateway}/webhooks/customerio"))
        .header("content-type", "application/json")
        .header("X-CIO-Timestamp", ts)
        .header("X-CIO-Signature", signature)
        .body(body)
        .send()
        .await
        .ok()?;
    Some(response.status())
}

/// Every row of the file sink: event id -> how many rows have it.
fn stored(dir: &Path) -> BTreeMap<String, usize> {
    let root = dir.join("warehouse").join("delivery_events");
    let mut rows = BTreeMap::new();
    let Ok(days) = std::fs::read_dir(&root) else {
        return rows;
    };
    for day in days.flatten() {
        for file in std::fs::read_dir(day.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("part-") && name.ends_with(".ndjson")) {
                continue;
            }
            let text = std::fs::read_to_string(file.path()).unwrap();
            for line in text.lines() {
                let row: Value = serde_json::from_str(line).expect("NDJSON");
                let id = row["event_id"].as_str().expect("event_id").to_string();
                *rows.entry(id).or_default() += 1;
            }
        }
    }
    rows
}

fn gateway_vars(
    vhost: &TestVhost,
    sandbox: &sandbox::RunningSandbox,
    dir: &Path,
) -> Vec<(&'static str, String)> {
    let extra = [
        ("GATEWAY__WEBHOOKS__SIGNING_SECRETS", SECRET.to_string()),
        (
            "GATEWAY__WAREHOUSE__PATH",
            dir.join("warehouse").display().to_string(),
        ),
        ("GATEWAY__WAREHOUSE__FLUSH_MS", "50".to_string()),
        (
            "GATEWAY__APP__DATA_DIR",
            dir.join("data").display().to_string(),
        ),
    ];
    gateway_env(vhost, &sandbox.track_url(), &sandbox.app_url(), &extra)
}

#[actix_rt::test]
async fn every_200_is_stored_while_rabbitmq_connections_drop() {
    let started = Instant::now();
    let vhost = TestVhost::new("faults-webhooks");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway: Gateway = start_gateway(&gateway_vars(&vhost, &sandbox, dir.path())).await;
    let addr = gateway.addr.to_string();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Requests, CONCURRENCY at a time, in the background, until TAIL more were started after
    // the last close (at most MAX_REQUESTS); `answered` counts the answers.
    let answered = Arc::new(AtomicUsize::new(0));
    let closes = Arc::new(AtomicUsize::new(0));
    let posting = {
        let (client, addr) = (client.clone(), addr.clone());
        let (answered, closes) = (answered.clone(), closes.clone());
        let started_at_last_close = Arc::new(AtomicUsize::new(usize::MAX));
        tokio::spawn(async move {
            futures::stream::iter(0..MAX_REQUESTS)
                .take_while(move |n| {
                    let n = *n;
                    if closes.load(Ordering::Relaxed) >= CLOSES {
                        let _ = started_at_last_close.compare_exchange(
                            usize::MAX,
                            n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    let mark = started_at_last_close.load(Ordering::Relaxed);
                    futures::future::ready(mark == usize::MAX || n < mark + TAIL)
                })
                .map(|n| {
                    let (client, addr, answered) = (client.clone(), addr.clone(), answered.clone());
                    async move {
                        let id = ulid::Ulid::new().to_string();
                        let body = event(&id, n);
                        let status = post(&client, &addr, &body).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        (id, body, status)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await
        })
    };
    // The connection drops CLOSES times while requests are coming in.
    let mut closed_at = Vec::new();
    for _ in 0..CLOSES {
        let after = closed_at.last().copied().unwrap_or(0) + CLOSE_EVERY;
        let reached = eventually(Duration::from_secs(60), || {
            answered.load(Ordering::Relaxed) >= after
        })
        .await;
        assert!(reached, "{} answered", answered.load(Ordering::Relaxed));
        close_connections(&vhost).await;
        closed_at.push(answered.load(Ordering::Relaxed));
        closes.fetch_add(1, Ordering::Relaxed);
    }
    let answers = tokio::time::timeout(Duration::from_secs(120), posting)
        .await
        .expect("all requests answered in time")
        .expect("posting task");
    let total = answers.len();
    assert!(
        closed_at.iter().all(|n| *n < total) && total < MAX_REQUESTS,
        "the closes landed mid-stream: {closed_at:?} of {total}"
    );
    let events: BTreeMap<String, Value> = answers
        .iter()
        .map(|(id, body, _)| (id.clone(), body.clone()))
        .collect();

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = BTreeSet::new();
    let mut refused = Vec::new();
    for (id, _, status) in &answers {
        let label = status.map_or("no answer".to_string(), |s| s.as_u16().to_string());
        *by_status.entry(label).or_default() += 1;
        match status {
            Some(StatusCode::OK) => {
                ok.insert(id.clone());
            }
            // Customer.io retries anything but a 2xx; the gateway's refusals must be 503s,
            // never a 4xx that would tell Customer.io the request itself was wrong.
            Some(StatusCode::SERVICE_UNAVAILABLE) => refused.push(id.clone()),
            other => panic!("event {id}: unexpected answer {other:?}; all: {by_status:?}"),
        }
    }

    // Every 200 is stored, once.
    let all_ok_stored = eventually(Duration::from_secs(60), || {
        let rows = stored(dir.path());
        ok.iter().all(|id| rows.contains_key(id))
    })
    .await;
    let rows = stored(dir.path());
    let lost: Vec<_> = ok.iter().filter(|id| !rows.contains_key(*id)).collect();
    assert!(
        all_ok_stored,
        "{} events answered 200 are not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let stored_ok = ok.iter().filter(|id| rows.get(*id) == Some(&1)).count();
    assert_eq!(
        stored_ok,
        ok.len(),
        "count(200) == rows stored for those ids, once each"
    );

    // Customer.io retries what was refused until it gets its 200.
    let mut retries = 0;
    for id in &refused {
        let body = &events[id];
        let mut accepted = false;
        for _ in 0..20 {
            retries += 1;
            match post(&client, &addr, body).await {
                Some(StatusCode::OK) => {
                    accepted = true;
                    break;
                }
                Some(StatusCode::SERVICE_UNAVAILABLE) | None => {
                    // The gateway reconnects on the next publish; wait for readiness.
                    assert!(
                        eventually(Duration::from_secs(30), || gateway.state.is_ready()).await,
                        "the gateway is ready again"
                    );
                }
                Some(other) => panic!("retry of {id}: {other}"),
            }
        }
        assert!(accepted, "retry of {id} never accepted");
    }
    let everything = eventually(Duration::from_secs(60), || {
        stored(dir.path()).len() == total
    })
    .await;
    let rows = stored(dir.path());
    assert!(everything, "{} of {total} events stored", rows.len());
    let ids: BTreeSet<String> = events.keys().cloned().collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(rows.values().all(|n| *n == 1), "each event stored once");
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "nothing dead-lettered");
    eprintln!(
        "webhooks: {total} requests x{CONCURRENCY}, connections closed after {closed_at:?} \
         answers, answers {by_status:?}, {retries} retries, {:.1?}",
        started.elapsed()
    );
    shutdown_within(gateway, Duration::from_secs(15)).await;
}
