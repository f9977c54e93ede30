//! `cio-gateway demo`: local mode end to end, checked. Starts the gateway with the in-process
//! broker and the built-in sandbox, sends a sample mix (identify, track, transactional, an
//! anonymous visitor who signs up, a company object its people belong to, a signed reporting
//! webhook), then prints what "Customer.io"
//! received per user and what the warehouse holds. Exits 0 only if all of it arrived.
//! `--api pipelines` delivers people and events through the Data Pipelines API instead.

use crate::app::Gateway;
use crate::config::{DeliveryApi, Settings};
use anyhow::Context as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const SECRET: &str = "demo-signing-secret";
const USERS: [&str; 4] = ["alice", "bob", "carol", "dana"];
/// Dana browses before signing up: her anonymous views merge into her profile.
const VISITOR: &str = "anon-dana";

fn visitor_signs_up() -> Vec<Value> {
    vec![
        json!({"type": "page", "anonymousId": VISITOR, "payload": {"path": "/pricing"}}),
        json!({"type": "screen", "anonymousId": VISITOR, "payload": {"name": "Plans"}}),
        json!({"type": "identify", "userId": "dana", "anonymousId": VISITOR,
            "payload": {"email": "dana@example.com", "plan": "trial"}}),
    ]
}

fn sample(user: &str) -> Vec<Value> {
    vec![
        json!({"type": "identify", "userId": user,
            "payload": {"email": format!("{user}@example.com"), "plan": "trial"}}),
        json!({"type": "track", "userId": user, "payload": {"name": "signed_up"}}),
        json!({"type": "track", "userId": user,
            "payload": {"name": "plan_upgraded", "data": {"plan": "pro"}}}),
        json!({"type": "transactional", "userId": user,
            "payload": {"template": "welcome", "to": format!("{user}@example.com"),
                "message_data": {"first_name": user}}}),
    ]
}

pub async fn run(api: DeliveryApi) -> anyhow::Result<ExitCode> {
    let api_name = match api {
        DeliveryApi::Track => "track",
        DeliveryApi::Pipelines => "pipelines",
    };
    let data = std::env::temp_dir().join(format!("cio-gateway-demo-{}", ulid::Ulid::new()));
    let warehouse = data.join("warehouse");
    let env: BTreeMap<String, String> = [
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".to_string()),
        ("GATEWAY__APP__DATA_DIR", data.display().to_string()),
        ("GATEWAY__WAREHOUSE__PATH", warehouse.display().to_string()),
        ("GATEWAY__WAREHOUSE__FLUSH_MS", "100".to_string()),
        ("GATEWAY__WEBHOOKS__SIGNING_SECRETS", SECRET.to_string()),
        ("GATEWAY__TEMPLATES__WELCOME", "1".to_string()),
        ("GATEWAY__CUSTOMERIO__API", api_name.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Settings::load_from(Path::new("config"), None, &env)?;
    let gateway = Gateway::start(settings).await?;
    let sandbox = gateway
        .sandbox()
        .context("local mode runs the sandbox")?
        .clone();
    println!(
        "local mode: gateway on http://{}, delivering by the {api_name} API, data in {}",
        gateway.addr,
        data.display()
    );

    let mut expected = 0;
    for user in &USERS[..3] {
        for envelope in sample(user) {
            gateway.state.publisher.publish(envelope).await?;
            expected += 1;
        }
    }
    // In order: the anonymous views are confirmed before the identify that merges them.
    let company = json!({"type": "object", "objectTypeId": "1", "objectId": "acme",
        "payload": {"action": "identify", "attributes": {"name": "Acme Inc"},
            "relationships": [{"identifiers": {"id": "alice"}}, {"identifiers": {"id": "bob"}}]}});
    for envelope in visitor_signs_up().into_iter().chain([company]) {
        gateway.state.publisher.publish(envelope).await?;
        expected += 1;
    }
    let webhook = json!({"event_id": ulid::Ulid::new().to_string(), "object_type": "email",
        "metric": "bounced", "timestamp": chrono::Utc::now().timestamp(),
        "data": {"customer_id": "carol", "identifiers": {"id": "carol"},
            "delivery_id": "demo-delivery", "recipient": "carol@example.com"}});
    let status = post_signed_webhook(gateway.addr, &webhook).await?;
    println!("webhook email.bounced for carol -> HTTP {status}");
    expected += 1; // the bounce marks carol (an identify setting email_bounced_at)

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (delivered, rows) = loop {
        let delivered = sandbox.records().len();
        let rows = warehouse_rows(&warehouse);
        if (delivered >= expected && rows >= 1) || tokio::time::Instant::now() >= deadline {
            break (delivered, rows);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    println!("\nwhat Customer.io (the sandbox) received, per user, in order:");
    println!("user     operations");
    for user in USERS {
        let ops: Vec<String> = sandbox
            .records_for(user)
            .iter()
            .map(|r| r.action.clone())
            .collect();
        println!("{user:<8} {}", ops.join(" -> "));
    }
    let views = sandbox.records_of_anonymous(VISITOR);
    let merged = views.len() == 2
        && views
            .iter()
            .all(|r| r.merged_into.as_deref() == Some("dana"));
    println!(
        "{VISITOR} (anonymous) {} -> merged into dana: {merged}",
        views
            .iter()
            .map(|r| match r.api.as_str() {
                "track_v1" => r.body["type"].as_str().unwrap_or("event"),
                _ => r.action.as_str(),
            })
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    let acme = sandbox.records_of_object("1:acme");
    // Track v2 relates people in one operation; Pipelines by one group call per person.
    let related = match api {
        DeliveryApi::Track => acme
            .first()
            .and_then(|r| r.body["cio_relationships"].as_array())
            .map_or(0, Vec::len),
        DeliveryApi::Pipelines => acme.iter().filter(|r| r.user.is_some()).count(),
    };
    println!("object 1:acme (company) identify, relating {related} people");
    println!(
        "\nwarehouse (file sink): {rows} delivery event row(s) under {}",
        warehouse.display()
    );
    gateway.shutdown().await;

    let ok = delivered >= expected && rows >= 1 && status == 200 && merged && related == 2;
    println!(
        "\n{}: {delivered}/{expected} operations delivered, {rows}/1 warehouse rows",
        if ok { "OK" } else { "FAILED" }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn post_signed_webhook(addr: std::net::SocketAddr, event: &Value) -> anyhow::Result<u16> {
    let body = serde_json::to_vec(event)?;
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(&body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/customerio"))
        .header("content-type", "application/json")
        .header("X-CIO-Timestamp", timestamp)
        .header("X-CIO-Signature", signature)
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Lines in the file sink's NDJSON segments.
fn warehouse_rows(root: &Path) -> usize {
    let Ok(days) = std::fs::read_dir(root.join("delivery_events")) else {
        return 0;
    };
    days.flatten()
        .filter_map(|day| std::fs::read_dir(day.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "ndjson"))
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
        .sum()
}
