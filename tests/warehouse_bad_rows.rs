//! One bad row never stops the warehouse (issue 12.2), end to end: signed webhooks on an
//! in-process gateway, real RabbitMQ (a vhost per test), a PostgreSQL database per test or a
//! local BigQuery stand-in. A row the sink refuses for good is dead-lettered alone to
//! `customerio.dlq`; every other row is written, and so is everything after it.

mod common;

use actix_web::{App, HttpResponse, HttpServer, web};
use cio_gateway::app::Gateway;
use cio_gateway::broker::SharedBroker;
use cio_gateway::broker::topology::{DLQ_QUEUE, WEBHOOKS_WAREHOUSE_QUEUE};
use cio_gateway::domain::webhook::sign;
use cio_gateway::sandbox::{self, RunningSandbox, SandboxConfig};
use common::{TestDb, TestVhost, eventually, eventually_async, start_gateway, webhook_gateway_env};
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const DAY: i64 = 1_700_000_000; // 2023-11-14

/// The webhook tests' gateway, its warehouse flushing late enough for one POST of many events
/// to be one batch.
fn gateway_env(
    vhost: &TestVhost,
    sandbox: &RunningSandbox,
    dir: &Path,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![("GATEWAY__WAREHOUSE__FLUSH_MS", "300".to_string())];
    vars.extend_from_slice(extra);
    webhook_gateway_env(vhost, sandbox, dir, &vars)
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A reporting event as Customer.io sends it (no action rule matches `delivered`).
fn event(event_id: &str, customer: &str) -> Value {
    json!({
        "event_id": event_id,
        "object_type": "email",
        "metric": "delivered",
        "timestamp": DAY,
        "data": {
            "customer_id": customer,
            "identifiers": {"id": customer},
            "delivery_id": format!("dlv-{event_id}"),
            "recipient": format!("{customer}@example.com"),
            "campaign_id": 23
        }
    })
}

/// POSTs `body` signed as Customer.io does; must be accepted.
async fn post_signed(gateway: &Gateway, body: &[u8]) {
    let ts = chrono::Utc::now().timestamp().to_string();
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/customerio", gateway.addr))
        .header("content-type", "application/json")
        .header("X-CIO-Timestamp", &ts)
        .header("X-CIO-Signature", sign("s1", &ts, body))
        .body(body.to_vec())
        .send()
        .await
        .expect("request completes");
    assert_eq!(response.status(), StatusCode::OK);
}

async fn post_events(gateway: &Gateway, events: &[Value]) {
    post_signed(
        gateway,
        &serde_json::to_vec(&json!({ "events": events })).unwrap(),
    )
    .await;
}

/// Ready plus unacked messages, as RabbitMQ last reported them (quorum queues report every few
/// seconds: only ever wait for a value).
fn depth(vhost: &TestVhost, queue: &str) -> u64 {
    vhost.queue_depths().get(queue).copied().unwrap_or(0)
}

/// The dead letters in `customerio.dlq`, read without acking (they return to the queue).
async fn dead_letters(broker: &SharedBroker) -> Vec<Value> {
    let n = broker.queue_len(DLQ_QUEUE).await.unwrap();
    if n == 0 {
        return Vec::new();
    }
    let mut stream = broker.consume(DLQ_QUEUE, n as u16).await.unwrap();
    let mut letters = Vec::new();
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a queued dead letter is delivered")
            .expect("the stream is open");
        letters.push(serde_json::from_slice(&delivery.body).unwrap());
    }
    stream.close().await;
    letters
}

/// After the bad row: more webhooks are written, the warehouse queue drains, and the dead
/// letter stays the only one.
async fn later_rows_keep_flowing(
    gateway: &Gateway,
    vhost: &TestVhost,
    stored: impl Fn(Vec<String>) -> futures::future::BoxFuture<'static, bool>,
) {
    let later: Vec<String> = (0..5).map(|_| new_id()).collect();
    for id in &later {
        post_events(gateway, &[event(id, "u-later")]).await;
    }
    assert!(
        eventually_async(WAIT, || stored(later.clone())).await,
        "webhooks after the bad row are written"
    );
    assert!(
        eventually(WAIT, || depth(vhost, WEBHOOKS_WAREHOUSE_QUEUE) == 0).await,
        "the warehouse queue drains: {:?}",
        vhost.queue_depths()
    );
    assert_eq!(dead_letters(gateway.broker()).await.len(), 1);
}

