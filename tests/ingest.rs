//! `POST /v1/events` (issue 5): authentication in its three modes, 400 naming every bad item
//! (and publishing none), 413, 202 only after RabbitMQ's confirms with delivery to
//! "Customer.io" (a sandbox), 503 while RabbitMQ is unreachable; and `cio-gateway publish`
//! against the real RabbitMQ.

mod common;

use actix_web::test as web_test;
use actix_web::{App, web};
use cio_gateway::app::Gateway;
use cio_gateway::http;
use cio_gateway::sandbox::{self, Record, RunningSandbox, SandboxConfig};
use common::{TestVhost, eventually};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "ingest-secret";

struct Setup {
    gateway: Gateway,
    sandbox: RunningSandbox,
    vhost: TestVhost,
    _data: tempfile::TempDir,
    http: reqwest::Client,
}

impl Setup {
    async fn start(prefix: &str) -> Self {
        let vhost = TestVhost::new(prefix);
        let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let vars: Vec<(&'static str, String)> = vec![
            ("GATEWAY__BROKER__URL", vhost.url.clone()),
            ("GATEWAY__BROKER__PARTITIONS", "4".into()),
            ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
            ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
            ("GATEWAY__INGEST__TOKEN", TOKEN.into()),
            ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
            ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
            ("GATEWAY__CUSTOMERIO__APP_RPS", "1000".into()),
            ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
            ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
            ("GATEWAY__SHUTDOWN__DRAIN_SECS", "5".into()),
            ("GATEWAY__TEMPLATES__WELCOME", "7".into()),
        ];
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let gateway = Gateway::start(common::settings(&pairs))
            .await
            .expect("gateway starts");
        Self {
            gateway,
            sandbox,
            vhost,
            _data: data,
            http: reqwest::Client::new(),
        }
    }

    fn events_url(&self) -> String {
        format!("http://{}/v1/events", self.gateway.addr)
    }

    async fn post(&self, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.events_url())
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn records(&self, user: &str) -> Vec<Record> {
        self.sandbox.sandbox.records_for(user)
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.sandbox.stop().await;
    }
}

