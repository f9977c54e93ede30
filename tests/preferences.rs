//! Messaging preferences (issue 5): the store on both backends, the HTTP routes, the identify
//! they publish through the pipeline to "Customer.io" (a sandbox), a change made while RabbitMQ
//! is unreachable reaching Customer.io once it is back, and the user-source sync.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::domain::UserId;
use cio_gateway::preferences::{
    PostgresStore, PreferenceStore, Preferences, PreferencesChange, SqliteStore,
};
use cio_gateway::sandbox::{self, Record, RunningSandbox, SandboxConfig};
use common::{TestDb, TestVhost, eventually, eventually_async};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "ingest-secret";

// ---------------------------------------------------------------------------------------------
// The store, the same suite on SQLite and PostgreSQL.

fn id(user: &str) -> UserId {
    UserId::parse(user).unwrap()
}

fn change(
    email: Option<bool>,
    push: Option<bool>,
    sms: Option<bool>,
    in_app: Option<bool>,
) -> PreferencesChange {
    PreferencesChange {
        email,
        push,
        sms,
        in_app,
    }
}

async fn store_suite(store: Arc<dyn PreferenceStore>) {
    assert_eq!(store.get(&id("nobody")).await.unwrap(), None);
    assert_eq!(store.pending_count().await.unwrap(), 0);

    // A first PATCH applies to the defaults.
    let first = store
        .apply(&id("u1"), &change(None, None, Some(true), None))
        .await
        .unwrap();
    assert_eq!(
        first.preferences,
        Preferences {
            sms: true,
            ..Preferences::default()
        }
    );
    assert!(first.sync_pending);
    assert_eq!(first.version, 1);
    assert_eq!(store.get(&id("u1")).await.unwrap(), Some(first.clone()));

    // A PUT replaces everything and bumps the version.
    let all = Preferences {
        email: false,
        push: false,
        sms: false,
        in_app: true,
    };
    let second = store
        .apply(&id("u1"), &PreferencesChange::all(all))
        .await
        .unwrap();
    assert_eq!(second.preferences, all);
    assert_eq!(second.version, 2);
    assert!(second.updated_at >= first.updated_at);

    // A sync of an older version does not clear the mark; of the current one, it does.
    assert!(!store.mark_synced(&id("u1"), 1).await.unwrap());
    assert!(store.get(&id("u1")).await.unwrap().unwrap().sync_pending);
    assert!(store.mark_synced(&id("u1"), 2).await.unwrap());
    assert!(!store.get(&id("u1")).await.unwrap().unwrap().sync_pending);
    assert!(
        !store.mark_synced(&id("u1"), 2).await.unwrap(),
        "already synced"
    );
    assert_eq!(store.pending_count().await.unwrap(), 0);

    // The outbox: pending rows, oldest change first.
    for user in ["u2", "u3", "u4"] {
        store
            .apply(&id(user), &change(Some(false), None, None, None))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let pending: Vec<String> = store
        .pending(2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.user_id.to_string())
        .collect();
    assert_eq!(pending, ["u2", "u3"]);
    assert_eq!(store.pending_count().await.unwrap(), 3);

    // Concurrent partial changes of one user lose nothing.
    let changes = (0..20).map(|i| {
        let store = store.clone();
        async move {
            let c = if i % 2 == 0 {
                change(Some(false), None, None, None)
            } else {
                change(None, None, Some(true), None)
            };
            store.apply(&id("busy"), &c).await.unwrap()
        }
    });
    futures::future::join_all(changes).await;
    let busy = store.get(&id("busy")).await.unwrap().unwrap();
    assert_eq!(busy.version, 20);
    assert!(!busy.preferences.email && busy.preferences.sms && busy.preferences.push);

    // Odd ids survive the round trip.
    let odd = "ü/ser \"quoted\" ';--";
    store
        .apply(&id(odd), &change(None, Some(false), None, None))
        .await
        .unwrap();
    assert!(!store.get(&id(odd)).await.unwrap().unwrap().preferences.push);

    // Changes Customer.io reports: applied only when newer than the row, never pending.
    let remote = store
        .apply_remote(&id("r1"), &change(Some(false), None, None, None), 1_000)
        .await
        .unwrap()
        .expect("a new user's remote change applies");
    assert!(!remote.preferences.email && !remote.sync_pending);
    assert_eq!(remote.updated_at, 1_000);
    let older = store
        .apply_remote(&id("r1"), &change(Some(true), None, None, None), 999)
        .await
        .unwrap();
    assert_eq!(older, None, "older than the row: superseded");
    let local = store
        .apply(&id("r1"), &change(None, None, Some(true), None))
        .await
        .unwrap();
    assert!(local.sync_pending);
    let late = store
        .apply_remote(&id("r1"), &change(Some(true), None, None, None), 2_000)
        .await
        .unwrap();
    assert_eq!(
        late, None,
        "a local change made now is newer than one from 1970"
    );
    let newer = store
        .apply_remote(
            &id("r1"),
            &change(Some(true), None, None, None),
            local.updated_at + 1,
        )
        .await
        .unwrap()
        .expect("newer applies");
    assert!(newer.preferences.email && newer.preferences.sms);
    assert!(newer.sync_pending, "the local change is still to be synced");
    assert_eq!(newer.version, local.version + 1);
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/preferences.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    store_suite(store.clone()).await;
    store.close().await;
    // Reopening runs the migrations again (a no-op) and keeps the data.
    let again = SqliteStore::open(&path).await.unwrap();
    assert_eq!(again.get(&id("busy")).await.unwrap().unwrap().version, 20);
    again.close().await;
}

#[tokio::test]
async fn sqlite_file_opened_by_two_gateways_at_once() {
    // Tests and `demo` start several gateways on one default data directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preferences.db");
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.apply(&id("shared"), &change(Some(false), None, None, None))
        .await
        .unwrap();
    assert!(
        !b.get(&id("shared"))
            .await
            .unwrap()
            .unwrap()
            .preferences
            .email
    );
}

#[tokio::test]
async fn postgres_store() {
    let db = TestDb::new("prefs-store");
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store_suite(store.clone()).await;
    store.close().await;
    let again = PostgresStore::connect(&db.url).await.unwrap();
    assert_eq!(again.get(&id("busy")).await.unwrap().unwrap().version, 20);
    again.close().await;
}

// ---------------------------------------------------------------------------------------------
// Through the gateway.

struct Setup {
    gateway: Gateway,
    sandbox: RunningSandbox,
    vhost: TestVhost,
    _data: tempfile::TempDir,
    http: reqwest::Client,
}

impl Setup {
    async fn start(prefix: &str, extra: &[(&'static str, String)]) -> Self {
        let vhost = TestVhost::new(prefix);
        let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut vars: Vec<(&'static str, String)> = vec![
            ("GATEWAY__BROKER__URL", vhost.url.clone()),
            ("GATEWAY__BROKER__PARTITIONS", "4".into()),
            ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
            ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
            ("GATEWAY__INGEST__TOKEN", TOKEN.into()),
            ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
            ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
            ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
            ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
            ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
            ("GATEWAY__SHUTDOWN__DRAIN_SECS", "5".into()),
        ];
        vars.extend(extra.iter().cloned());
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

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The opt-in attributes of the identifies the sandbox received for `user`, in order.
    fn identifies(&self, user: &str) -> Vec<Value> {
        self.sandbox
            .sandbox
            .records_for(user)
            .iter()
            .filter(|r| r.action == "identify")
            .map(attributes)
            .collect()
    }

    /// The gateway's `/metrics` page.
    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a counter or gauge (without labels) on the gateway's `/metrics`; 0 when
    /// absent.
    async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.sandbox.stop().await;
    }
}

/// A record's attributes, whether it came through Track v2 (`attributes`) or v1 (the body).
fn attributes(record: &Record) -> Value {
    record
        .body
        .get("attributes")
        .cloned()
        .unwrap_or_else(|| record.body.clone())
}

fn opt_ins(attrs: &Value) -> Value {
    json!({
        "email_opt_in": attrs["email_opt_in"],
        "push_opt_in": attrs["push_opt_in"],
        "sms_opt_in": attrs["sms_opt_in"],
        "in_app_opt_in": attrs["in_app_opt_in"],
    })
}

async fn wait_for_identifies(setup: &Setup, user: &str, n: usize) -> Vec<Value> {
    let arrived = eventually(Duration::from_secs(30), || {
        setup.identifies(user).len() >= n
    })
    .await;
    assert!(
        arrived,
        "{user}: {} identifies, wanted {n}",
        setup.identifies(user).len()
    );
    setup.identifies(user)
}

#[actix_rt::test]
async fn put_and_patch_reach_customer_io_as_identifies() {
    let setup = Setup::start("prefs-http", &[]).await;
    use reqwest::Method;

    // Defaults for someone who never chose.
    let (status, body) = setup
        .send(Method::GET, "/v1/users/pat/preferences", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["email"], true);
    assert_eq!(body["sms"], false);
    assert_eq!(body["syncPending"], false);
    assert_eq!(body["updatedAt"], Value::Null);

    let (status, body) = setup
        .send(
            Method::PUT,
            "/v1/users/pat/preferences",
            Some(json!({"email": false, "push": true, "sms": true, "inApp": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["syncPending"], false,
        "confirmed by RabbitMQ before the answer"
    );
    let identifies = wait_for_identifies(&setup, "pat", 1).await;
    assert_eq!(
        opt_ins(&identifies[0]),
        json!({"email_opt_in": false, "push_opt_in": true, "sms_opt_in": true, "in_app_opt_in": false})
    );
    assert_eq!(
        identifies[0]["_env"], "development",
        "through the pipeline, which adds _env"
    );

    // PATCH changes one field; the identify carries all four as they are now.
    let (status, body) = setup
        .send(
            Method::PATCH,
            "/v1/users/pat/preferences",
            Some(json!({"sms": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], false);
    assert_eq!(body["sms"], false);
    let identifies = wait_for_identifies(&setup, "pat", 2).await;
    assert_eq!(
        opt_ins(&identifies[1]),
        json!({"email_opt_in": false, "push_opt_in": true, "sms_opt_in": false, "in_app_opt_in": false})
    );
    let (_, body) = setup
        .send(Method::GET, "/v1/users/pat/preferences", None)
        .await;
    assert_eq!(
        (
            body["email"].clone(),
            body["push"].clone(),
            body["sms"].clone(),
            body["inApp"].clone()
        ),
        (json!(false), json!(true), json!(false), json!(false))
    );
    assert!(body["updatedAt"].is_string());

    // Bad requests name the field; nothing is stored or published.
    let (status, body) = setup
        .send(
            Method::PUT,
            "/v1/users/pat/preferences",
            Some(json!({"email": false})),
        )
        .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["push", "sms", "inApp"]);
    let (status, body) = setup
        .send(
            Method::PATCH,
            "/v1/users/pat/preferences",
            Some(json!({"sms": "yes"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "sms");

    // Without the token: 401.
    let response = setup
        .http
        .get(setup.url("/v1/users/pat/preferences"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = setup
        .http
        .get(setup.url("/v1/users/pat/preferences"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Sync without a user source publishes the preferences alone.
    let (status, body) = setup.send(Method::POST, "/v1/users/pat/sync", None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["userSource"], false);
    let identifies = wait_for_identifies(&setup, "pat", 3).await;
    assert_eq!(opt_ins(&identifies[2]), opt_ins(&identifies[1]));

    let metrics = setup.metrics().await;
    assert!(
        metrics.contains("cio_gateway_preferences_sync_pending"),
        "the gauge is exported"
    );
    assert!(
        metrics.contains("# HELP cio_gateway_preferences_sync_pending Preference changes"),
        "with its help text: {metrics}"
    );
    assert_eq!(setup.identifies("pat").len(), 3, "nothing published twice");
    setup.stop().await;
}

#[actix_rt::test]
async fn a_change_while_rabbitmq_is_down_is_stored_and_synced_when_it_returns() {
    let setup = Setup::start("prefs-outage", &[]).await;
    use reqwest::Method;
    let broker = setup.gateway.broker().clone();

    let outage = setup.vhost.outage();
    assert!(
        eventually(Duration::from_secs(20), || !broker.is_connected()).await,
        "the gateway noticed the lost connection"
    );
    let (status, body) = setup
        .send(
            Method::PUT,
            "/v1/users/kim/preferences",
            Some(json!({"email": false, "push": false, "sms": true, "inApp": true})),
        )
        .await;
    assert_eq!(
        status, 200,
        "stored although RabbitMQ is unreachable: {body}"
    );
    assert_eq!(body["syncPending"], true);
    let (_, body) = setup
        .send(Method::GET, "/v1/users/kim/preferences", None)
        .await;
    assert_eq!(body["syncPending"], true);
    assert_eq!(body["sms"], true);
    // While the outage lasts the re-sync task keeps failing (it says so), and nothing arrives.
    let failing = eventually_async(Duration::from_secs(30), || async {
        setup
            .metric("cio_gateway_preferences_resync_failures_total")
            .await
            >= 2.0
    })
    .await;
    assert!(failing, "the re-sync task met the outage");
    assert!(setup.identifies("kim").is_empty());

    drop(outage);
    let identifies = {
        let arrived = eventually(Duration::from_secs(90), || {
            !setup.identifies("kim").is_empty()
        })
        .await;
        assert!(
            arrived,
            "the pending change reached Customer.io after RabbitMQ returned"
        );
        setup.identifies("kim")
    };
    assert_eq!(
        opt_ins(&identifies[0]),
        json!({"email_opt_in": false, "push_opt_in": false, "sms_opt_in": true, "in_app_opt_in": true})
    );
    let synced = eventually_async(Duration::from_secs(10), || async {
        let (_, body) = setup
            .send(Method::GET, "/v1/users/kim/preferences", None)
            .await;
        body["syncPending"] == false
    })
    .await;
    assert!(synced, "the pending mark is cleared once confirmed");
    setup.stop().await;
}

#[actix_rt::test]
async fn sync_reads_the_user_source_and_merges_preferences() {
    let db = TestDb::new("prefs-users");
    let setup_sql = "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT, first_name TEXT, \
           last_name TEXT, created_at TIMESTAMPTZ, plan TEXT, score NUMERIC, active BOOLEAN, \
           nickname TEXT, signup_day DATE); \
         INSERT INTO users VALUES (7, 'ada@example.com', 'Ada', 'Lovelace', \
           '2024-01-01T00:00:00Z', 'pro', 1.5, TRUE, NULL, '2024-01-02');";
    let out = Command::new("psql")
        .args(["-q", &db.url, "-c", setup_sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let query = "SELECT email, first_name, last_name, created_at, plan, score, active, nickname, \
                 signup_day FROM users WHERE id = $1";
    // The preferences live in PostgreSQL too here (the same database).
    let setup = Setup::start(
        "prefs-sync",
        &[
            ("GATEWAY__USER_SOURCE__DATABASE_URL", db.url.clone()),
            ("GATEWAY__USER_SOURCE__QUERY", query.to_string()),
            ("GATEWAY__PREFERENCES__DATABASE_URL", db.url.clone()),
        ],
    )
    .await;
    use reqwest::Method;

    let (status, _) = setup
        .send(
            Method::PATCH,
            "/v1/users/7/preferences",
            Some(json!({"push": false})),
        )
        .await;
    assert_eq!(status, 200);
    wait_for_identifies(&setup, "7", 1).await;

    let (status, body) = setup.send(Method::POST, "/v1/users/7/sync", None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["userSource"], true);
    let identifies = wait_for_identifies(&setup, "7", 2).await;
    let attrs = &identifies[1];
    assert_eq!(attrs["email"], "ada@example.com");
    assert_eq!(attrs["first_name"], "Ada");
    assert_eq!(attrs["last_name"], "Lovelace");
    assert_eq!(
        attrs["created_at"], 1_704_067_200,
        "timestamps become unix seconds"
    );
    assert_eq!(attrs["signup_day"], 1_704_153_600, "dates too");
    assert_eq!(attrs["plan"], "pro");
    assert_eq!(attrs["score"], 1.5, "numerics stay numbers");
    assert_eq!(attrs["active"], true);
    assert!(
        attrs.get("nickname").is_none(),
        "NULL columns are left out: {attrs}"
    );
    assert_eq!(
        opt_ins(attrs),
        json!({"email_opt_in": true, "push_opt_in": false, "sms_opt_in": false, "in_app_opt_in": true})
    );

    let (status, _) = setup.send(Method::POST, "/v1/users/999/sync", None).await;
    assert_eq!(status, 404, "unknown user");
    let (status, _) = setup
        .send(Method::POST, "/v1/users/not-a-number/sync", None)
        .await;
    assert_eq!(status, 404, "an id that cannot match the integer key");
    // A later change of 999 is published after anything the refused sync could have sent,
    // and arrives after it (one partition, in order): once it is there, it is the only one.
    let (status, _) = setup
        .send(
            Method::PUT,
            "/v1/users/999/preferences",
            Some(json!({"email": true, "push": true, "sms": true, "inApp": true})),
        )
        .await;
    assert_eq!(status, 200);
    let identifies = wait_for_identifies(&setup, "999", 1).await;
    assert_eq!(
        identifies.len(),
        1,
        "the unknown user's sync published nothing"
    );
    assert!(identifies[0].get("email").is_none(), "{:?}", identifies[0]);

    // The preferences are in PostgreSQL, not in the data directory.
    let out = Command::new("psql")
        .args([
            "-qAt",
            &db.url,
            "-c",
            "SELECT push FROM user_preferences WHERE user_id = '7'",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "f");
    setup.stop().await;
}