async fn pg_ids(pool: &sqlx::PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT event_id FROM delivery_events")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[actix_rt::test]
async fn nul_characters_are_stored_safely_in_postgres() {
    let vhost = TestVhost::new("badrows-nul");
    let db = TestDb::new("badrows_nul");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "postgres".to_string()),
        ("GATEWAY__WAREHOUSE__DATABASE_URL", db.url.clone()),
    ];
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;

    let (nul, plain) = (new_id(), new_id());
    let mut bounce = event(&nul, "u-nul");
    bounce["metric"] = json!("bounced");
    bounce["data"]["recipient"] = json!("nul\u{0}@example.com");
    bounce["data"]["reason"] = json!("550 5.1.1 \u{0}mailbox unavailable\u{0}");
    bounce["data"]["identifiers"]["email"] = json!("nul\u{0}@example.com");
    // One event per POST, so the stored `raw_exact` can be compared with the body sent.
    let nul_body = serde_json::to_vec(&bounce).unwrap();
    assert!(
        String::from_utf8_lossy(&nul_body).contains("\\u0000"),
        "premise: the body carries escaped NULs"
    );
    post_signed(&gateway, &nul_body).await;
    let plain_body = serde_json::to_vec(&event(&plain, "u-plain")).unwrap();
    post_signed(&gateway, &plain_body).await;

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let both: BTreeSet<String> = [nul.clone(), plain.clone()].into();
    assert!(
        eventually_async(WAIT, || {
            let pool = pool.clone();
            let both = both.clone();
            async move { pg_ids(&pool).await == both }
        })
        .await,
        "stored: {:?}",
        pg_ids(&pool).await
    );

    let (recipient, raw, identifiers, raw_exact): (String, Value, Value, Option<Vec<u8>>) =
        sqlx::query_as(
            "SELECT recipient, raw, identifiers, raw_exact FROM delivery_events \
             WHERE event_id = $1",
        )
        .bind(&nul)
        .fetch_one(&pool)
        .await
        .unwrap();
    // Text and jsonb cannot hold U+0000: stored as the six characters `\u0000`.
    assert_eq!(recipient, "nul\\u0000@example.com");
    assert_eq!(
        raw["data"]["reason"],
        "550 5.1.1 \\u0000mailbox unavailable\\u0000"
    );
    assert_eq!(identifiers["email"], "nul\\u0000@example.com");
    // ... and the event exactly as received is kept beside them.
    let raw_exact = raw_exact.expect("raw_exact is set for a row with NULs");
    assert_eq!(
        raw_exact, nul_body,
        "raw_exact is the body sent, byte for byte"
    );
    assert_eq!(serde_json::from_slice::<Value>(&raw_exact).unwrap(), bounce);

    let (raw, raw_exact): (Value, Option<Vec<u8>>) =
        sqlx::query_as("SELECT raw, raw_exact FROM delivery_events WHERE event_id = $1")
            .bind(&plain)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(raw, serde_json::from_slice::<Value>(&plain_body).unwrap());
    assert_eq!(raw_exact, None, "only rows with NULs need raw_exact");

    assert!(
        eventually(WAIT, || depth(&vhost, WEBHOOKS_WAREHOUSE_QUEUE) == 0).await,
        "{:?}",
        vhost.queue_depths()
    );
    assert!(
        dead_letters(gateway.broker()).await.is_empty(),
        "nothing dead-lettered"
    );
    pool.close().await;
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn a_row_postgres_refuses_is_dead_lettered_alone() {
    let vhost = TestVhost::new("badrows-pg");
    let db = TestDb::new("badrows_pg");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "postgres".to_string()),
        ("GATEWAY__WAREHOUSE__DATABASE_URL", db.url.clone()),
    ];
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // The sink creates its table before consuming; then a rule that one row breaks, so the
    // refusal is PostgreSQL's own (SQLSTATE 23514, check_violation).
    let prepared = eventually_async(WAIT, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass('delivery_events')::text")
                .fetch_one(&pool)
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
    assert!(prepared, "the postgres sink created its table");
    sqlx::query(
        "ALTER TABLE delivery_events ADD CONSTRAINT no_poison CHECK (customer_id <> 'u-poison')",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Twenty events in one POST (one flush window), the thirteenth breaking the rule.
    let ids: Vec<String> = (0..20).map(|_| new_id()).collect();
    let bad = ids[12].clone();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| event(id, if *id == bad { "u-poison" } else { "u-good" }))
        .collect();
    post_events(&gateway, &events).await;

    let good: BTreeSet<String> = ids.iter().filter(|id| **id != bad).cloned().collect();
    let written = eventually_async(WAIT, || {
        let pool = pool.clone();
        let good = good.clone();
        async move { pg_ids(&pool).await == good }
    })
    .await;
    assert!(written, "the 19 good rows: {:?}", pg_ids(&pool).await);
    let broker = gateway.broker();
    assert!(
        eventually_async(WAIT, || {
            let broker = broker.clone();
            async move { broker.queue_len(DLQ_QUEUE).await.unwrap() == 1 }
        })
        .await
    );
    let letters = dead_letters(broker).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["event_id"], bad.as_str(), "{letter}");
    assert_eq!(letter["errorKind"], "warehouse_rejected");
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("postgres sink") && error.contains("no_poison"),
        "the message names PostgreSQL's error: {error}"
    );

    let stored = |later: Vec<String>| {
        let pool = pool.clone();
        Box::pin(async move {
            let ids = pg_ids(&pool).await;
            later.iter().all(|id| ids.contains(id))
        }) as futures::future::BoxFuture<'static, bool>
    };
    later_rows_keep_flowing(&gateway, &vhost, stored).await;
    assert!(!pg_ids(&pool).await.contains(&bad));
    pool.close().await;
    gateway.shutdown().await;
}

