//! A local stand-in for Customer.io (docs/reference.md §8).
//!
//! It speaks Customer.io's paths (Track v1, Track v2 `/batch` and `/entity`, App API sends),
//! checks Basic and Bearer credentials, validates bodies against the documented shapes and
//! limits, enforces a request budget with 429 and `Retry-After`, injects failures and latency on
//! request, and records every accepted operation in arrival order so a test (or a newcomer, at
//! `GET /sandbox/requests`) can read back what "Customer.io" received, per person.
//!
//! Mount [`Sandbox::configure_api`] at `/` (standalone, `cio-gateway sandbox`) or inside a
//! `/sandbox` scope (embedded in the gateway's own server), and [`Sandbox::configure_control`]
//! at `/` (its routes start with `/sandbox/`).

mod control;
mod faults;
mod pipelines;
mod record;
mod routes;
mod validate;

pub use faults::Faults;
pub use pipelines::PREFIX as PIPELINES_PREFIX;
pub use record::{Record, Stats};
pub use routes::MAX_RAW_BODY_BYTES;
pub use validate::MAX_EVENT_DATA_BYTES;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use parking_lot::Mutex;
use record::{Counters, Ledger};
use std::net::SocketAddr;
use std::sync::Arc;

/// The sandbox's workspace credentials, used by the client when none are configured.
pub const SANDBOX_SITE_ID: &str = "sandbox-site";
pub const SANDBOX_API_KEY: &str = "sandbox-key";
pub const SANDBOX_APP_API_KEY: &str = "sandbox-app-key";
pub const SANDBOX_PIPELINES_API_KEY: &str = "sandbox-pipelines-key";

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub site_id: String,
    pub api_key: String,
    pub app_api_key: String,
    pub pipelines_api_key: String,
    /// Requests per second over all routes; `None` is unlimited.
    pub rps: Option<u32>,
    pub faults: Faults,
    /// API-triggered broadcasts: "limited to 1 request every 10 seconds"; a trigger sooner is a
    /// 429 with `Retry-After`.
    pub broadcast_interval: std::time::Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            site_id: SANDBOX_SITE_ID.into(),
            api_key: SANDBOX_API_KEY.into(),
            app_api_key: SANDBOX_APP_API_KEY.into(),
            pipelines_api_key: SANDBOX_PIPELINES_API_KEY.into(),
            rps: None,
            faults: Faults::default(),
            broadcast_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// The sandbox's state; cheap to clone, every clone sees the same records.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<State>,
}

pub(crate) struct State {
    site_id: String,
    api_key: String,
    app_api_key: String,
    pipelines_api_key: String,
    faults: faults::FaultState,
    budget: faults::Budget,
    ledger: Mutex<Ledger>,
    counters: Counters,
    broadcast_interval: std::time::Duration,
    /// When the last broadcast trigger was accepted, and how many there were.
    broadcasts: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let state = State {
            site_id: config.site_id,
            api_key: config.api_key,
            app_api_key: config.app_api_key,
            pipelines_api_key: config.pipelines_api_key,
            faults: faults::FaultState::default(),
            budget: faults::Budget::default(),
            ledger: Mutex::new(Ledger::default()),
            counters: Counters::default(),
            broadcast_interval: config.broadcast_interval,
            broadcasts: Mutex::new((None, 0)),
        };
        state.faults.set(config.faults);
        state.budget.set(config.rps);
        Self {
            state: Arc::new(state),
        }
    }

    /// Customer.io's paths: `/api/v1/...`, `/api/v2/batch`, `/api/v2/entity`,
    /// `/v1/send/{email,push,sms}`.
    pub fn configure_api(&self, cfg: &mut web::ServiceConfig) {
        routes::configure(cfg, self);
        pipelines::configure(cfg, self);
    }

    /// `GET|DELETE /sandbox/requests[?user=ID]`, `GET|PUT|DELETE /sandbox/faults`,
    /// `GET|PUT /sandbox/budget`, `GET /sandbox/stats`.
    pub fn configure_control(&self, cfg: &mut web::ServiceConfig) {
        control::configure(cfg, self);
    }

    /// Every accepted operation, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        self.state.ledger.lock().records()
    }

    /// The accepted operations about one person, in arrival order.
    pub fn records_for(&self, user: &str) -> Vec<Record> {
        self.state.ledger.lock().records_for(user)
    }

    /// The anonymous events, page and screen views carrying one `anonymous_id`, in arrival order.
    pub fn records_of_anonymous(&self, anonymous_id: &str) -> Vec<Record> {
        self.state.ledger.lock().records_of_anonymous(anonymous_id)
    }

    /// The operations on one object (`<object_type_id>:<object_id>`), in arrival order.
    pub fn records_of_object(&self, object: &str) -> Vec<Record> {
        self.state.ledger.lock().records_of_object(object)
    }

    /// Forgets records, seen event ids and counters; faults and budget stay.
    pub fn reset(&self) {
        self.state.ledger.lock().reset();
        self.state.counters.reset();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.faults.set(faults);
    }

    /// The faults in force (`fail_first` shows what is left).
    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    pub fn set_rps(&self, rps: Option<u32>) {
        self.state.budget.set(rps);
    }

    pub fn rps(&self) -> Option<u32> {
        self.state.budget.rps()
    }

    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }
}

