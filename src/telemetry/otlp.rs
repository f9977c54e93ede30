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

/// The process's resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as the SDK reads
/// them, with `service.name` = cio-gateway where neither names one.
fn resource() -> Resource {
    let named = |var: &str, test: &dyn Fn(&str) -> bool| std::env::var(var).is_ok_and(|v| test(&v));
    let has_name = named("OTEL_SERVICE_NAME", &|v| !v.trim().is_empty())
        || named("OTEL_RESOURCE_ATTRIBUTES", &|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if has_name {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}

/// The trace context a producer put in a message's headers (W3C `traceparent` and
/// `tracestate`), to continue its trace.
pub fn producer_context(headers: &crate::broker::Headers) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::TextMapPropagator as _;
    struct Headers<'h>(&'h crate::broker::Headers);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }
    headers.get("traceparent")?;
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    Some(propagator.extract(&Headers(headers)))
}

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
        .with_resource(resource())
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    Ok((provider, tracer))
}
