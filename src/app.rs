//! Starting and stopping the whole gateway: broker, sandbox (local mode), HTTP server, actors.

use crate::actors::{Pipeline, Reporting, start_reporting};
use crate::broker::router::Router;
use crate::broker::topology::DLQ_QUEUE;
use crate::broker::{self, BrokerError, QueueBacklog, SharedBroker, Topology};
use crate::config::Settings;
use crate::customerio::CustomerIo;
use crate::http::{self, AppState};
use crate::preferences::{self, PreferenceService, ResyncTask};
use crate::retry::Backoff;
use crate::sandbox::{Sandbox, SandboxConfig};
use actix_web::dev::{ServerHandle, Service};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The settings every listener shares: slow clients are cut off (`http.*`), signals are ours.
/// A macro: `HttpServer`'s type parameters carry bounds a function would have to repeat.
macro_rules! tuned {
    ($server:expr, $settings:expr) => {{
        let settings: &Settings = $settings;
        let http = &settings.http;
        $server
            .disable_signals()
            .shutdown_timeout(settings.shutdown.drain_secs)
            .client_request_timeout(Duration::from_millis(http.client_request_timeout_ms))
            .client_disconnect_timeout(Duration::from_millis(http.client_disconnect_timeout_ms))
            .max_connections(http.max_connections)
    }};
}

pub struct Gateway {
    pub addr: SocketAddr,
    /// Where `/admin/*`, `/metrics` and `/openapi.json` are served when `http.admin_addr` is
    /// set (else on `addr`).
    pub admin_addr: Option<SocketAddr>,
    pub state: AppState,
    sandbox: Option<Sandbox>,
    pipeline: Pipeline,
    reporting: Reporting,
    preferences: Arc<PreferenceService>,
    resync: ResyncTask,
    /// `broker.partitioner = builtin`: forwards the intake queue to the partitions.
    router: Option<Router>,
    server: ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    admin: Option<(ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>)>,
    drain: Duration,
}

impl Gateway {
    /// Starts everything; must run inside an actix `System` (the actors live there).
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let topology = Topology::for_settings(&settings);
        let broker = connect_with_retry(
            settings.broker.url.expose(),
            topology,
            &broker::ConnectOptions::for_settings(&settings),
        )
        .await?;
        let state = AppState::new(settings.clone(), broker.clone());
        let stores = preferences::open_stores(&settings)
            .await
            .context("opening the preferences store (preferences.database_url, app.data_dir)")?;
        let preferences = PreferenceService::with_store(
            stores.preferences.clone(),
            &settings,
            state.publisher.clone(),
        )?;
        let state = state.with_preferences(preferences.clone());

        // In local mode "Customer.io" is the sandbox, served by this same HTTP server.
        // Configuration allows it in development only (its control routes have no auth).
        let sandbox = settings
            .runs_embedded_sandbox()
            .then(|| Sandbox::new(SandboxConfig::default()));

