//! The web console (issue 23, item 3) in a real browser: Debian's headless Chromium, driven by
//! puppeteer-core (tests/browser/, installed by npm into .cache/browser-kit). Two users' events
//! are rejected by "Customer.io" and dead-lettered; the test logs in, takes a screenshot
//! (target/console.png), replays one of them with its button, accepting the confirmation, and
//! checks that it was then delivered, and that the other is still a dead letter.
//!
//! Needs `chromium` (scripts/test.sh installs it) and node with npm.

mod common;

use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ADMIN: &str = "console-admin-secret";
const INGEST: &str = "console-ingest-secret";

/// puppeteer-core and the driver script in a cache directory of their own (ESM resolves
/// packages next to the script, not through NODE_PATH).
fn browser_kit() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/browser-kit");
    std::fs::create_dir_all(&kit).unwrap();
    for file in ["package.json", "package-lock.json", "console.mjs"] {
        std::fs::copy(source.join(file), kit.join(file)).unwrap();
    }
    if !kit.join("node_modules/puppeteer-core").exists() {
        let installed = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&kit)
            .status()
            .expect("npm runs");
        assert!(installed.success(), "npm ci of tests/browser");
    }
    kit
}

#[actix_rt::test]
async fn a_dead_letter_is_replayed_from_the_console_in_a_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "needs Debian's chromium: apt-get install chromium (scripts/test.sh does)"
    );
    let kit = browser_kit();
    let vhost = TestVhost::new("console");
    let sb = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sb.sandbox.set_faults(Faults {
        reject_requests_of: ["console-a".to_string(), "console-b".to_string()].into(),
        ..Faults::default()
    });
    let data = tempfile::tempdir().unwrap();
    let gateway = common::start_gateway(&[
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", "2".into()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__APP__DATA_DIR", data.path().display().to_string()),
        ("GATEWAY__ADMIN__TOKEN", ADMIN.into()),
        ("GATEWAY__INGEST__TOKEN", INGEST.into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sb.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sb.app_url()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "2".into()),
    ])
    .await;
    let base = format!("http://{}", gateway.addr);
    let events: Vec<Value> = ["console-a", "console-b"]
        .iter()
        .map(|user| json!({"type": "track", "userId": user, "payload": {"name": "signup"}}))
        .collect();
    let accepted: Value = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(INGEST)
        .json(&events)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replayed_id = accepted["correlationIds"][0].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || vhost
            .queue_depths()
            .get(DLQ_QUEUE)
            .is_some_and(|n| *n == 2))
        .await,
        "both events dead-lettered: {:?}",
        vhost.queue_depths()
    );
    // "Customer.io" takes them now; only the replayed one may arrive.
    sb.sandbox.set_faults(Faults::default());

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console.png");
    let driven = tokio::process::Command::new("node")
        .arg(kit.join("console.mjs"))
        .args([
            &base,
            ADMIN,
            &replayed_id,
            &screenshot.display().to_string(),
        ])
        .output()
        .await
        .expect("node runs");
    assert!(
        driven.status.success(),
        "the browser run: {}",
        String::from_utf8_lossy(&driven.stderr)
    );
    let page: Value = serde_json::from_slice(&driven.stdout).expect("the driver prints JSON");
    assert_eq!(page["listed"], 2, "{page}");
    assert_eq!(
        page["kinds"],
        json!(["rejected"]),
        "grouped by kind: {page}"
    );
    assert!(
        page["asked"][0]
            .as_str()
            .is_some_and(|q| q.contains(&replayed_id)),
        "a confirmation named the dead letter: {page}"
    );
    assert!(
        page["done"]
            .as_str()
            .is_some_and(|d| d.starts_with("Replayed 1,")),
        "{page}"
    );
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    let delivered = eventually_async(Duration::from_secs(20), || async {
        !sb.sandbox.records_for("console-a").is_empty()
    })
    .await;
    assert!(delivered, "the replayed event reached Customer.io");
    assert!(
        sb.sandbox.records_for("console-b").is_empty(),
        "the other was not replayed"
    );
    assert_eq!(
        vhost.queue_depths().get(DLQ_QUEUE),
        Some(&1),
        "and is still a dead letter"
    );
    gateway.shutdown().await;
}
