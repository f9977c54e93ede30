//! Starting and stopping the whole gateway: broker, sandbox (local mode), HTTP server, actors.

use crate::actors::{Pipeline, Reporting, start_reporting};
use crate::broker::{self, BrokerError, SharedBroker, Topology};
use crate::config::{Region, Settings};
use crate::customerio::CustomerIo;
use crate::http::{self, AppState};
use crate::preferences::{self, PreferenceService, ResyncTask};
use crate::sandbox::{Sandbox, SandboxConfig};
use actix_web::dev::{ServerHandle, Service};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub struct Gateway {
    pub addr: SocketAddr,
    pub state: AppState,
    sandbox: Option<Sandbox>,
    pipeline: Pipeline,
    reporting: Reporting,
    preferences: Arc<PreferenceService>,
    resync: ResyncTask,
    server: ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    drain: Duration,
}

impl Gateway {
    /// Starts everything; must run inside an actix `System` (the actors live there).
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let topology = Topology::for_settings(&settings);
        let broker = connect_with_retry(settings.broker.url.expose(), topology).await?;
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
        let sandbox = (settings.customerio.region == Region::Sandbox
            && settings.customerio.track_url.is_none())
        .then(|| Sandbox::new(SandboxConfig::default()));

        let app_state = state.clone();
        let app_sandbox = sandbox.clone();
        let server = HttpServer::new(move || {
            let sandbox = app_sandbox.clone();
            App::new()
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
                .configure(http::configure)
                .configure(|cfg| {
                    if let Some(sandbox) = sandbox {
                        sandbox.configure_control(cfg);
                        cfg.service(web::scope("/sandbox").configure(|c| sandbox.configure_api(c)));
                    }
                })
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(settings.shutdown.drain_secs)
        .bind(settings.http.addr)
        .with_context(|| format!("binding http.addr {}", settings.http.addr))?;
        let addr = *server.addrs().first().context("server bound no address")?;

        let mut customerio = settings.customerio.clone();
        if sandbox.is_some() {
            customerio.track_url = Some(format!("http://{addr}/sandbox/api/v1"));
            customerio.app_url = Some(format!("http://{addr}/sandbox/v1"));
        }
        let client = CustomerIo::new(&customerio).context("customerio settings")?;
        let reporting = start_reporting(
            &settings,
            broker.clone(),
            state.publisher.clone(),
            stores.actions,
        )?;

        let server = server.run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        let pipeline = Pipeline::start(&settings, broker, client);
        let resync = preferences.spawn_resync();
        let (pipeline_alive, reporting_alive) = (pipeline.liveness(), reporting.liveness());
        state
            .actors
            .watch(move || pipeline_alive() && reporting_alive());
        Ok(Self {
            addr,
            state,
            sandbox,
            pipeline,
            reporting,
            preferences,
            resync,
            server: handle,
            server_task,
            drain: Duration::from_secs(settings.shutdown.drain_secs),
        })
    }

    /// The embedded sandbox, in local mode.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    pub fn broker(&self) -> &SharedBroker {
        &self.state.broker
    }

    /// Graceful stop: no new work, in-flight deliveries settle (up to the drain deadline),
    /// the HTTP server finishes its requests, then the broker connection closes.
    pub async fn shutdown(self) {
        self.state.actors.clear();
        // One deadline for all: Kubernetes' grace period is sized to `shutdown.drain_secs`.
        let (pipeline, reporting, ()) = futures::future::join3(
            self.pipeline.drain(self.drain),
            self.reporting.drain(self.drain),
            self.server.stop(true),
        )
        .await;
        if !(pipeline && reporting) {
            tracing::warn!("drain deadline passed; unsettled messages will be redelivered");
        }
        let _ = self.server_task.await;
        self.resync.stop().await;
        self.preferences.close().await;
        self.state.broker.close().await;
    }
}

/// Connects to the broker, waiting up to 30 s for it to come up; a missing plugin fails at once.
async fn connect_with_retry(url: &str, topology: Topology) -> anyhow::Result<SharedBroker> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(200);
    loop {
        match broker::connect(url, topology.clone()).await {
            Ok(broker) => return Ok(broker),
            Err(e @ BrokerError::PluginMissing) => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context("connecting to the broker (broker.url)"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
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
    gateway.shutdown().await;
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
