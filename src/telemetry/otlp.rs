//! Optional OpenTelemetry export: the gateway's spans (one per HTTP request, per delivery
//! attempt, per settle) sent over OTLP/HTTP (protobuf) to a collector. Off unless an endpoint
//! is configured the standard way, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL; `/v1/traces` is appended).
//! Spans are batched on a thread of their own, so a slow or absent collector costs dropped
//! spans, never delivery.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub const SERVICE_NAME: &str = "cio-gateway";

/// The traces endpoint the environment names, if any.
pub fn endpoint_from_env() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

/// A provider exporting to `endpoint`, and the tracer the subscriber's layer uses. Must be
/// called outside an async runtime (the exporter's HTTP client is a blocking one).
pub fn provider(endpoint: &str) -> anyhow::Result<(SdkTracerProvider, SdkTracer)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    Ok((provider, tracer))
}
