//! The gauges behind the backlog panel and alert, the build info the "no gateway scraped"
//! alert looks for (issue 23, item 4), and `/admin/status` / `cio-gateway status` of the same
//! held partition (item 1). Its own test binary: the metrics recorder is process-wide.

mod common;

use cio_gateway::app::Gateway;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "ingest-secret";
const ADMIN: &str = "admin-secret";
const PARTITION: &str = "customerio.partition.0";

fn gauge(gateway: &Gateway, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{partition=\"{PARTITION}\"}} ");
    gateway
        .state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
}

#[actix_rt::test]
async fn a_held_partition_reports_its_backlog_in_metrics_and_status() {
    let vhost = TestVhost::new("partition-metrics");
    let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    // Every attempt fails and the circuit never opens: the one message the shard may take
    // (prefetch 1) stays unacked, the rest stay ready in the queue.
    sb.sandbox.set_faults(Faults {
        outage_ms: 600_000,
        outage_status: 500,
        ..Faults::default()
    });
    let gateway = common::start_gateway(&[
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", "1".into()),
        ("GATEWAY__BROKER__PREFETCH", "1".into()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
        ("GATEWAY__INGEST__TOKEN", TOKEN.into()),
        ("GATEWAY__ADMIN__TOKEN", ADMIN.into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sb.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sb.app_url()),
        (
            "GATEWAY__CUSTOMERIO__CIRCUIT_FAILURE_THRESHOLD",
            "1000000".into(),
        ),
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "100000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "300".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "300".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "1".into()),
    ])
    .await;

    let build = gateway
        .state
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("cio_gateway_build_info{"))
        .map(str::to_string)
        .expect("cio_gateway_build_info is exported");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("revision=\"")
            && !build.contains("revision=\"\"")
            && build.ends_with(" 1"),
        "{build}"
    );

    let items: Vec<Value> = (0..10)
        .map(|u| json!({"type": "track", "userId": format!("u{u}"), "payload": {"name": "e"}}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gateway.addr))
        .bearer_auth(TOKEN)
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    // The queue is counted every 15 s, the lanes every 5 s.
    let reported = eventually(Duration::from_secs(40), || {
        gauge(&gateway, "cio_gateway_partition_messages_ready") == Some(9.0)
            && gauge(&gateway, "cio_gateway_partition_messages_unacked") == Some(1.0)
    })
    .await;
    assert!(
        reported,
        "ready {:?}, unacked {:?}; queue {:?}",
        gauge(&gateway, "cio_gateway_partition_messages_ready"),
        gauge(&gateway, "cio_gateway_partition_messages_unacked"),
        vhost.queue_depths().get(PARTITION)
    );

    let status: Value = reqwest::Client::new()
        .get(format!("http://{}/admin/status", gateway.addr))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let partition = &status["partitions"][0];
    assert_eq!(partition["partition"], PARTITION, "{status:#}");
    assert_eq!(partition["receiving"], true, "{status:#}");
    assert_eq!(partition["ready"], 9, "{status:#}");
    assert_eq!(partition["unacked"], 1, "{status:#}");
    assert_eq!(partition["heldLanes"], 1, "{status:#}");
    assert!(
        partition["oldestHeldAgeMs"].as_u64().is_some(),
        "{status:#}"
    );
    assert!(
        partition["oldestHeldError"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{status:#}"
    );
    let track = &status["apis"][0];
    assert_eq!(track["api"], "track");
    assert_eq!(track["circuit"]["open"], false, "{status:#}");
    assert!(track["circuit"]["lastError"].is_string(), "{status:#}");
    assert!(
        track["ceilingRps"].as_f64().is_some_and(|c| c > 0.0),
        "{status:#}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["warehouse"]["ready"], 0, "{status:#}");

    let printed = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args(["status", "--url", &format!("http://{}", gateway.addr)])
        .env("GATEWAY__ADMIN__TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(
        table.contains(PARTITION) && table.contains("closed"),
        "{table}"
    );
    let refused = reqwest::Client::new()
        .get(format!("http://{}/admin/status", gateway.addr))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    gateway.shutdown().await;
}
