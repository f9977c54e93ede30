//! Logs, traces and metrics: JSON logs when not on a terminal, pretty ones when on one, level
//! from `RUST_LOG`; spans exported over OTLP when configured ([`otlp`]); one process-wide Prometheus recorder rendered at `GET /metrics`, with the help
//! text of every metric in [`metric`].

pub mod events;
pub mod metric;
pub mod otlp;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the tracing subscriber at `RUST_LOG`, else `default_level`, exporting spans over
/// OTLP too when `otlp_endpoint` is given ([`otlp::endpoint_from_env`]); later calls are
/// no-ops (tests start many gateways). Call it before the async runtime starts.
pub fn init_logging(default_level: &str, otlp_endpoint: Option<&str>) -> Tracing {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::io::stderr().is_terminal() {
        fmt.pretty().boxed()
    } else {
        fmt.json().flatten_event(true).boxed()
    };
    let (provider, export_error) = match otlp_endpoint.map(otlp::provider) {
        Some(Ok((provider, tracer))) => (Some((provider, tracer)), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let otel = provider
        .as_ref()
        .map(|(_, tracer)| tracing_opentelemetry::layer().with_tracer(tracer.clone()));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = export_error {
        tracing::error!(error = %e, "OTLP export not started; spans stay local");
    }
    if installed && let Some(endpoint) = otlp_endpoint.filter(|_| provider.is_some()) {
        tracing::info!(endpoint, "exporting spans over OTLP");
    }
    Tracing {
        provider: provider.filter(|_| installed).map(|(p, _)| p),
    }
}

/// The OTLP exporter, when one runs: [`Tracing::shutdown`] sends what is still batched.
#[must_use = "call shutdown() at exit, or the last spans are lost"]
pub struct Tracing {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Tracing {
    /// Exports every span ended so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            eprintln!("OTLP flush failed: {e}");
        }
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("OTLP shutdown failed: {e}");
        }
    }
}

/// The process-wide Prometheus recorder.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            metric::describe();
            events::build_info(env!("CARGO_PKG_VERSION"), env!("CIO_GATEWAY_REVISION"));
            handle
        })
        .clone()
}