        let app_state = state.clone();
        let app_sandbox = sandbox.clone();
        let admin_here = settings.http.admin_addr.is_none();
        let server = HttpServer::new(move || {
            let sandbox = app_sandbox.clone();
            App::new()
                .wrap(from_fn(http::slow_clients::body_deadline))
                .wrap_fn(|request, service| {
                    // One span per request; ingestion records the correlationIds it assigned.
                    let span = tracing::info_span!(
                        "http",
                        method = %request.method(),
                        path = %request.path(),
                        correlation_ids = tracing::field::Empty,
                    );
                    service.call(request).instrument(span)
                })
                .app_data(web::Data::new(app_state.clone()))
                .configure(http::configure_public)
                .configure(|cfg| {
                    if admin_here {
                        http::configure_admin(cfg);
                    }
                    if let Some(sandbox) = sandbox {
                        sandbox.configure_control(cfg);
                        cfg.service(web::scope("/sandbox").configure(|c| sandbox.configure_api(c)));
                    }
                })
        });
        let server = tuned!(server, &settings)
            .workers(2)
            .bind(settings.http.addr)
            .with_context(|| format!("binding http.addr {}", settings.http.addr))?;
        let admin = match settings.http.admin_addr {
            Some(admin_addr) => {
                let admin_state = state.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .wrap(from_fn(http::slow_clients::body_deadline))
                        .app_data(web::Data::new(admin_state.clone()))
                        .configure(http::configure_admin)
                });
                let server = tuned!(server, &settings)
                    .workers(1)
                    .bind(admin_addr)
                    .with_context(|| format!("binding http.admin_addr {admin_addr}"))?;
                Some(server)
            }
            None => None,
        };
        let addr = *server.addrs().first().context("server bound no address")?;

        let mut customerio = settings.customerio.clone();
        if sandbox.is_some() {
            customerio.track_url = Some(format!("http://{addr}/sandbox/api/v1"));
            customerio.app_url = Some(format!("http://{addr}/sandbox/v1"));
            customerio.pipelines_url = Some(format!(
                "http://{addr}/sandbox{}",
                crate::sandbox::PIPELINES_PREFIX
            ));
        }
        let client = CustomerIo::new(&customerio).context("customerio settings")?;
        let reporting = start_reporting(
            &settings,
            broker.clone(),
            state.publisher.clone(),
            stores.clone(),
        )?;

        let admin_addr = match &admin {
            Some(server) => Some(
                *server
                    .addrs()
                    .first()
                    .context("admin server bound no address")?,
            ),
            None => None,
        };
        let admin = admin.map(|server| {
            let server = server.run();
            (server.handle(), tokio::spawn(server))
        });
        let server = server.run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        let router = broker
            .forwards_intake()
            .then(|| Router::spawn(broker.clone(), settings.broker.partitions));
        let pipeline = Pipeline::start(&settings, broker, client.clone());
        state.status.set(pipeline.partitions(), client);
        let resync = preferences.spawn_resync();
        let (pipeline_alive, reporting_alive) = (pipeline.liveness(), reporting.liveness());
        state
            .actors
            .watch(move || pipeline_alive() && reporting_alive());
        state.actors.watch_health(pipeline.health());
        Ok(Self {
            addr,
            admin_addr,
            state,
            sandbox,
            pipeline,
            reporting,
            preferences,
            resync,
            router,
            server: handle,
            server_task,
            admin,
            drain: Duration::from_secs(settings.shutdown.drain_secs),
        })
    }

    /// The embedded sandbox, in local mode.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The delivery pipeline's Track sender, for fault-injection tests.
    #[doc(hidden)]
    pub fn track_sender(&self) -> &crate::actors::TrackSender {
        self.pipeline.track_sender()
    }

    pub fn broker(&self) -> &SharedBroker {
        &self.state.broker
    }

    /// Graceful stop, within `shutdown.drain_secs`: the edge stops taking work, in-flight
    /// deliveries settle, the HTTP server finishes its requests, the broker connection closes.
    /// In local mode the in-process queues die with the process, so what they hold is
    /// delivered first (the sandbox, served by this same server, keeps answering meanwhile);
    /// the report and the log say exactly what, if anything, was left.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + self.drain;
        self.state.actors.clear();
        self.state.intake.close();
        self.resync.stop().await;
        if let Some(router) = self.router {
            router.stop().await;
        }
        let broker = self.state.broker.clone();
        if broker.volatile_backlog().is_some() {
            drain_volatile_queues(&broker, deadline).await;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // One deadline for all: Kubernetes' grace period is sized to `shutdown.drain_secs`.
        let (pipeline, reporting, ()) = futures::future::join3(
            self.pipeline.drain(remaining),
            self.reporting.drain(remaining),
            self.server.stop(true),
        )
        .await;
        let _ = self.server_task.await;
        if let Some((admin, task)) = self.admin {
            admin.stop(true).await;
            let _ = task.await;
        }
        let report = ShutdownReport {
            settled: pipeline && reporting,
            lost: broker
                .volatile_backlog()
                .map(|queues| queues.into_iter().filter(|q| q.total() > 0).collect())
                .unwrap_or_default(),
        };
        report.log(broker.volatile_backlog().is_some());
        self.preferences.close().await;
        broker.close().await;
        report
    }
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Every actor settled what it held before the deadline.
    pub settled: bool,
    /// Local mode only: what the in-process queues still held at exit, lost with the process
    /// (dead letters in `customerio.dlq` included). RabbitMQ keeps its queues: always empty.
    pub lost: Vec<QueueBacklog>,
}

