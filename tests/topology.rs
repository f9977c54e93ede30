//! `deploy/rabbitmq/definitions.json` is exactly what the service declares: `cio-gateway
//! topology` declares on a scratch vhost, RabbitMQ exports it, and the two are compared.

mod common;

use common::TestVhost;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

/// The comparable part of each definition, without the vhost it lives in.
fn normalized(definitions: &Value, vhost: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let entries = |kind: &str| {
        definitions[kind]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["vhost"] == vhost)
    };
    for e in entries("exchanges") {
        out.insert(
            json!({"exchange": e["name"], "type": e["type"], "durable": e["durable"],
            "auto_delete": e["auto_delete"], "arguments": e["arguments"],
            // RabbitMQ 3.10 leaves `internal` out of exports when it is false.
            "internal": e["internal"].as_bool().unwrap_or(false)})
            .to_string(),
        );
    }
    for q in entries("queues") {
        out.insert(
            json!({"queue": q["name"], "durable": q["durable"],
            "auto_delete": q["auto_delete"], "arguments": q["arguments"]})
            .to_string(),
        );
    }
    for b in entries("bindings") {
        out.insert(
            json!({"binding": b["source"], "destination": b["destination"],
            "destination_type": b["destination_type"], "routing_key": b["routing_key"],
            "arguments": b["arguments"]})
            .to_string(),
        );
    }
    out
}

#[test]
fn definitions_file_matches_the_declared_topology() {
    let vhost = TestVhost::new("topology");
    let declared = Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .arg("topology")
        .env("GATEWAY__BROKER__URL", &vhost.url)
        .output()
        .expect("cio-gateway runs");
    assert!(
        declared.status.success(),
        "{}",
        String::from_utf8_lossy(&declared.stderr)
    );
    let printed = String::from_utf8_lossy(&declared.stdout);
    assert!(printed.contains("customerio.partitioner") && printed.contains("x-modulus-hash"));

    let export = common::rabbitmqctl()
        .args(["-q", "export_definitions", "-"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(export.status.success());
    let exported: Value = serde_json::from_slice(&export.stdout).expect("exported JSON");
    let file: Value = serde_json::from_str(include_str!("../deploy/rabbitmq/definitions.json"))
        .expect("definitions.json is JSON");

    let declared = normalized(&exported, &vhost.name);
    let documented = normalized(&file, "/");
    assert!(!declared.is_empty());
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "declared but not in definitions.json: {missing:#?}\nin definitions.json but not declared: {extra:#?}"
    );
}