/// BigQuery's `insertAll` as it answers with `skipInvalidRows: false`: a row of customer
/// `u-poison` is `invalid`, the others of its request `stopped` (not stored); other requests
/// are stored.
#[derive(Default)]
struct BigQueryStandIn {
    stored: Mutex<Vec<String>>,
    requests: Mutex<usize>,
}

async fn insert_all(body: web::Json<Value>, state: web::Data<BigQueryStandIn>) -> HttpResponse {
    *state.requests.lock() += 1;
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    let poisoned = rows
        .iter()
        .position(|r| r["json"]["customer_id"] == "u-poison");
    let Some(bad) = poisoned else {
        let mut stored = state.stored.lock();
        stored.extend(
            rows.iter()
                .map(|r| r["insertId"].as_str().unwrap().to_string()),
        );
        return HttpResponse::Ok().json(json!({"kind": "bigquery#tableDataInsertAllResponse"}));
    };
    let errors: Vec<Value> = (0..rows.len())
        .map(|i| {
            let reason = if i == bad {
                json!({"reason": "invalid", "location": "customer_id",
                    "message": "poisoned customer_id"})
            } else {
                json!({"reason": "stopped", "message": ""})
            };
            json!({"index": i, "errors": [reason]})
        })
        .collect();
    HttpResponse::Ok().json(json!({"kind": "bigquery#tableDataInsertAllResponse",
        "insertErrors": errors}))
}

fn spawn_bigquery(state: web::Data<BigQueryStandIn>) -> String {
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/projects/{project}/datasets/{dataset}/tables/{table}/insertAll",
            web::post().to(insert_all),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    format!("http://{addr}")
}

#[actix_rt::test]
async fn a_row_bigquery_calls_invalid_is_dead_lettered_alone() {
    let vhost = TestVhost::new("badrows-bq");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let standin = web::Data::new(BigQueryStandIn::default());
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "bigquery".to_string()),
        (
            "GATEWAY__WAREHOUSE__BIGQUERY__BASE_URL",
            spawn_bigquery(standin.clone()),
        ),
        ("GATEWAY__WAREHOUSE__BIGQUERY__PROJECT", "proj".into()),
        ("GATEWAY__WAREHOUSE__BIGQUERY__DATASET", "reporting".into()),
        ("GATEWAY__WAREHOUSE__BIGQUERY__TOKEN", "bq-token".into()),
    ];
    let gateway = start_gateway(&gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;

    let ids: Vec<String> = (0..20).map(|_| new_id()).collect();
    let bad = ids[7].clone();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| event(id, if *id == bad { "u-poison" } else { "u-good" }))
        .collect();
    post_events(&gateway, &events).await;

    let good: BTreeSet<String> = ids.iter().filter(|id| **id != bad).cloned().collect();
    let written = eventually(WAIT, || {
        let stored: BTreeSet<String> = standin.stored.lock().iter().cloned().collect();
        stored == good
    })
    .await;
    assert!(written, "the 19 good rows: {:?}", standin.stored.lock());
    let broker = gateway.broker();
    assert!(
        eventually_async(WAIT, || {
            let broker = broker.clone();
            async move { broker.queue_len(DLQ_QUEUE).await.unwrap() == 1 }
        })
        .await
    );
    let letters = dead_letters(broker).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event_id"], bad.as_str());
    assert_eq!(letters[0]["errorKind"], "warehouse_rejected");
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("bigquery sink") && error.contains("poisoned customer_id"),
        "the message names BigQuery's error: {error}"
    );

    let stored = |later: Vec<String>| {
        let standin = standin.clone();
        Box::pin(async move {
            let stored = standin.stored.lock();
            later.iter().all(|id| stored.contains(id))
        }) as futures::future::BoxFuture<'static, bool>
    };
    later_rows_keep_flowing(&gateway, &vhost, stored).await;
    let stored = standin.stored.lock().clone();
    assert!(!stored.contains(&bad));
    assert_eq!(
        stored.len(),
        stored.iter().collect::<BTreeSet<_>>().len(),
        "each row stored once"
    );
    gateway.shutdown().await;
}
