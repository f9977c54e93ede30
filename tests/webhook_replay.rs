//! A captured, correctly signed webhook replayed to another replica and after a restart.
//!
//! The signature window is Customer.io's 7-day retry window, so the edge accepts a replay of a
//! request it saw (its own recent-id set is per process and lost on restart). What keeps the
//! replay harmless is durable and shared by every replica: the warehouse's `event_id`
//! uniqueness (here the PostgreSQL sink's key) for rows, and the action ledger in the
//! preferences database for actions. Two gateways on one RabbitMQ vhost and one PostgreSQL
//! database, real HTTP, the sandbox as Customer.io.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::WEBHOOKS_WAREHOUSE_QUEUE;
use cio_gateway::domain::webhook::sign;
use cio_gateway::sandbox::{self, RunningSandbox, SandboxConfig};
use common::{TestDb, TestVhost, eventually, eventually_async, start_gateway, webhook_gateway_env};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn spam_complaint(event_id: &str, person: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": event_id, "object_type": "email", "metric": "spammed",
        "timestamp": timestamp,
        "data": {"customer_id": person, "identifiers": {"id": person}},
    }))
    .unwrap()
}

/// One captured request: the body and the headers Customer.io signed it with.
struct Captured {
    body: Vec<u8>,
    timestamp: String,
    signature: String,
}

impl Captured {
    fn new(body: Vec<u8>) -> Self {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = sign("s1", &timestamp, &body);
        Self {
            body,
            timestamp,
            signature,
        }
    }

    async fn send_to(&self, gateway: &Gateway) -> StatusCode {
        reqwest::Client::new()
            .post(format!("http://{}/webhooks/customerio", gateway.addr))
            .header("content-type", "application/json")
            .header("X-CIO-Timestamp", &self.timestamp)
            .header("X-CIO-Signature", &self.signature)
            .body(self.body.clone())
            .send()
            .await
            .expect("request completes")
            .status()
    }
}

async fn replica(vhost: &TestVhost, sandbox: &RunningSandbox, db: &TestDb, dir: &Path) -> Gateway {
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "postgres".to_string()),
        ("GATEWAY__WAREHOUSE__DATABASE_URL", db.url.clone()),
        ("GATEWAY__PREFERENCES__DATABASE_URL", db.url.clone()),
        ("GATEWAY__DELIVERY__TRACK_API", "v1".to_string()),
    ];
    start_gateway(&webhook_gateway_env(vhost, sandbox, dir, &extra)).await
}

fn unsubscribes(sandbox: &RunningSandbox, person: &str) -> usize {
    sandbox
        .sandbox
        .records_for(person)
        .iter()
        .filter(|r| r.action == "identify" && r.body.get("unsubscribed") == Some(&json!(true)))
        .count()
}

#[actix_rt::test]
async fn a_replayed_signed_webhook_writes_one_row_and_acts_once_on_any_replica_and_after_a_restart()
{
    let vhost = TestVhost::new("webhook-replay");
    let db = TestDb::new("webhook_replay");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&vhost, &sandbox, &db, dir_a.path()).await;
    let b = replica(&vhost, &sandbox, &db, dir_b.path()).await;
    let person = format!("u-replay-{}", ulid::Ulid::new());
    let event_id = ulid::Ulid::new().to_string();
    let now = chrono::Utc::now().timestamp();
    let captured = Captured::new(spam_complaint(&event_id, &person, now - 60));

    assert_eq!(captured.send_to(&a).await, StatusCode::OK);
    let acted = eventually(WAIT, || unsubscribes(&sandbox, &person) == 1).await;
    assert!(acted, "the complaint unsubscribed the person");
    // The same request, replayed to the other replica, then to a restarted first one.
    assert_eq!(captured.send_to(&b).await, StatusCode::OK);
    a.shutdown().await;
    let restarted = replica(&vhost, &sandbox, &db, dir_a.path()).await;
    assert_eq!(captured.send_to(&restarted).await, StatusCode::OK);

    // A later complaint about the same person: the actions queue is handled in order, one
    // event at a time, so once its action arrived every replay before it was handled.
    let marker = Captured::new(spam_complaint(&ulid::Ulid::new().to_string(), &person, now));
    assert_eq!(marker.send_to(&restarted).await, StatusCode::OK);
    let marked = eventually(WAIT, || unsubscribes(&sandbox, &person) == 2).await;
    assert!(marked, "{:#?}", sandbox.sandbox.records_for(&person));

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1)
        }
    };
    let written = eventually_async(WAIT, || {
        let marker_id = serde_json::from_slice::<Value>(&marker.body).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();
        async move { rows(marker_id).await == 1 }
    })
    .await;
    assert!(written, "the marker's row is written");
    // Every copy was taken from the warehouse queue and acked (acked only once written).
    let drained = eventually(WAIT, || {
        vhost
            .queue_depths()
            .get(WEBHOOKS_WAREHOUSE_QUEUE)
            .is_none_or(|depth| *depth == 0)
    })
    .await;
    assert!(drained, "{:?}", vhost.queue_depths());
    assert_eq!(
        rows(event_id.clone()).await,
        1,
        "one row for three deliveries"
    );
    assert_eq!(
        unsubscribes(&sandbox, &person),
        2,
        "one action for the replayed event, one for the marker"
    );
    pool.close().await;
    b.shutdown().await;
    restarted.shutdown().await;
}