fn marker(record: &Record) -> Option<u64> {
    let b = &record.body;
    [
        b.pointer("/attributes/marker"),
        b.pointer("/data/marker"),
        b.pointer("/marker"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_u64)
}

#[actix_rt::test]
async fn bad_items_are_each_named_and_nothing_is_published() {
    let setup = Setup::start("ingest-400").await;
    let big = "x".repeat(600 * 1024);
    let batch = json!([
        {"type": "track", "userId": "ing-1", "payload": {"name": "first", "data": {"marker": 1}}},
        {"type": "identify", "payload": {"plan": "pro"}},
        {"type": "teleport", "userId": "ing-1"},
        {"type": "track", "userId": "ing-1", "payload": {"data": {"marker": 9}}},
        {"type": "identify", "userId": "ing-1", "payload": {"blob": big}},
        {"type": "identify", "userId": "ing-1", "payload": {"marker": 5}},
    ]);
    let (status, body) = setup.post(&batch).await;
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].as_array().unwrap();
    let summary: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [(1, "userId"), (2, "type"), (3, "payload.name"), (4, "")],
        "{body}"
    );
    assert!(errors[0]["reason"].as_str().unwrap().contains("required"));
    assert!(errors[1]["reason"].as_str().unwrap().contains("teleport"));
    assert!(
        errors[3]["reason"].as_str().unwrap().contains("bytes"),
        "{}",
        errors[3]
    );

    // A single bad envelope is item 0.
    let (status, body) = setup
        .post(&json!({"type": "track", "userId": "ing-1"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["index"], 0);
    assert_eq!(body["errors"][0]["field"], "payload.name");
    // Not JSON, not an envelope, nothing in it.
    let response = setup
        .http
        .post(setup.events_url())
        .bearer_auth(TOKEN)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(setup.post(&json!(7)).await.0, 400);
    assert_eq!(setup.post(&json!([])).await.0, 400);
    // Over the 5 MiB body limit.
    let huge = json!({"type": "identify", "userId": "ing-1", "payload": {"blob": "y".repeat(6 * 1024 * 1024)}});
    let response = setup
        .http
        .post(setup.events_url())
        .bearer_auth(TOKEN)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    // Had the valid first item been published, it would reach Customer.io before this one.
    let (status, body) = setup
        .post(&json!({"type": "track", "userId": "ing-1", "payload": {"name": "second", "data": {"marker": 2}}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        eventually(Duration::from_secs(30), || !setup
            .records("ing-1")
            .is_empty())
        .await
    );
    // Delivery is in order per user: anything of the rejected batch would be there already.
    let markers: Vec<_> = setup.records("ing-1").iter().filter_map(marker).collect();
    assert_eq!(markers, [2], "nothing of the rejected batch was published");
    setup.stop().await;
}

#[actix_rt::test]
async fn accepted_after_confirms_and_delivered_in_order() {
    let setup = Setup::start("ingest-202").await;

    // Without or with a wrong token: 401, with the scheme named.
    for auth in [None, Some("Bearer wrong"), Some(&*format!("Basic {TOKEN}"))] {
        let mut request = setup
            .http
            .post(setup.events_url())
            .json(&json!({"type": "delete", "userId": "x"}));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }

    let given = ulid::Ulid::new().to_string();
    let batch = json!([
        {"type": "identify", "userId": "ing-a", "payload": {"marker": 1, "plan": "pro"}},
        {"type": "track", "userId": "ing-b", "payload": {"name": "signup", "data": {"marker": 1}}},
        {"type": "track", "userId": "ing-a", "correlationId": given, "payload": {"name": "step", "data": {"marker": 2}}},
        {"type": "identify", "userId": "ing-a", "payload": {"marker": 3}},
        {"type": "transactional", "userId": "ing-b", "payload": {"template": "welcome", "to": "b@example.com",
            "message_data": {"marker": 2}}},
    ]);
    let (status, body) = setup.post(&batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 5);
    let ids = body["correlationIds"].as_array().unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[2], given.as_str(), "a given correlationId is kept");
    assert!(ids.iter().all(|id| {
        id.as_str()
            .is_some_and(|s| ulid::Ulid::from_string(s).is_ok())
    }));

    let delivered = eventually(Duration::from_secs(30), || {
        setup.records("ing-a").len() >= 3 && setup.records("ing-b").len() >= 2
    })
    .await;
    assert!(
        delivered,
        "a: {:?}\nb: {:?}",
        setup.records("ing-a"),
        setup.records("ing-b")
    );
    let a: Vec<_> = setup.records("ing-a").iter().filter_map(marker).collect();
    assert_eq!(a, [1, 2, 3], "ing-a in publish order");
    let track = setup
        .records("ing-a")
        .into_iter()
        .find(|r| marker(r) == Some(2))
        .unwrap();
    assert_eq!(
        track.event_id.as_deref(),
        Some(given.as_str()),
        "the ULID is the event id"
    );
    let b = setup.records("ing-b");
    assert_eq!(b.len(), 2);
    assert!(
        b.iter().any(|r| r.api == "app"),
        "the transactional send reached the App API"
    );

    // The broker is unreachable for this gateway: 503, not 202.
    let outage = setup.vhost.outage();
    let broker = setup.gateway.broker().clone();
    assert!(eventually(Duration::from_secs(20), || !broker.is_connected()).await);
    let (status, body) = setup
        .post(&json!({"type": "track", "userId": "ing-c", "payload": {"name": "x"}}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["failed"], json!([0]));
    drop(outage);
    setup.stop().await;
}

#[actix_rt::test]
async fn the_publish_command_works_against_rabbitmq() {
    let setup = Setup::start("ingest-cli").await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args([
            "publish",
            "track",
            "--user",
            "cli-1",
            "--payload",
            r#"{"name": "from-cli", "data": {"marker": 4}}"#,
        ])
        .env_remove("DATABASE_URL")
        .env("AMQP_URL", &setup.vhost.url)
        .env("GATEWAY__BROKER__PARTITIONS", "4")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["published"], true);
    let id = printed["correlationId"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(30), || !setup
            .records("cli-1")
            .is_empty())
        .await
    );
    let record = &setup.records("cli-1")[0];
    assert_eq!(marker(record), Some(4));
    assert_eq!(record.event_id.as_deref(), Some(id.as_str()));

    // An invalid envelope is refused before anything is sent.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args(["publish", "track", "--user", "cli-1", "--payload", "{}"])
        .env("AMQP_URL", &setup.vhost.url)
        .env("GATEWAY__BROKER__PARTITIONS", "4")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("payload.name"));

    // An anonymous screen view, and an object.
    for args in [
        &[
            "screen",
            "--anonymous-id",
            "cli-anon",
            "--payload",
            r#"{"name": "Home"}"#,
        ][..],
        &[
            "object",
            "--object",
            "1:cli-acme",
            "--payload",
            r#"{"action": "identify", "attributes": {"name": "Acme"}}"#,
        ][..],
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
            .arg("publish")
            .args(args)
            .env_remove("DATABASE_URL")
            .env("AMQP_URL", &setup.vhost.url)
            .env("GATEWAY__BROKER__PARTITIONS", "4")
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let sandbox = &setup.sandbox.sandbox;
    assert!(
        eventually(Duration::from_secs(30), || {
            sandbox.records_of_anonymous("cli-anon").len() == 1
                && sandbox.records_of_object("1:cli-acme").len() == 1
        })
        .await,
        "{:#?}",
        sandbox.records()
    );
    setup.stop().await;
}

/// The three authentication modes, on the routes alone (no RabbitMQ needed).
#[actix_rt::test]
async fn without_a_token_the_route_is_off_except_on_loopback_in_local_mode() {
    async fn status(vars: &[(&str, &str)], peer: &str) -> u16 {
        let state = common::routes_state(vars).await;
        let app = web_test::init_service(
            App::new()
                .app_data(web::Data::new(state))
                .configure(http::configure),
        )
        .await;
        let request = web_test::TestRequest::post()
            .uri("/v1/events")
            .peer_addr(peer.parse().unwrap())
            .set_json(json!({"type": "track", "userId": "42", "payload": {"name": "signup"}}))
            .to_request();
        web_test::call_service(&app, request)
            .await
            .status()
            .as_u16()
    }
    let rabbit = [(
        "GATEWAY__BROKER__URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )];
    assert_eq!(
        status(&rabbit, "127.0.0.1:5000").await,
        404,
        "no token, not local: off"
    );
    assert_eq!(
        status(&[], "127.0.0.1:5000").await,
        202,
        "local mode, loopback: open"
    );
    assert_eq!(
        status(&[], "[::1]:5000").await,
        202,
        "local mode, IPv6 loopback: open"
    );
    assert_eq!(
        status(&[], "192.0.2.7:5000").await,
        404,
        "local mode, another host: off"
    );
    assert_eq!(
        status(&[("GATEWAY__INGEST__TOKEN", "t")], "127.0.0.1:5000").await,
        401,
        "a configured token is required even in local mode"
    );
}
