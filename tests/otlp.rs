//! Issue 13.1: spans reach an OpenTelemetry collector over OTLP/HTTP when an endpoint is
//! configured. A local stand-in collector records what it is sent; a local-mode gateway
//! delivers one event; its request and delivery spans, named by the event's correlationId,
//! must arrive under the service name `cio-gateway`. One test: the subscriber is per process.

mod common;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use cio_gateway::app::Gateway;
use cio_gateway::telemetry;
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
    // Before any runtime exists: the exporter's client is a blocking one.
    let tracing = telemetry::init_logging("info", Some(&endpoint));

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
        let delivered = common::eventually(Duration::from_secs(20), || {
            !sandbox.records_for("otlp-user").is_empty()
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
    assert!(
        contains(&everything, &correlation_id),
        "spans carry the event's correlationId"
    );
    assert!(contains(&everything, "message"), "the delivery span");
    assert!(contains(&everything, "/v1/events"), "the request span");
}