impl ShutdownReport {
    fn log(&self, volatile: bool) {
        if !volatile {
            if !self.settled {
                tracing::warn!(
                    "drain deadline passed; unsettled messages stay in RabbitMQ and are redelivered"
                );
            }
            return;
        }
        if self.lost.is_empty() {
            tracing::info!("local mode: everything queued was delivered before exit");
            return;
        }
        let total: u64 = self.lost.iter().map(QueueBacklog::total).sum();
        let queues: Vec<String> = self
            .lost
            .iter()
            .map(|q| format!("{}: {} ready, {} unacked", q.queue, q.ready, q.unacked))
            .collect();
        tracing::warn!(
            lost = total,
            queues = %queues.join("; "),
            "local mode: exiting with messages the in-process broker still held; they are lost"
        );
    }
}

/// Waits until the in-process queues hold nothing but dead letters, or `deadline`.
async fn drain_volatile_queues(broker: &SharedBroker, deadline: tokio::time::Instant) {
    let pending = || -> u64 {
        broker
            .volatile_backlog()
            .unwrap_or_default()
            .iter()
            .filter(|q| q.queue != DLQ_QUEUE)
            .map(QueueBacklog::total)
            .sum()
    };
    let first = pending();
    if first > 0 {
        tracing::info!(
            queued = first,
            "local mode: delivering what is queued before exit"
        );
    }
    while pending() > 0 && tokio::time::Instant::now() < deadline {
        // The in-process broker has no "empty" event across queues; a short poll is cheap.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to the broker, waiting up to 30 s for it to come up; a missing plugin fails at once.
async fn connect_with_retry(
    url: &str,
    topology: Topology,
    options: &broker::ConnectOptions,
) -> anyhow::Result<SharedBroker> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failures = Backoff::exact(Duration::from_millis(200), Duration::from_secs(3)).streak();
    loop {
        match broker::connect_with(url, topology.clone(), options).await {
            Ok(broker) => return Ok(broker),
            Err(e @ BrokerError::PluginMissing) => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context("connecting to the broker (broker.url)"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker not reachable yet");
                tokio::time::sleep(failures.failed()).await;
            }
        }
    }
}

/// `cio-gateway serve`: run until SIGTERM or Ctrl-C, then shut down gracefully.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let local = settings.is_local_mode();
    let gateway = Gateway::start(settings).await?;
    print_banner(&gateway, local);
    wait_for_signal().await;
    tracing::info!("shutting down");
    let report = gateway.shutdown().await;
    if !report.lost.is_empty() {
        let lost: u64 = report.lost.iter().map(QueueBacklog::total).sum();
        eprintln!(
            "cio-gateway: {lost} queued message(s) were not delivered before exit (see the log)"
        );
    }
    Ok(())
}

fn print_banner(gateway: &Gateway, local: bool) {
    let s = &gateway.state.settings;
    let addr = gateway.addr;
    println!("cio-gateway listening on http://{addr}");
    println!(
        "  broker      {}",
        if local {
            "in-process (memory://)"
        } else {
            "RabbitMQ"
        }
    );
    println!(
        "  customer.io {}",
        if gateway.sandbox().is_some() {
            format!("built-in sandbox (inspect: http://{addr}/sandbox/requests)")
        } else {
            format!("{:?}", s.customerio.region).to_lowercase()
        }
    );
    let sink = format!("{:?}", s.warehouse.sink).to_lowercase();
    match s.warehouse.sink {
        crate::config::SinkKind::File => println!(
            "  warehouse   file sink under {}",
            s.warehouse.path.display()
        ),
        _ => println!("  warehouse   {sink}"),
    }
    let postgres = s
        .preferences
        .database_url
        .as_ref()
        .is_some_and(|u| u.expose().starts_with("postgres"));
    println!(
        "  preferences {}",
        if postgres {
            "PostgreSQL".to_string()
        } else {
            format!("SQLite under {}", s.app.data_dir.display())
        }
    );
    if local {
        println!("try:");
        println!(
            "  curl -s -XPOST http://{addr}/v1/events -H 'content-type: application/json' \\\n    -d '{{\"type\":\"track\",\"userId\":\"42\",\"payload\":{{\"name\":\"signup\"}}}}'"
        );
        println!("  curl -s http://{addr}/sandbox/requests?user=42");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
