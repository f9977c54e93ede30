//! Local stand-ins of Google for the BigQuery credential tests: a token issuer (the metadata
//! server's `.../service-accounts/default/token` and an OAuth `token_uri`) and `insertAll`,
//! which takes only live tokens it issued and answers 401 to the rest. One server serves
//! both, so `GCE_METADATA_HOST` and the BigQuery base URL name the same address.
#![allow(dead_code)]

use crate::common::{self, TestVhost};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use cio_gateway::app::Gateway;
use cio_gateway::domain::webhook::sign;
use cio_gateway::sandbox::RunningSandbox;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(60);
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
pub const INSERT_ALL_PATH: &str =
    "/projects/proj/datasets/reporting/tables/delivery_events/insertAll";

/// One token the stand-in issued.
struct Issued {
    token: String,
    at: Instant,
    lifetime: Duration,
    revoked: bool,
}

/// What the stand-in issued and stored, and how it behaves now.
pub struct Google {
    issued: Mutex<Vec<Issued>>,
    /// `expires_in` of the next tokens; the stand-in also refuses them after that long.
    pub expires_in: AtomicU64,
    /// Token requests answer 500 while set.
    pub failing: AtomicBool,
    /// Token requests seen (answered or not), and those without `Metadata-Flavor: Google`.
    pub token_requests: AtomicUsize,
    pub without_flavor: AtomicUsize,
    /// The `scopes` query of metadata requests, the form of `token_uri` requests.
    pub scopes: Mutex<Vec<String>>,
    pub forms: Mutex<Vec<BTreeMap<String, String>>>,
    /// insertAll answers 401.
    pub unauthorized: AtomicUsize,
    /// Stored rows: insertId -> times stored (BigQuery would de-duplicate; counting shows
    /// whether it had to).
    pub rows: Mutex<BTreeMap<String, usize>>,
}

impl Default for Google {
    fn default() -> Self {
        Self {
            issued: Mutex::default(),
            expires_in: AtomicU64::new(3600),
            failing: AtomicBool::new(false),
            token_requests: AtomicUsize::new(0),
            without_flavor: AtomicUsize::new(0),
            scopes: Mutex::default(),
            forms: Mutex::default(),
            unauthorized: AtomicUsize::new(0),
            rows: Mutex::default(),
        }
    }
}

impl Google {
    pub fn issued(&self) -> usize {
        self.issued.lock().len()
    }

    /// Every token issued so far is refused from now on (as if it had expired early).
    pub fn revoke_all(&self) {
        for issued in self.issued.lock().iter_mut() {
            issued.revoked = true;
        }
    }

    pub fn count(&self, insert_id: &str) -> usize {
        self.rows.lock().get(insert_id).copied().unwrap_or(0)
    }

    fn issue(&self) -> HttpResponse {
        if self.failing.load(Ordering::SeqCst) {
            return HttpResponse::InternalServerError().body("token service unavailable");
        }
        let lifetime = self.expires_in.load(Ordering::SeqCst);
        let mut issued = self.issued.lock();
        let token = format!("ya29.stand-in-{}", issued.len() + 1);
        issued.push(Issued {
            token: token.clone(),
            at: Instant::now(),
            lifetime: Duration::from_secs(lifetime),
            revoked: false,
        });
        HttpResponse::Ok().json(json!({"access_token": token, "expires_in": lifetime,
            "token_type": "Bearer"}))
    }

    fn live(&self, token: &str) -> bool {
        self.issued
            .lock()
            .iter()
            .any(|i| i.token == token && !i.revoked && i.at.elapsed() < i.lifetime)
    }
}

async fn metadata_token(req: HttpRequest, google: web::Data<Google>) -> HttpResponse {
    google.token_requests.fetch_add(1, Ordering::SeqCst);
    let flavor = req
        .headers()
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok());
    if flavor != Some("Google") {
        google.without_flavor.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Forbidden().body("Missing Metadata-Flavor:Google header.");
    }
    let query = web::Query::<BTreeMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    google
        .scopes
        .lock()
        .push(query.get("scopes").cloned().unwrap_or_default());
    google.issue()
}