/// A sandbox serving on an ephemeral loopback port, for tests.
pub struct RunningSandbox {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    handle: ServerHandle,
}

impl RunningSandbox {
    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `customerio.track_url` for a client of this sandbox.
    pub fn track_url(&self) -> String {
        format!("{}/api/v1", self.url())
    }

    /// `customerio.app_url` for a client of this sandbox.
    pub fn app_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// `customerio.pipelines_url` for a client of this sandbox.
    pub fn pipelines_url(&self) -> String {
        format!("{}{}", self.url(), pipelines::PREFIX)
    }

    /// Stops accepting and waits for the server to finish.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        // The stop command is sent at once; nobody needs to wait for it here.
        drop(self.handle.stop(false));
    }
}

/// Both route sets at the root, as the standalone sandbox serves them.
fn mount(cfg: &mut web::ServiceConfig, sandbox: &Sandbox) {
    sandbox.configure_control(cfg);
    sandbox.configure_api(cfg);
}

/// Binds `127.0.0.1:0` and serves the sandbox (API at `/`, control under `/sandbox/`) in the
/// background of the current runtime (tokio or actix-rt).
pub async fn spawn(config: SandboxConfig) -> std::io::Result<RunningSandbox> {
    let sandbox = Sandbox::new(config);
    let app_sandbox = sandbox.clone();
    let server = HttpServer::new(move || {
        let sandbox = app_sandbox.clone();
        App::new().configure(move |cfg| mount(cfg, &sandbox))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(("127.0.0.1", 0))?;
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| std::io::Error::other("the sandbox bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(RunningSandbox {
        addr,
        sandbox,
        handle,
    })
}

/// `cio-gateway sandbox --addr ADDR`: serves until Ctrl-C / SIGTERM, after printing where
/// and with which credentials to reach it.
pub async fn serve(addr: SocketAddr, config: SandboxConfig) -> std::io::Result<()> {
    let sandbox = Sandbox::new(config.clone());
    let server = HttpServer::new(move || {
        let sandbox = sandbox.clone();
        App::new().configure(move |cfg| mount(cfg, &sandbox))
    })
    .workers(2)
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    println!("Customer.io sandbox listening on http://{bound}");
    println!(
        "  track_url  http://{bound}/api/v1   (Basic {}:{})",
        config.site_id, config.api_key
    );
    println!(
        "  app_url    http://{bound}/v1       (Bearer {})",
        config.app_api_key
    );
    println!(
        "  pipelines  http://{bound}{}  (Basic {}:)",
        pipelines::PREFIX,
        config.pipelines_api_key
    );
    println!("  received   http://{bound}/sandbox/requests[?user=ID]");
    println!("  faults     http://{bound}/sandbox/faults (GET, PUT, DELETE)");
    println!("point the gateway at it:");
    println!(
        "  GATEWAY__CUSTOMERIO__TRACK_URL=http://{bound}/api/v1 GATEWAY__CUSTOMERIO__APP_URL=http://{bound}/v1"
    );
    server.run().await
}
