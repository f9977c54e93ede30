//! The HTTP edge under hostile clients (issue 24, items 8–10): a refused request's body is not
//! read, slow clients are cut off while others are served, and `http.admin_addr` keeps the
//! admin routes off the public listener.

mod common;

use cio_gateway::app::Gateway;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INGEST: &str = "ingest-secret";
const ADMIN: &str = "admin-secret";
/// Longer than any timeout configured here, shorter than actix's own defaults (5 s): what is
/// answered within it was answered by the gateway's settings.
const PATIENCE: Duration = Duration::from_secs(3);

async fn gateway(data: &tempfile::TempDir, extra: &[(&'static str, String)]) -> Gateway {
    let dir = data.path().display().to_string();
    let mut vars = vec![
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".to_string()),
        ("GATEWAY__APP__DATA_DIR", format!("{dir}/data")),
        ("GATEWAY__WAREHOUSE__PATH", format!("{dir}/warehouse")),
        ("GATEWAY__BROKER__PARTITIONS", "2".into()),
        ("GATEWAY__INGEST__TOKEN", INGEST.into()),
        ("GATEWAY__ADMIN__TOKEN", ADMIN.into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "2".into()),
    ];
    vars.extend(extra.iter().cloned());
    common::start_gateway(&vars).await
}

/// Sends a request head and the first `sent` bytes of a body of `length`.
async fn partial_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    length: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; sent]).await.unwrap();
    stream
}

/// The response head, if one arrives within [`PATIENCE`].
async fn response_head(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Whether the server closes the connection within [`PATIENCE`] (what it sent before).
async fn closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[actix_rt::test]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway(&data, &[]).await;
    // Each body is declared under its route's limit, and only 1 KiB of it is ever sent.
    for (method, path, length) in [
        ("POST", "/v1/events", 5_000_000),
        ("PUT", "/v1/users/u1/preferences", 60_000),
        ("POST", "/v1/users/u1/sync", 60_000),
        ("POST", "/admin/dlq/replay", 200_000),
    ] {
        for auth in [None, Some("wrong")] {
            let mut stream = partial_request(gateway.addr, method, path, auth, length, 1024).await;
            let head = response_head(&mut stream).await;
            let head = head.unwrap_or_else(|| panic!("{method} {path}: no answer before the body"));
            assert!(head.starts_with("HTTP/1.1 401"), "{method} {path}: {head}");
        }
    }
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway(
        &data,
        &[
            ("GATEWAY__HTTP__CLIENT_REQUEST_TIMEOUT_MS", "300".into()),
            ("GATEWAY__HTTP__BODY_TIMEOUT_MS", "500".into()),
        ],
    )
    .await;
    // A head that never ends.
    let mut slow_head = TcpStream::connect(gateway.addr).await.unwrap();
    slow_head
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    // An authenticated body that never ends.
    let mut slow_body =
        partial_request(gateway.addr, "POST", "/v1/events", Some(INGEST), 1000, 10).await;

    let normal = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gateway.addr))
        .bearer_auth(INGEST)
        .json(&json!({"type": "track", "userId": "u1", "payload": {"name": "e"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        normal.status().as_u16(),
        202,
        "served beside the slow clients"
    );

    let head_cut = closed(&mut slow_head).await;
    assert!(head_cut.is_some(), "a slow head is cut off");
    let body_cut = closed(&mut slow_body).await;
    let body_cut = body_cut.expect("a slow body is cut off");
    assert!(!body_cut.starts_with("HTTP/1.1 2"), "{body_cut}");
    gateway.shutdown().await;
}

#[actix_rt::test]
async fn admin_addr_takes_the_admin_routes_off_the_public_listener() {
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway(
        &data,
        &[("GATEWAY__HTTP__ADMIN_ADDR", "127.0.0.1:0".into())],
    )
    .await;
    let admin = gateway.admin_addr.expect("an admin listener");
    assert_ne!(admin, gateway.addr);
    let http = reqwest::Client::new();
    let status = |addr: SocketAddr, path: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://{addr}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    for path in ["/metrics", "/openapi.json", "/admin/dlq"] {
        assert_eq!(status(admin, path).await, 200, "{path} on http.admin_addr");
        assert_eq!(status(gateway.addr, path).await, 404, "{path} on http.addr");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(gateway.addr, path).await, 200, "{path} on http.addr");
    }
    let ingested = http
        .post(format!("http://{}/v1/events", gateway.addr))
        .bearer_auth(INGEST)
        .json(&json!({"type": "track", "userId": "u1", "payload": {"name": "e"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ingested.status().as_u16(), 202);
    gateway.shutdown().await;
}