async fn oauth_token(
    form: web::Form<BTreeMap<String, String>>,
    google: web::Data<Google>,
) -> HttpResponse {
    google.token_requests.fetch_add(1, Ordering::SeqCst);
    google.forms.lock().push(form.into_inner());
    google.issue()
}

async fn insert_all(
    req: HttpRequest,
    body: web::Json<Value>,
    google: web::Data<Google>,
) -> HttpResponse {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !google.live(token) {
        google.unauthorized.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Unauthorized().json(json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED"}}));
    }
    let mut rows = google.rows.lock();
    for row in body["rows"].as_array().into_iter().flatten() {
        let id = row["insertId"].as_str().unwrap_or_default().to_string();
        *rows.entry(id).or_default() += 1;
    }
    HttpResponse::Ok().json(json!({"kind": "bigquery#tableDataInsertAllResponse"}))
}

/// Binds the stand-in on 127.0.0.1:0 (not yet serving: see [`serve`]); returns its address.
pub fn bind(google: web::Data<Google>) -> (actix_web::dev::Server, String) {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(google.clone())
            .route(METADATA_TOKEN_PATH, web::get().to(metadata_token))
            .route("/token", web::post().to(oauth_token))
            .route(INSERT_ALL_PATH, web::post().to(insert_all))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0].to_string();
    (server.run(), addr)
}

/// A gateway whose warehouse is the BigQuery stand-in at `addr`, with no static token.
pub async fn start_gateway(
    vhost: &TestVhost,
    sandbox: &RunningSandbox,
    dir: &Path,
    addr: &str,
) -> Gateway {
    let warehouse = dir.join("warehouse").display().to_string();
    let data = dir.join("data").display().to_string();
    let base = format!("http://{addr}");
    let (track, app) = (sandbox.track_url(), sandbox.app_url());
    let vars: [(&str, &str); 14] = [
        ("GATEWAY__BROKER__URL", vhost.url.as_str()),
        ("GATEWAY__BROKER__PARTITIONS", "2"),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", &track),
        ("GATEWAY__CUSTOMERIO__APP_URL", &app),
        ("GATEWAY__WEBHOOKS__SIGNING_SECRETS", "s1"),
        ("GATEWAY__WAREHOUSE__PATH", &warehouse),
        ("GATEWAY__WAREHOUSE__FLUSH_MS", "50"),
        ("GATEWAY__WAREHOUSE__SINK", "bigquery"),
        ("GATEWAY__WAREHOUSE__BIGQUERY__BASE_URL", &base),
        ("GATEWAY__WAREHOUSE__BIGQUERY__PROJECT", "proj"),
        ("GATEWAY__WAREHOUSE__BIGQUERY__DATASET", "reporting"),
        ("GATEWAY__APP__DATA_DIR", &data),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "3"),
    ];
    Gateway::start(common::settings(&vars))
        .await
        .expect("gateway starts")
}

/// Posts one signed reporting event; returns its `event_id` (the row's `insertId`).
pub async fn post_event(gateway: &Gateway) -> String {
    let id = ulid::Ulid::new().to_string();
    let body = serde_json::to_vec(&json!({
        "event_id": id, "object_type": "email", "metric": "delivered",
        "timestamp": 1_700_000_000, "data": {"customer_id": "u-auth", "campaign_id": 1}
    }))
    .unwrap();
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = sign("s1", &ts, &body);
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/customerio", gateway.addr))
        .header("content-type", "application/json")
        .header("X-CIO-Timestamp", ts)
        .header("X-CIO-Signature", signature)
        .body(body)
        .send()
        .await
        .expect("request completes");
    assert_eq!(response.status(), 200);
    id
}

/// Waits until every row of `ids` is stored; then checks each is stored exactly once.
pub async fn assert_stored_once(google: &Google, ids: &[String]) {
    let stored = common::eventually(WAIT, || ids.iter().all(|id| google.count(id) >= 1)).await;
    let counts: Vec<usize> = ids.iter().map(|id| google.count(id)).collect();
    assert!(stored, "rows stored: {counts:?}");
    assert!(counts.iter().all(|&n| n == 1), "each row once: {counts:?}");
}
