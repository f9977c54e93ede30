//! Reporting webhooks end to end (issue 4): `POST /webhooks/customerio` on an in-process
//! gateway, real RabbitMQ (a vhost per test), the warehouse sinks (files in a temp dir, a
//! PostgreSQL database per test, a local BigQuery stand-in) and the sandbox as Customer.io.
//! Nothing waits by sleeping: every test awaits a condition with a deadline.

mod common;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::{DLQ_QUEUE, WEBHOOKS_EXCHANGE, WEBHOOKS_WAREHOUSE_QUEUE};
use cio_gateway::broker::{Broker, BrokerError, DeliveryStream, Publish, Topology};
use cio_gateway::domain::webhook::sign;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestDb, TestVhost, eventually, eventually_async, start_gateway, webhook_gateway_env};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const DAY: i64 = 1_700_000_000; // 2023-11-14

/// A reporting event as Customer.io sends it.
fn event(event_id: &str, object_type: &str, metric: &str, customer: &str) -> Value {
    json!({
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": DAY,
        "data": {
            "customer_id": customer,
            "identifiers": {"id": customer, "email": format!("{customer}@example.com")},
            "delivery_id": format!("dlv-{event_id}"),
            "recipient": format!("{customer}@example.com"),
            "campaign_id": 23,
            "action_id": 96,
            "journey_id": format!("jrn-{event_id}"),
            "machine": false
        }
    })
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// POSTs `body` with the given (or no) `X-CIO-Timestamp` / `X-CIO-Signature`.
async fn post_raw(
    gateway: &Gateway,
    body: Vec<u8>,
    headers: Option<(String, String)>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/webhooks/customerio", gateway.addr))
        .header("content-type", "application/json")
        .body(body);
    if let Some((timestamp, signature)) = headers {
        request = request
            .header("X-CIO-Timestamp", timestamp)
            .header("X-CIO-Signature", signature);
    }
    let response = request.send().await.expect("request completes");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn now() -> String {
    chrono::Utc::now().timestamp().to_string()
}

/// POSTs `body` signed with `secret`, as Customer.io does.
async fn post_signed(gateway: &Gateway, secret: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let ts = now();
    let signature = sign(secret, &ts, &body);
    post_raw(gateway, body, Some((ts, signature))).await
}

async fn post_event(gateway: &Gateway, event: &Value) -> (StatusCode, Value) {
    post_signed(gateway, "s1", serde_json::to_vec(event).unwrap()).await
}

/// Every row of the file sink, with the partition directory it is in.
fn file_rows(dir: &Path) -> Vec<(String, Value)> {
    let root = dir.join("warehouse").join("delivery_events");
    let Ok(days) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for day in days.flatten() {
        let partition = day.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(day.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("part-") && name.ends_with(".ndjson")) {
                continue;
            }
            let text = std::fs::read_to_string(file.path()).unwrap();
            assert!(text.ends_with('\n'), "a segment ends with a whole line");
            for line in text.lines() {
                rows.push((
                    partition.clone(),
                    serde_json::from_str(line).expect("NDJSON"),
                ));
            }
        }
    }
    rows
}

fn count_of(rows: &[(String, Value)], event_id: &str) -> usize {
    rows.iter()
        .filter(|(_, r)| r["event_id"] == event_id)
        .count()
}

/// Ready plus unacked messages of a queue, as RabbitMQ last reported them (quorum queues
/// report every few seconds, so only ever wait for a value, never assert one at once).
fn depth(vhost: &TestVhost, queue: &str) -> u64 {
    vhost.queue_depths().get(queue).copied().unwrap_or(0)
}

#[actix_rt::test]
async fn signed_webhook_lands_once_in_the_file_sink() {
    let vhost = TestVhost::new("webhooks-file");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;

    let (a, b) = (new_id(), new_id());
    let first = event(&a, "email", "delivered", "u-file");
    assert_eq!(
        post_event(&gateway, &first).await,
        (StatusCode::OK, json!({"received": 1}))
    );
    // Customer.io retries: the same event again, alone and (below) in a batch with a new one.
    assert_eq!(
        post_event(&gateway, &first).await,
        (StatusCode::OK, json!({"received": 1}))
    );
    // The same event reaching the queue again (a retry landing on another replica).
    gateway
        .broker()
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "email.delivered",
            serde_json::to_vec(&first).unwrap(),
        ))
        .await
        .unwrap();
    // Queued after the duplicate: once `b` is stored, the duplicate was handled too.
    let batch = json!({"events": [first, event(&b, "push", "opened", "u-file")]});
    assert_eq!(
        post_event(&gateway, &batch).await,
        (StatusCode::OK, json!({"received": 2}))
    );

    let stored = eventually(WAIT, || {
        let rows = file_rows(dir.path());
        count_of(&rows, &b) == 1
    })
    .await;
    let rows = file_rows(dir.path());
    assert!(stored, "rows: {rows:?}");
    assert_eq!(count_of(&rows, &a), 1, "stored once: {rows:?}");
    assert_eq!(rows.len(), 2);

    let (partition, row) = rows.iter().find(|(_, r)| r["event_id"] == a).unwrap();
    assert_eq!(partition, "dt=2023-11-14");
    let mut columns: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    columns.sort();
    let mut expected = vec![
        "event_id",
        "object_type",
        "metric",
        "timestamp",
        "customer_id",
        "recipient",
        "delivery_id",
        "campaign_id",
        "action_id",
        "broadcast_id",
        "newsletter_id",
        "transactional_message_id",
        "identifiers",
        "raw",
        "received_at",
        "journey_id",
        "trigger_event_id",
        "failure_message",
        "href",
        "link_id",
        "machine",
        "prefetched",
    ];
    expected.sort();
    assert_eq!(columns, expected);
    assert_eq!(row["journey_id"], format!("jrn-{a}"));
    assert_eq!(row["machine"], false);
    assert_eq!(row["href"], Value::Null);
    assert_eq!(row["object_type"], "email");
    assert_eq!(row["metric"], "delivered");
    assert_eq!(row["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(row["customer_id"], "u-file");
    assert_eq!(row["recipient"], "u-file@example.com");
    assert_eq!(row["campaign_id"], "23");
    assert_eq!(row["identifiers"]["id"], "u-file");
    assert_eq!(row["raw"], first);
    assert!(
        chrono::DateTime::parse_from_rfc3339(row["received_at"].as_str().unwrap()).is_ok(),
        "{row}"
    );
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn signed_webhook_lands_once_in_postgres() {
    let vhost = TestVhost::new("webhooks-pg");
    let db = TestDb::new("webhooks_pg");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "postgres".to_string()),
        ("GATEWAY__WAREHOUSE__DATABASE_URL", db.url.clone()),
    ];
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;

    let (a, b) = (new_id(), new_id());
    let first = event(&a, "email", "clicked", "u-pg");
    let mut next_day = event(&b, "sms", "delivered", "u-pg");
    next_day["timestamp"] = json!(DAY + 86_400);
    assert_eq!(post_event(&gateway, &first).await.0, StatusCode::OK);
    assert_eq!(post_event(&gateway, &first).await.0, StatusCode::OK);
    // The same event reaching the queue again (a retry landing on another replica).
    gateway
        .broker()
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "email.clicked",
            serde_json::to_vec(&first).unwrap(),
        ))
        .await
        .unwrap();
    // Queued after the duplicate: once `b` is stored, the duplicate was handled too.
    assert_eq!(post_event(&gateway, &next_day).await.0, StatusCode::OK);

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let count = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1)
        }
    };
    let stored = eventually_async(WAIT, || {
        let cb = count(b.clone());
        async move { cb.await == 1 }
    })
    .await;
    assert!(
        stored,
        "a: {}, b: {}",
        count(a.clone()).await,
        count(b.clone()).await
    );
    assert_eq!(count(a.clone()).await, 1, "stored once");

    let row: (
        String,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        Value,
        Value,
    ) = sqlx::query_as(
        "SELECT metric, customer_id, campaign_id, \"timestamp\", identifiers, raw \
         FROM delivery_events WHERE event_id = $1",
    )
    .bind(&a)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.0, "clicked");
    assert_eq!(row.1, "u-pg");
    assert_eq!(row.2, "23");
    assert_eq!(row.3.timestamp(), DAY);
    assert_eq!(row.4["email"], "u-pg@example.com");
    assert_eq!(row.5, first);
    let details: (Option<String>, Option<bool>, Option<String>) =
        sqlx::query_as("SELECT journey_id, machine, href FROM delivery_events WHERE event_id = $1")
            .bind(&a)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(details, (Some(format!("jrn-{a}")), Some(false), None));
    // Partitioned by day: each event is in the partition of its UTC day.
    let partitions: Vec<(String, String)> =
        sqlx::query_as("SELECT tableoid::regclass::text, event_id FROM delivery_events ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        partitions,
        vec![
            ("delivery_events_20231114".to_string(), a.clone()),
            ("delivery_events_20231115".to_string(), b.clone()),
        ]
    );
    pool.close().await;
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn a_delivery_events_table_from_an_earlier_version_is_upgraded_in_place() {
    let vhost = TestVhost::new("webhooks-pg-upgrade");
    let db = TestDb::new("webhooks_pg_upgrade");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The table as the previous release created it, with one row in it.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for statement in [
        "CREATE TABLE delivery_events (event_id text NOT NULL, object_type text NOT NULL, \
         metric text NOT NULL, \"timestamp\" timestamptz NOT NULL, customer_id text, \
         recipient text, delivery_id text, campaign_id text, action_id text, broadcast_id text, \
         newsletter_id text, transactional_message_id text, identifiers jsonb, \
         raw jsonb NOT NULL, received_at timestamptz NOT NULL, raw_exact bytea, \
         PRIMARY KEY (event_id, \"timestamp\")) PARTITION BY RANGE (\"timestamp\")",
        "CREATE TABLE delivery_events_20231114 PARTITION OF delivery_events \
         FOR VALUES FROM ('2023-11-14 00:00:00+00') TO ('2023-11-15 00:00:00+00')",
        "INSERT INTO delivery_events (event_id, object_type, metric, \"timestamp\", raw, received_at) \
         VALUES ('old-1', 'email', 'sent', to_timestamp(1700000000), '{}', now())",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let extra = [
        ("GATEWAY__WAREHOUSE__SINK", "postgres".to_string()),
        ("GATEWAY__WAREHOUSE__DATABASE_URL", db.url.clone()),
    ];
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;
    let id = new_id();
    let mut click = event(&id, "email", "clicked", "u-upgrade");
    click["data"]["href"] = json!("https://example.com/pricing");
    click["data"]["link_id"] = json!(31);
    assert_eq!(post_event(&gateway, &click).await.0, StatusCode::OK);
    let stored = eventually_async(WAIT, || {
        let pool = pool.clone();
        let id = id.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    assert!(stored, "the new row is written into the upgraded table");
    type Columns = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Columns> = sqlx::query_as(
        "SELECT event_id, href, link_id, journey_id FROM delivery_events ORDER BY received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("old-1".to_string(), None, None, None),
            (
                id.clone(),
                Some("https://example.com/pricing".to_string()),
                Some("31".to_string()),
                Some(format!("jrn-{id}"))
            ),
        ]
    );
    pool.close().await;
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn refused_requests_store_nothing() {
    let vhost = TestVhost::new("webhooks-refused");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;

    let refused = new_id();
    let body = serde_json::to_vec(&event(&refused, "email", "bounced", "u-refused")).unwrap();
    // Unsigned.
    assert_eq!(
        post_raw(&gateway, body.clone(), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Signed with a secret the gateway does not have.
    let (status, answer) = post_signed(&gateway, "s3", body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        answer["error"].as_str().unwrap().contains("signature"),
        "{answer}"
    );
    // Correctly signed, but older than Customer.io's 7-day retry window.
    let old = (chrono::Utc::now().timestamp() - 8 * 86_400).to_string();
    let signature = sign("s1", &old, &body);
    let (status, answer) = post_raw(&gateway, body.clone(), Some((old, signature))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        answer["error"].as_str().unwrap().contains("old"),
        "{answer}"
    );
    // Correctly signed, an hour in the future.
    let ahead = (chrono::Utc::now().timestamp() + 3600).to_string();
    let signature = sign("s1", &ahead, &body);
    let (status, answer) = post_raw(&gateway, body.clone(), Some((ahead, signature))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        answer["error"].as_str().unwrap().contains("future"),
        "{answer}"
    );
    // A signature over the whole body, sent with a truncated body.
    let ts = now();
    let signature = sign("s1", &ts, &body);
    let cut = body[..body.len() / 2].to_vec();
    assert_eq!(
        post_raw(&gateway, cut.clone(), Some((ts, signature)))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Over 1 MiB, correctly signed.
    let mut big = event(&refused, "email", "bounced", "u-refused");
    big["data"]["padding"] = json!("x".repeat(1024 * 1024));
    let (status, _) = post_signed(&gateway, "s1", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing reached RabbitMQ: a sentinel posted afterwards is the only thing stored.
    let sentinel = new_id();
    assert_eq!(
        post_event(&gateway, &event(&sentinel, "email", "sent", "u-refused"))
            .await
            .0,
        StatusCode::OK
    );
    let done = eventually(WAIT, || count_of(&file_rows(dir.path()), &sentinel) == 1).await;
    assert!(done, "sentinel not stored");
    let rows = file_rows(dir.path());
    assert_eq!(rows.len(), 1, "only the sentinel: {rows:?}");
    assert!(
        sandbox.sandbox.records_for("u-refused").is_empty(),
        "no suppress was sent"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["signature", "stale", "future", "too_large"] {
        assert!(
            metrics.contains(&format!(
                "cio_gateway_webhooks_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} missing from /metrics"
        );
    }
    assert!(metrics.contains("cio_gateway_webhooks_received_total{"));
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn an_authentic_body_that_cannot_be_parsed_is_answered_200_and_dead_lettered() {
    let vhost = TestVhost::new("webhooks-unparsable");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;

    // Customer.io holds back every later webhook of an endpoint for an hour after a 4xx, so
    // none of these may be refused: each part that cannot be read is kept as a dead letter.
    let truncated = br#"{"event_id": "t1", "object_type": "email", "metr"#.to_vec();
    let not_an_event = br#"{"event_id": "x"}"#.to_vec();
    let good = new_id();
    let future_type = json!({"event_id": new_id(), "object_type": "email", "metric": "sent",
        "timestamp": {"at": "soon"}});
    let batch = serde_json::to_vec(&json!({"events": [
        event(&good, "email", "delivered", "u-unparsable"), future_type]}))
    .unwrap();
    for (body, parts) in [
        (truncated.clone(), 1),
        (not_an_event.clone(), 1),
        (batch, 2),
    ] {
        let (status, answer) = post_signed(&gateway, "s1", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["received"], parts);
    }
    // The readable event of the batch is stored as any other.
    let stored = eventually(WAIT, || count_of(&file_rows(dir.path()), &good) == 1).await;
    assert!(stored, "the batch's good event is in the warehouse");

    let letters = cio_gateway::dlq_admin::list(gateway.broker(), &Default::default(), 10)
        .await
        .unwrap()
        .dead_letters;
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter.error_kind.as_deref(), Some("webhook_unparsable"));
        assert_eq!(letter.original_exchange.as_deref(), Some(WEBHOOKS_EXCHANGE));
    }
    let raws: Vec<&str> = letters
        .iter()
        .map(|l| l.body["raw"].as_str().unwrap())
        .collect();
    assert_eq!(raws[0].as_bytes(), truncated, "kept byte for byte");
    assert_eq!(raws[1].as_bytes(), not_an_event);
    assert!(
        letters[0]
            .error
            .as_deref()
            .unwrap()
            .contains("invalid JSON")
    );
    assert!(letters[1].error.as_deref().unwrap().contains("object_type"));
    assert!(
        letters[2]
            .error
            .as_deref()
            .unwrap()
            .contains("events[1].timestamp"),
        "{:?}",
        letters[2].error
    );
    let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cio_gateway_webhooks_unparsable_total 3"),
        "{metrics}"
    );
    gateway.shutdown().await;
}

/// GET / PUT a user's preferences on the gateway (bearer `ingest.token` = "t").
async fn preferences(gateway: &Gateway, user: &str, put: Option<Value>) -> Value {
    let url = format!("http://{}/v1/users/{user}/preferences", gateway.addr);
    let client = reqwest::Client::new();
    let request = match put {
        Some(body) => client.put(url).json(&body),
        None => client.get(url),
    };
    let response = request.bearer_auth("t").send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

#[actix_rt::test]
async fn customer_io_subscription_changes_update_the_preferences_newest_wins_and_nothing_echoes() {
    let vhost = TestVhost::new("webhooks-subscriptions");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("GATEWAY__INGEST__TOKEN", "t".to_string()),
        (
            "GATEWAY__PREFERENCES__SUBSCRIPTION_TOPICS__SMS",
            "3".to_string(),
        ),
    ];
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;
    let user = format!("u-subs-{}", new_id());
    let at = |secs: i64, id: &str, metric: &str, data: Value| {
        let mut e = event(&new_id(), "customer", metric, id);
        e["timestamp"] = json!(secs);
        if let Value::Object(extra) = data {
            for (k, v) in extra {
                e["data"][k] = v;
            }
        }
        e
    };
    // Actions are handled one at a time in queue order: once a marker user's change shows,
    // every event posted before it was handled.
    let mut markers = 0;
    let mut settle = async |gateway: &Gateway| {
        markers += 1;
        let marker = format!("{user}-marker-{markers}");
        let now = chrono::Utc::now().timestamp();
        let posted = post_event(gateway, &at(now, &marker, "unsubscribed", json!({}))).await;
        assert_eq!(posted.0, StatusCode::OK);
        let shown = eventually_async(WAIT, || async {
            preferences(gateway, &marker, None).await["email"] == false
        })
        .await;
        assert!(shown, "the marker's change was applied");
    };

    // Chosen here first.
    let local = preferences(
        &gateway,
        &user,
        Some(json!({"email": true, "push": true,
        "sms": false, "inApp": true})),
    )
    .await;
    assert_eq!(local["email"], true);
    let chosen_at = chrono::Utc::now().timestamp();
    // An unsubscribe Customer.io reports from before that choice (a late retry): superseded.
    let stale = at(chosen_at - 3600, &user, "unsubscribed", json!({}));
    assert_eq!(post_event(&gateway, &stale).await.0, StatusCode::OK);
    settle(&gateway).await;
    assert_eq!(preferences(&gateway, &user, None).await["email"], true);

    // Later changes in Customer.io win: an unsubscribe, and the SMS topic of its subscription
    // center (mapped to topic 3).
    let unsubscribed = at(chosen_at + 2, &user, "unsubscribed", json!({}));
    assert_eq!(post_event(&gateway, &unsubscribed).await.0, StatusCode::OK);
    let topics = at(
        chosen_at + 3,
        &user,
        "cio_subscription_preferences_changed",
        json!({"content": "{\"topics\":{\"topic_3\":true,\"topic_8\":false}}"}),
    );
    assert_eq!(post_event(&gateway, &topics).await.0, StatusCode::OK);
    settle(&gateway).await;
    let now = preferences(&gateway, &user, None).await;
    assert_eq!(
        (now["email"].clone(), now["sms"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(
        now["syncPending"], false,
        "Customer.io's own change is not sent back"
    );
    // A resubscribe, then the earlier unsubscribe retried days late: the resubscribe stays.
    let resubscribed = at(chosen_at + 5, &user, "subscribed", json!({}));
    assert_eq!(post_event(&gateway, &resubscribed).await.0, StatusCode::OK);
    let mut retried = unsubscribed.clone();
    retried["event_id"] = json!(new_id());
    assert_eq!(post_event(&gateway, &retried).await.0, StatusCode::OK);
    settle(&gateway).await;
    assert_eq!(preferences(&gateway, &user, None).await["email"], true);

    // What Customer.io received for the user: only the local choice, with the mapped topic;
    // nothing echoed for the changes it reported.
    let records = sandbox.sandbox.records_for(&user);
    let identifies: Vec<_> = records.iter().filter(|r| r.action == "identify").collect();
    assert_eq!(identifies.len(), 1, "{records:#?}");
    let body = &identifies[0].body;
    let attributes = body.get("attributes").unwrap_or(body);
    assert_eq!(attributes["email_opt_in"], true);
    assert_eq!(
        attributes["cio_subscription_preferences"],
        json!({"topics": {"topic_3": false}})
    );
    assert!(attributes.get("unsubscribed").is_none(), "{attributes}");
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn a_transactional_sends_delivery_id_is_on_its_processed_event_and_in_its_webhook_rows() {
    use cio_gateway::broker::topology::PROCESSED_EXCHANGE;
    use cio_gateway::broker::topology::{BindingSpec, QueueKind, QueueSpec};
    use futures::StreamExt;
    let vhost = TestVhost::new("webhooks-delivery-id");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;
    let mut tap = Topology::new(2);
    tap.queues.push(QueueSpec {
        name: "test.processed".into(),
        kind: QueueKind::Classic,
    });
    tap.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: "test.processed".into(),
        routing_key: String::new(),
    });
    gateway.broker().declare(&tap).await.unwrap();

    gateway
        .state
        .publisher
        .publish(json!({"type": "transactional", "userId": "u-tx",
            "payload": {"transactional_message_id": 7, "to": "tx@example.com"}}))
        .await
        .unwrap();
    let mut processed = gateway.broker().consume("test.processed", 1).await.unwrap();
    let delivery = tokio::time::timeout(WAIT, processed.next())
        .await
        .expect("processed in time")
        .unwrap();
    let event_body: Value = serde_json::from_slice(&delivery.body).unwrap();
    delivery.acker.ack().await.unwrap();
    let records = sandbox.sandbox.records_for("u-tx");
    let sent = records
        .iter()
        .find_map(|r| r.delivery_id.clone())
        .expect("sent");
    assert_eq!(event_body["status"], "success");
    assert_eq!(event_body["deliveryId"], sent.as_str(), "{event_body}");

    // Customer.io's later webhooks of that message carry the id: the warehouse joins them.
    let mut delivered = event(&new_id(), "email", "delivered", "u-tx");
    delivered["data"]["delivery_id"] = json!(sent);
    assert_eq!(post_event(&gateway, &delivered).await.0, StatusCode::OK);
    let joined = eventually(WAIT, || {
        file_rows(dir.path())
            .iter()
            .any(|(_, row)| row["delivery_id"] == sent.as_str())
    })
    .await;
    assert!(joined);
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn both_secrets_are_accepted_during_rotation() {
    let vhost = TestVhost::new("webhooks-rotation");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;

    let (old, new) = (new_id(), new_id());
    let body = |id: &str| serde_json::to_vec(&event(id, "email", "opened", "u-rot")).unwrap();
    assert_eq!(
        post_signed(&gateway, "s1", body(&old)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post_signed(&gateway, "s2", body(&new)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post_signed(&gateway, "s3", body(&new_id())).await.0,
        StatusCode::UNAUTHORIZED
    );
    let stored = eventually(WAIT, || {
        let rows = file_rows(dir.path());
        count_of(&rows, &old) == 1 && count_of(&rows, &new) == 1
    })
    .await;
    assert!(stored, "rows: {:?}", file_rows(dir.path()));
    gateway.shutdown().await;
}

/// What a local stand-in for BigQuery's `insertAll` received, and how it answers.
#[derive(Default)]
struct BigQueryStandIn {
    requests: Mutex<Vec<(String, Option<String>, Value)>>,
    /// Answer the first this-many requests with `insertErrors`.
    refuse_first: usize,
    /// Answer every request 500.
    broken: bool,
}

async fn insert_all(
    req: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<BigQueryStandIn>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let n = {
        let mut requests = state.requests.lock();
        requests.push((req.path().to_string(), auth, body.into_inner()));
        requests.len()
    };
    if state.broken {
        return HttpResponse::InternalServerError().json(json!({"error": {"code": 500}}));
    }
    if n <= state.refuse_first {
        return HttpResponse::Ok().json(json!({"kind": "bigquery#tableDataInsertAllResponse",
            "insertErrors": [{"index": 0, "errors": [{"reason": "backendError"}]}]}));
    }
    HttpResponse::Ok().json(json!({"kind": "bigquery#tableDataInsertAllResponse"}))
}

/// Serves the stand-in on 127.0.0.1:0; returns its base URL.
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

fn bigquery_env(base_url: String) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY__WAREHOUSE__SINK", "bigquery".into()),
        ("GATEWAY__WAREHOUSE__BIGQUERY__BASE_URL", base_url),
        ("GATEWAY__WAREHOUSE__BIGQUERY__PROJECT", "proj".into()),
        ("GATEWAY__WAREHOUSE__BIGQUERY__DATASET", "reporting".into()),
        ("GATEWAY__WAREHOUSE__BIGQUERY__TOKEN", "bq-token".into()),
    ]
}

#[actix_rt::test]
async fn bigquery_sink_sends_insert_all_and_retries_insert_errors() {
    let vhost = TestVhost::new("webhooks-bq");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let standin = web::Data::new(BigQueryStandIn {
        refuse_first: 1,
        ..Default::default()
    });
    let base = spawn_bigquery(standin.clone());
    let extra = bigquery_env(base);
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;

    let id = new_id();
    let sent = event(&id, "email", "converted", "u-bq");
    assert_eq!(post_event(&gateway, &sent).await.0, StatusCode::OK);
    // Refused once with insertErrors, then written: the batch is retried, then acked.
    let done = eventually(WAIT, || standin.requests.lock().len() >= 2).await;
    assert!(done, "requests: {}", standin.requests.lock().len());

    let requests = standin.requests.lock().clone();
    for (path, auth, body) in &requests {
        assert_eq!(
            path,
            "/projects/proj/datasets/reporting/tables/delivery_events/insertAll"
        );
        assert_eq!(auth.as_deref(), Some("Bearer bq-token"));
        assert_eq!(body["kind"], "bigquery#tableDataInsertAllRequest");
        assert_eq!(body["skipInvalidRows"], false);
        assert_eq!(body["ignoreUnknownValues"], false);
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["insertId"], id.as_str());
        let row = &rows[0]["json"];
        assert_eq!(row.as_object().unwrap().len(), 22, "{row}");
        assert_eq!(row["journey_id"], format!("jrn-{id}"));
        assert_eq!(row["machine"], false);
        assert_eq!(row["event_id"], id.as_str());
        assert_eq!(row["object_type"], "email");
        assert_eq!(row["metric"], "converted");
        assert_eq!(row["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(row["customer_id"], "u-bq");
        assert_eq!(row["delivery_id"], format!("dlv-{id}"));
        assert_eq!(row["campaign_id"], 23, "INTEGER columns are numbers");
        assert_eq!(row["broadcast_id"], Value::Null);
        let raw: Value = serde_json::from_str(row["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw, sent);
        let identifiers: Value =
            serde_json::from_str(row["identifiers"].as_str().unwrap()).unwrap();
        assert_eq!(identifiers["id"], "u-bq");
    }
    assert_eq!(requests[0].2, requests[1].2, "the same batch is retried");
    gateway.shutdown().await;
}

/// Whether a sandbox record is an identify that set `attribute` (v1 body or v2 attributes).
fn sets(record: &cio_gateway::sandbox::Record, attribute: &str) -> Option<Value> {
    if record.action != "identify" {
        return None;
    }
    [
        record.body.get(attribute),
        record.body.pointer(&format!("/attributes/{attribute}")),
    ]
    .into_iter()
    .flatten()
    .next()
    .cloned()
}

#[actix_rt::test]
async fn the_default_rules_mark_a_bounce_after_the_customers_queued_messages_and_delete_no_one() {
    let vhost = TestVhost::new("webhooks-bounce");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // A slow Customer.io, so the customer's earlier messages are still queued at the bounce.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = [("GATEWAY__DELIVERY__TRACK_API", "v1".to_string())];
    let gateway = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;

    let user = format!("u-bounce-{}", new_id());
    let queued = 6;
    for seq in 0..queued {
        gateway
            .state
            .publisher
            .publish(json!({"type": "track", "userId": user,
                "payload": {"name": "step", "data": {"seq": seq}}}))
            .await
            .expect("published with confirm");
    }
    let bounce = event(&new_id(), "email", "bounced", &user);
    assert_eq!(post_event(&gateway, &bounce).await.0, StatusCode::OK);
    assert!(
        sandbox.sandbox.records_for(&user).len() < queued,
        "premise: the customer's messages are still queued when the bounce arrives"
    );
    // Opens have no rule: no action.
    assert_eq!(
        post_event(&gateway, &event(&new_id(), "email", "opened", &user))
            .await
            .0,
        StatusCode::OK
    );
    let marked = eventually(WAIT, || {
        sandbox
            .sandbox
            .records_for(&user)
            .iter()
            .any(|r| sets(r, "email_bounced_at") == Some(json!(DAY)))
    })
    .await;
    assert!(
        marked,
        "no bounce mark: {:#?}",
        sandbox.sandbox.records_for(&user)
    );

    // The same bounce reaches the actions queue again (a retry that got past the edge's
    // recent set). Then, for someone else, Customer.io's own unsubscribe (the default rules
    // send nothing back for it) and a spam complaint (which unsubscribes). Actions are handled
    // in queue order, so once the complaint's identify is delivered the others were handled.
    gateway
        .broker()
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "email.bounced",
            serde_json::to_vec(&bounce).unwrap(),
        ))
        .await
        .unwrap();
    let other = format!("u-spam-{}", new_id());
    let unsubscribed = event(&new_id(), "customer", "unsubscribed", &other);
    assert_eq!(post_event(&gateway, &unsubscribed).await.0, StatusCode::OK);
    let spam = event(&new_id(), "email", "spammed", &other);
    assert_eq!(post_event(&gateway, &spam).await.0, StatusCode::OK);
    // An email-only person (merged, or never given an id): named by the email, v1's shape.
    let only = format!("only-{}@example.com", new_id().to_lowercase());
    let mut email_only = event(&new_id(), "email", "spammed", "");
    email_only["data"]["identifiers"] = json!({"email": only});
    assert_eq!(post_event(&gateway, &email_only).await.0, StatusCode::OK);
    let done = eventually(WAIT, || {
        sandbox
            .sandbox
            .records_for(&only)
            .iter()
            .any(|r| sets(r, "unsubscribed") == Some(json!(true)))
    })
    .await;
    assert!(done, "{:#?}", sandbox.sandbox.records_for(&only));
    let others = sandbox.sandbox.records_for(&other);
    let sent: Vec<_> = others.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(
        sent.len(),
        1,
        "one identify for the complaint, nothing echoed: {others:#?}"
    );
    assert_eq!(sets(sent[0], "unsubscribed"), Some(json!(true)));

    // A last message for the bouncing customer: anything published for them before it
    // (a second mark) would reach the sandbox before it.
    gateway
        .state
        .publisher
        .publish(json!({"type": "track", "userId": user,
            "payload": {"name": "step", "data": {"seq": 99}}}))
        .await
        .unwrap();
    let last = eventually(WAIT, || {
        sandbox.sandbox.records_for(&user).len() > queued + 1
    })
    .await;
    assert!(last);

    let records = sandbox.sandbox.records_for(&user);
    let actions: Vec<&str> = records
        .iter()
        .filter(|r| !r.duplicate)
        .map(|r| r.action.as_str())
        .collect();
    let mut expected = vec!["event"; queued];
    expected.push("identify");
    expected.push("event");
    assert_eq!(
        actions, expected,
        "one bounce mark, after the queued events"
    );
    for person in [&user, &other, &only] {
        assert!(
            sandbox
                .sandbox
                .records_for(person)
                .iter()
                .all(|r| r.action != "suppress" && r.action != "delete"),
            "nobody's profile is deleted by default"
        );
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE), 0);
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn an_event_acknowledged_before_a_crash_is_written_after_restart() {
    let vhost = TestVhost::new("webhooks-crash");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // First gateway: its warehouse cannot write (BigQuery answers 500 to everything).
    let broken = web::Data::new(BigQueryStandIn {
        broken: true,
        ..Default::default()
    });
    let base = spawn_bigquery(broken.clone());
    let first = start_gateway(&webhook_gateway_env(
        &vhost,
        &sandbox,
        dir.path(),
        &bigquery_env(base),
    ))
    .await;

    let id = new_id();
    assert_eq!(
        post_event(&first, &event(&id, "email", "delivered", "u-crash"))
            .await
            .0,
        StatusCode::OK
    );
    // The 200 is out and the warehouse has the event in hand, failing to write it.
    assert!(eventually(WAIT, || !broken.requests.lock().is_empty()).await);
    assert!(file_rows(dir.path()).is_empty());
    first.shutdown().await;
    // Never acked, so it is still in the queue (quorum queue counts lag a few seconds).
    assert!(
        eventually(WAIT, || depth(&vhost, WEBHOOKS_WAREHOUSE_QUEUE) == 1).await,
        "the event is back in the queue"
    );

    // A new gateway on the same vhost, with a working (file) warehouse.
    let second = start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &[])).await;
    let written = eventually(WAIT, || count_of(&file_rows(dir.path()), &id) == 1).await;
    assert!(written, "rows: {:?}", file_rows(dir.path()));
    second.shutdown().await;
}

/// A broker that is down: nothing can be published.
struct DownBroker;

#[async_trait::async_trait]
impl Broker for DownBroker {
    async fn declare(&self, _: &Topology) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, _: Publish) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("connection refused".into()))
    }
    async fn consume(&self, _: &str, _: u16) -> Result<DeliveryStream, BrokerError> {
        Err(BrokerError::Unavailable("connection refused".into()))
    }
    async fn queue_len(&self, _: &str) -> Result<u32, BrokerError> {
        Err(BrokerError::Unavailable("connection refused".into()))
    }
    fn is_connected(&self) -> bool {
        false
    }
    async fn close(&self) {}
}

#[actix_rt::test]
async fn broker_down_answers_503_so_customerio_retries() {
    let settings = common::settings(&[("GATEWAY__WEBHOOKS__SIGNING_SECRETS", "s1")]);
    let state = cio_gateway::http::AppState::new(Arc::new(settings), Arc::new(DownBroker));
    let app = actix_web::test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .configure(cio_gateway::http::configure),
    )
    .await;
    let body = serde_json::to_vec(&event(&new_id(), "email", "bounced", "u-down")).unwrap();
    let ts = now();
    let request = actix_web::test::TestRequest::post()
        .uri("/webhooks/customerio")
        .insert_header(("X-CIO-Timestamp", ts.clone()))
        .insert_header(("X-CIO-Signature", sign("s1", &ts, &body)))
        .set_payload(body)
        .to_request();
    let response = actix_web::test::call_service(&app, request).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

/// Issue 19: an action names its person by `data.identifiers` (id, then email, then cio_id):
/// by the identifier's shape on Track v1 (`cio_` prefix for a cio_id), by its key on v2.
#[actix_web::test]
async fn an_action_reaches_the_person_its_webhook_names_on_both_api_versions() {
    for (version, shape) in [("v1", true), ("v2", false)] {
        let vhost = TestVhost::new(&format!("webhooks-person-{version}"));
        let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let extra = [("GATEWAY__DELIVERY__TRACK_API", version.to_string())];
        let gateway =
            start_gateway(&webhook_gateway_env(&vhost, &sandbox, dir.path(), &extra)).await;
        let tag = new_id().to_lowercase();
        let email = format!("only-{tag}@example.com");
        let cio = format!("cio{tag}");
        let people = [
            (json!({"id": format!("u-{tag}")}), format!("u-{tag}"), "id"),
            (json!({"email": email}), email.clone(), "email"),
            (json!({"cio_id": cio}), cio.clone(), "cio_id"),
        ];
        for (identifiers, _, _) in &people {
            let mut bounce = event(&new_id(), "email", "bounced", "x");
            bounce["data"] = json!({"identifiers": identifiers});
            assert_eq!(post_event(&gateway, &bounce).await.0, StatusCode::OK);
        }
        for (_, value, key) in &people {
            let named = if shape && *key == "cio_id" {
                format!("cio_{value}")
            } else {
                value.clone()
            };
            let reached = eventually(WAIT, || {
                sandbox.sandbox.records_for(&named).iter().any(|r| {
                    sets(r, "email_bounced_at").is_some()
                        && (shape || r.body["identifiers"] == json!({*key: value}))
                })
            })
            .await;
            assert!(
                reached,
                "{version}: no bounce mark for {key} {value}: {:#?}",
                sandbox.sandbox.records()
            );
            if shape {
                let paths: Vec<_> = sandbox
                    .sandbox
                    .records_for(&named)
                    .into_iter()
                    .map(|r| r.path)
                    .collect();
                assert!(
                    paths
                        .iter()
                        .all(|p| p.ends_with(&format!("/customers/{}", named.replace('@', "%40")))),
                    "{paths:?}"
                );
            }
        }
        let ids: Vec<_> = sandbox
            .sandbox
            .records()
            .into_iter()
            .filter_map(|r| r.user)
            .collect();
        assert!(
            !ids.iter().any(|u| u == "x"),
            "no action went to the deprecated customer_id"
        );
        gateway.shutdown().await;
    }
}
