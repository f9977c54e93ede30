//! The inbound Pipelines API (`POST /v1/batch`, `/v1/identify`, ...) against the real
//! RabbitMQ and a sandbox as Customer.io: each call kind delivered as its envelope, the
//! refusals (400, 401 with nothing published, 413), an invalid call dead-lettered while the
//! rest of its batch is delivered, 503 with `Retry-After` while RabbitMQ cannot confirm; and
//! Customer.io's own Node SDK (tests/sdk/, installed by npm into .cache/sdk-kit) pointed at the
//! gateway: every call delivered once, in order per user, a wrong write key gets nothing in,
//! and a retried batch is not delivered twice.
//!
//! The SDK test needs node with npm.

mod common;

use base64::Engine;
use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::sandbox::{self, Record, RunningSandbox, SandboxConfig};
use common::{TestVhost, eventually};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WRITE_KEY: &str = "pipelines-write-key";
const ADMIN: &str = "pipelines-admin";
const WAIT: Duration = Duration::from_secs(30);

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
        let gateway = common::start_gateway(&[
            ("GATEWAY__BROKER__URL", vhost.url.clone()),
            ("GATEWAY__BROKER__PARTITIONS", "4".into()),
            ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
            ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
            ("GATEWAY__INGEST__TOKEN", WRITE_KEY.into()),
            ("GATEWAY__ADMIN__TOKEN", ADMIN.into()),
            ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
            ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
            ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
            ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
            ("GATEWAY__SHUTDOWN__DRAIN_SECS", "3".into()),
        ])
        .await;
        Self {
            gateway,
            sandbox,
            vhost,
            _data: data,
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.gateway.addr)
    }

    /// A POST to `path` with the SDKs' credentials: Basic, the write key as user name.
    fn request(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base()))
            .header("authorization", basic(WRITE_KEY, ""))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.request(path).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn records(&self, user: &str) -> Vec<Record> {
        self.sandbox.sandbox.records_for(user)
    }

    /// The dead letters, as `GET /admin/dlq` lists them.
    async fn dead_letters(&self) -> Vec<Value> {
        let listing: Value = self
            .http
            .get(format!("{}/admin/dlq", self.base()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listing["deadLetters"].as_array().unwrap().clone()
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.sandbox.stop().await;
    }
}

fn dlq_depth(vhost: &TestVhost) -> u64 {
    vhost.queue_depths().get(DLQ_QUEUE).copied().unwrap_or(0)
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The `seq` a test call carries, wherever the delivered operation keeps it.
fn seq_of(record: &Record) -> Option<u64> {
    let b = &record.body;
    [b.pointer("/attributes/seq"), b.pointer("/seq")]
        .into_iter()
        .flatten()
        .find_map(Value::as_u64)
}

#[actix_rt::test]
async fn each_call_kind_is_delivered_as_its_envelope() {
    let setup = Setup::start("pipelines-kinds").await;
    let (user, visitor) = ("pl-kinds", "pl-visitor");
    let batch = json!({"batch": [
        {"type": "identify", "userId": user, "anonymousId": visitor, "messageId": "k-1",
            "timestamp": "2026-12-07T10:00:00.000Z", "traits": {"email": "k@example.com", "seq": 1}},
        {"type": "track", "userId": user, "event": "signup", "properties": {"plan": "pro", "seq": 2}},
        {"type": "page", "userId": user, "name": "Pricing",
            "properties": {"url": "https://example.com/pricing", "seq": 3}},
        {"type": "screen", "userId": user, "name": "Checkout", "properties": {"seq": 4}},
        {"type": "group", "userId": user, "groupId": "pl-acme",
            "traits": {"name": "Acme", "objectTypeId": "1"}},
        {"type": "alias", "userId": user, "previousId": "pl-old"},
        {"type": "track", "anonymousId": "pl-anon", "event": "viewed_pricing"},
    ]});
    let (status, body) = setup.post("/v1/batch", &batch).await;
    assert_eq!((status, &body), (200, &json!({"success": true})));
    // A single-call route: the route decides the kind; Bearer works as well.
    let response = setup
        .http
        .post(format!("{}/v1/track", setup.base()))
        .bearer_auth(WRITE_KEY)
        .json(&json!({"userId": user, "event": "upgraded", "properties": {"seq": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let sandbox = &setup.sandbox.sandbox;
    let arrived = eventually(WAIT, || {
        setup.records(user).len() == 6
            && sandbox.records_of_object("1:pl-acme").len() == 1
            && sandbox.records_of_anonymous("pl-anon").len() == 1
    })
    .await;
    assert!(arrived, "{:#?}", sandbox.records());
    let own = setup.records(user);
    let actions: Vec<&str> = own.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["identify", "event", "page", "screen", "merge", "event"],
        "{own:#?}"
    );
    let seqs: Vec<u64> = own.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "in request order: {own:#?}");
    let identify = &own[0].body;
    assert_eq!(identify["attributes"]["email"], "k@example.com");
    assert_eq!(identify["attributes"]["anonymous_id"], visitor);
    assert_eq!(identify["timestamp"], 1_796_637_600, "{identify}");
    assert_eq!(own[1].body["name"], "signup");
    assert_eq!(own[1].body["attributes"]["plan"], "pro");
    assert_eq!(own[2].body["name"], "https://example.com/pricing");
    assert_eq!(own[2].body["attributes"]["name"], "Pricing");
    assert_eq!(own[3].body["name"], "Checkout");
    assert_eq!(own[4].body["primary"], json!({"id": user}), "{:?}", own[4]);
    assert_eq!(own[4].body["secondary"], json!({"id": "pl-old"}));
    assert_eq!(own[5].body["name"], "upgraded");
    let object = &sandbox.records_of_object("1:pl-acme")[0];
    assert_eq!(object.action, "identify");
    assert_eq!(object.body["attributes"]["name"], "Acme");
    assert!(object.body["attributes"].get("objectTypeId").is_none());
    assert_eq!(
        object.body["cio_relationships"],
        json!([{"identifiers": {"id": user}}])
    );
    let anonymous = &sandbox.records_of_anonymous("pl-anon")[0];
    assert_eq!(anonymous.body["name"], "viewed_pricing");
    assert_eq!(dlq_depth(&setup.vhost), 0);
    setup.stop().await;
}

#[actix_rt::test]
async fn refused_requests_publish_nothing() {
    let setup = Setup::start("pipelines-refused").await;
    let user = "pl-refused";
    let call = |seq: u64| json!({"type": "track", "userId": user, "event": "e", "properties": {"seq": seq}});

    // A wrong, missing or misplaced write key: 401.
    for auth in [
        None,
        Some(basic("wrong-key", "")),
        Some(basic("", WRITE_KEY)),
        Some(basic(WRITE_KEY, "a-password")),
        Some("Bearer wrong-key".to_string()),
    ] {
        let mut request = setup
            .http
            .post(format!("{}/v1/batch", setup.base()))
            .json(&json!({"batch": [call(1)]}));
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
    }
    // Not JSON, not a batch, an empty batch: 400.
    let not_json = setup
        .request("/v1/batch")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert_eq!(setup.post("/v1/batch", &json!({"batch": []})).await.0, 400);
    assert_eq!(setup.post("/v1/batch", &json!({})).await.0, 400);
    assert_eq!(setup.post("/v1/track", &json!([call(1)])).await.0, 400);
    // Over ingest.max_body_bytes (1 MiB by default): 413.
    let big = json!({"batch": [{"type": "track", "userId": user, "event": "e",
        "properties": {"seq": 1, "blob": "x".repeat(1024 * 1024)}}]});
    assert_eq!(setup.post("/v1/batch", &big).await.0, 413);

    // Had anything above been published, it would reach Customer.io before this.
    assert_eq!(
        setup
            .post("/v1/batch", &json!({"batch": [call(2)]}))
            .await
            .0,
        200
    );
    assert!(eventually(WAIT, || !setup.records(user).is_empty()).await);
    let seqs: Vec<u64> = setup.records(user).iter().filter_map(seq_of).collect();
    assert_eq!(seqs, [2], "nothing of the refused requests was published");
    assert_eq!(dlq_depth(&setup.vhost), 0);
    setup.stop().await;
}

#[actix_rt::test]
async fn an_invalid_call_is_dead_lettered_and_the_rest_of_its_batch_delivered() {
    let setup = Setup::start("pipelines-invalid").await;
    let user = "pl-mixed";
    let no_event = json!({"type": "track", "userId": user, "properties": {"seq": 2}});
    let anonymous_identify =
        json!({"type": "identify", "anonymousId": "pl-a", "traits": {"seq": 3}});
    let bad_attribute = json!({"type": "identify", "userId": user,
        "traits": {"seq": 4, "blob": "y".repeat(2000)}});
    let batch = json!({"batch": [
        {"type": "track", "userId": user, "event": "e", "properties": {"seq": 1}},
        no_event,
        anonymous_identify,
        bad_attribute,
        {"type": "teleport", "userId": user},
        {"type": "track", "userId": user, "event": "e", "properties": {"seq": 5}},
    ]});
    let (status, body) = setup.post("/v1/batch", &batch).await;
    assert_eq!(status, 200, "{body}");

    assert!(eventually(WAIT, || setup.records(user).len() == 2).await);
    let seqs: Vec<u64> = setup.records(user).iter().filter_map(seq_of).collect();
    assert_eq!(seqs, [1, 5]);
    // Answered 200 only once the dead letters were confirmed: they are there already.
    let dead = setup.dead_letters().await;
    assert_eq!(dead.len(), 4, "{dead:#?}");
    for letter in &dead {
        assert_eq!(letter["errorKind"], "invalid", "{letter}");
    }
    let raw_of = |letter: &Value| -> Value {
        serde_json::from_str(letter["body"]["raw"].as_str().unwrap()).unwrap()
    };
    let error_of = |raw: &Value| -> String {
        let letter = dead
            .iter()
            .find(|l| raw_of(l) == *raw)
            .expect("dead-lettered");
        letter["error"].as_str().unwrap().to_string()
    };
    assert!(error_of(&no_event).contains("event"));
    let anonymous = error_of(&anonymous_identify);
    assert!(
        anonymous.contains("userId") && anonymous.contains("identify"),
        "{anonymous}"
    );
    assert!(error_of(&bad_attribute).contains("its envelope is invalid"));
    assert!(
        dead.iter().any(|l| raw_of(l)["type"] == "teleport"
            && l["error"].as_str().unwrap().contains("teleport"))
    );
    setup.stop().await;
}

#[actix_rt::test]
async fn while_rabbitmq_cannot_confirm_the_answer_is_503_with_retry_after() {
    let setup = Setup::start("pipelines-503").await;
    let outage = setup.vhost.outage();
    let broker = setup.gateway.broker().clone();
    assert!(eventually(Duration::from_secs(20), || !broker.is_connected()).await);
    let batch = json!({"batch": [{"type": "track", "userId": "pl-503", "event": "e"}]});
    let response = setup
        .request("/v1/batch")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    drop(outage);
    setup.stop().await;
}

/// The SDK and the driver script in a cache directory of their own (ESM resolves packages
/// next to the script, not through NODE_PATH).
fn sdk_kit() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/sdk-kit");
    std::fs::create_dir_all(&kit).unwrap();
    for file in ["package.json", "package-lock.json", "send.mjs"] {
        std::fs::copy(source.join(file), kit.join(file)).unwrap();
    }
    if !kit
        .join("node_modules/@customerio/cdp-analytics-node")
        .exists()
    {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&kit)
            .status()
            .expect("npm runs");
        assert!(installed.success(), "npm ci of tests/sdk");
    }
    kit
}

/// Runs tests/sdk/send.mjs: `users` users × `calls` calls, ids `<prefix>-<n>`; its summary.
async fn send_with_sdk(
    kit: &Path,
    base: &str,
    key: &str,
    prefix: &str,
    users: u32,
    calls: u32,
) -> Value {
    let output = tokio::process::Command::new("node")
        .arg(kit.join("send.mjs"))
        .env("GATEWAY_URL", base)
        .env("WRITE_KEY", key)
        .env("PREFIX", prefix)
        .env("USERS", users.to_string())
        .env("CALLS", calls.to_string())
        .env("MAX_RETRIES", "1")
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "send.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[actix_rt::test]
async fn the_node_sdk_gets_every_call_delivered_once_in_order() {
    let kit = sdk_kit();
    let setup = Setup::start("pipelines-sdk").await;
    let (users, calls) = (20, 15);
    let summary = send_with_sdk(&kit, &setup.base(), WRITE_KEY, "pl-sdk", users, calls).await;
    assert_eq!(
        summary,
        json!({"sent": users * calls, "failed": 0, "errors": []})
    );
    let user_ids: Vec<String> = (0..users).map(|u| format!("pl-sdk-{u}")).collect();
    let delivered = eventually(WAIT, || {
        user_ids
            .iter()
            .all(|u| setup.records(u).len() >= calls as usize)
    })
    .await;
    assert!(delivered, "{:#?}", setup.sandbox.sandbox.stats());
    let expected: Vec<u64> = (0..calls as u64).collect();
    for user in &user_ids {
        let records = setup.records(user);
        let seqs: Vec<u64> = records.iter().filter_map(seq_of).collect();
        assert_eq!(seqs, expected, "{user}: once each, in order");
        let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(&actions[..3], ["identify", "event", "page"], "{user}");
    }

    // A wrong write key: the SDK reports the failure, and nothing gets in.
    let refused = send_with_sdk(&kit, &setup.base(), "not-the-key", "pl-sdk-wrong", 2, 3).await;
    assert_eq!(refused["failed"], 6, "{refused}");
    assert!(
        refused["errors"][0].as_str().unwrap().contains("401"),
        "{refused}"
    );

    // A batch sent twice with the same messageIds, as an SDK retries one whose answer it
    // missed: delivered once. The fence after it arrives last, so the copy was handled before.
    let retried = "pl-sdk-retried";
    let batch = json!({"batch": (0..3).map(|seq| json!({"type": "track", "userId": retried,
        "messageId": format!("retried-{seq}"), "event": "e", "properties": {"seq": seq}}))
        .collect::<Vec<_>>()});
    for _ in 0..2 {
        assert_eq!(setup.post("/v1/batch", &batch).await.0, 200);
    }
    let fence =
        json!({"type": "track", "userId": retried, "event": "fence", "properties": {"seq": 99}});
    assert_eq!(setup.post("/v1/track", &fence).await.0, 200);
    assert!(
        eventually(WAIT, || setup
            .records(retried)
            .iter()
            .any(|r| seq_of(r) == Some(99)))
        .await
    );
    let seqs: Vec<u64> = setup.records(retried).iter().filter_map(seq_of).collect();
    assert_eq!(seqs, [0, 1, 2, 99], "the retried batch was delivered once");
    assert!(
        setup.records("pl-sdk-wrong-0").is_empty() && setup.records("pl-sdk-wrong-1").is_empty()
    );
    setup.stop().await;
}
