//! Issue 13.1: spans reach an OpenTelemetry collector over OTLP/HTTP when an endpoint is
//! configured. A local stand-in collector records what it is sent; a local-mode gateway
//! delivers one event; its request and delivery spans, named by the event's correlationId,
//! must arrive under the service name `cio-gateway`. One test: the subscriber is per process.
//!
//! Issue 23.5, on the decoded export: the service name and resource attributes come from
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`; the message spans carry OpenTelemetry's
//! messaging attributes and continue the producer's `traceparent` from the AMQP headers; every
//! Customer.io request has a client span named by its API.

mod common;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use cio_gateway::app::Gateway;
use cio_gateway::broker::Publish;
use cio_gateway::broker::topology::TRACK_EXCHANGE;
use cio_gateway::telemetry;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn collect(
    req: HttpRequest,
    body: web::Bytes,
    received: web::Data<Received>,
) -> HttpResponse {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    received.lock().push((content_type, body.to_vec()));
    HttpResponse::Ok().finish()
}

/// Serves the stand-in collector on its own thread and runtime, so the exporter's blocking
/// client can reach it whatever the test thread is doing.
fn spawn_collector(listener: std::net::TcpListener, received: Received) {
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let data = web::Data::new(received);
            HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/v1/traces", web::post().to(collect))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .expect("collector listens")
            .run()
            .await
        })
    });
}

/// Every span exported, with its resource's attributes.
fn decode(received: &[(String, Vec<u8>)]) -> (Vec<(String, String)>, Vec<Span>) {
    use prost::Message as _;
    let (mut resource, mut spans) = (Vec::new(), Vec::new());
    for (_, body) in received {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource_spans in request.resource_spans {
            if let Some(r) = resource_spans.resource {
                resource.extend(r.attributes.iter().map(|kv| (kv.key.clone(), text(kv))));
            }
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    (resource, spans)
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(text)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn delivery_spans_are_exported_over_otlp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let received = Received::default();
    spawn_collector(listener, received.clone());
    // SAFETY: before any other thread of this test binary reads the environment (its one
    // test, and the runtime is not started yet).
    unsafe {
        std::env::set_var("OTEL_SERVICE_NAME", "cio-gateway-under-test");
        std::env::set_var("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci");
    }
    // Before any runtime exists: the exporter's client is a blocking one.
    let tracing = telemetry::init_logging("info", Some(&endpoint));
    // A producer's span: the delivery of its message must continue this trace.
    let producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{producer_trace}-00f067aa0ba902b7-01");

    let correlation_id = ulid::Ulid::new().to_string();
    let dir = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async {
        let data = dir.path().display().to_string();
        let warehouse = dir.path().join("warehouse").display().to_string();
        let gateway = Gateway::start(common::settings(&[
            ("GATEWAY__BROKER__URL", "memory://"),
            ("GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
            ("GATEWAY__APP__DATA_DIR", &data),
            ("GATEWAY__WAREHOUSE__PATH", &warehouse),
        ]))
        .await
        .expect("gateway starts");
        let sandbox = gateway.sandbox().expect("local mode sandbox").clone();
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/events", gateway.addr))
            .json(&json!({"type": "track", "userId": "otlp-user",
                "correlationId": correlation_id, "payload": {"name": "traced"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let traced = json!({"type": "track", "userId": "otlp-producer",
            "correlationId": ulid::Ulid::new().to_string(), "payload": {"name": "traced"}});
        gateway
            .broker()
            .publish(
                Publish::new(
                    TRACK_EXCHANGE,
                    "otlp-producer",
                    serde_json::to_vec(&traced).unwrap(),
                )
                .header("traceparent", traceparent.clone()),
            )
            .await
            .unwrap();
        let delivered = common::eventually(Duration::from_secs(20), || {
            !sandbox.records_for("otlp-user").is_empty()
                && !sandbox.records_for("otlp-producer").is_empty()
        })
        .await;
        assert!(delivered, "the event reached the sandbox");
        gateway.shutdown().await;
    });

    tracing.flush();
    let received = received.lock();
    assert!(!received.is_empty(), "the collector received spans");
    assert!(
        received
            .iter()
            .all(|(content_type, _)| content_type == "application/x-protobuf"),
        "OTLP/HTTP protobuf"
    );
    let everything: Vec<u8> = received.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(contains(&everything, "cio-gateway"), "the service name");

    let (resource, spans) = decode(&received);
    assert!(
        resource.contains(&("service.name".into(), "cio-gateway-under-test".into())),
        "OTEL_SERVICE_NAME: {resource:?}"
    );
    assert!(
        resource.contains(&("deployment.environment.name".into(), "ci".into())),
        "OTEL_RESOURCE_ATTRIBUTES: {resource:?}"
    );
    let consumer: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer as i32)
        .collect();
    assert!(
        !consumer.is_empty(),
        "consumer spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for span in &consumer {
        assert!(
            span.name.starts_with("process customerio.partition."),
            "{}",
            span.name
        );
        assert_eq!(
            attribute(span, "messaging.system").as_deref(),
            Some("rabbitmq")
        );
        assert_eq!(
            attribute(span, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(span, "messaging.destination.name").as_deref(),
            Some(TRACK_EXCHANGE)
        );
        assert!(attribute(span, "messaging.rabbitmq.destination.routing_key").is_some());
    }
    let continued: Vec<&&Span> = consumer
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == producer_trace)
        .collect();
    assert!(
        !continued.is_empty(),
        "a message span continues the producer's trace"
    );
    assert!(
        continued
            .iter()
            .all(|s| hex::encode(&s.parent_span_id) == "00f067aa0ba902b7"),
        "its parent is the producer's span"
    );
    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert!(
        clients.iter().any(|s| s.name == "POST customerio.track_v2"),
        "a client span per Customer.io request, named by its API: {:?}",
        clients.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(
        clients
            .iter()
            .all(|s| attribute(s, "http.response.status_code").as_deref() == Some("200"))
    );
    assert!(
        contains(&everything, &correlation_id),
        "spans carry the event's correlationId"
    );
    assert!(contains(&everything, "message"), "the delivery span");
    assert!(contains(&everything, "/v1/events"), "the request span");
}
