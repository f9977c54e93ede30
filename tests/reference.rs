//! `docs/reference.md` stays true to the code: the configuration table of §3 lists exactly the
//! keys of the effective configuration, and every route of the HTTP table of §6 is in
//! `docs/openapi.yaml`.

mod common;

use serde_json::Value;
use std::collections::BTreeSet;

const REFERENCE: &str = include_str!("../docs/reference.md");

/// The lines of the section whose heading starts with `## <number>.`.
fn section(number: u8) -> Vec<&'static str> {
    let heading = format!("## {number}.");
    REFERENCE
        .lines()
        .skip_while(|line| !line.starts_with(&heading))
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect()
}

/// The first column of a section's table rows, without its backticks: rows start with "| `".
fn first_column(number: u8) -> Vec<&'static str> {
    let cells: Vec<&str> = section(number)
        .into_iter()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .map(|cell| cell.trim().trim_matches('`'))
        .collect();
    assert!(
        !cells.is_empty(),
        "docs/reference.md §{number} has no table rows starting with \"| `\""
    );
    cells
}

fn documented_keys() -> BTreeSet<&'static str> {
    first_column(3).into_iter().collect()
}

fn effective_config() -> Value {
    serde_json::to_value(common::settings(&[])).expect("Settings serialise")
}

fn lookup<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(value, |value, key| value.as_object()?.get(key))
}

/// Every leaf of the effective configuration not covered by a documented key. A documented key
/// covers everything under it (maps such as `templates` and `webhooks.rules` are one key).
fn undocumented(prefix: &str, value: &Value, documented: &BTreeSet<&str>, out: &mut Vec<String>) {
    if !prefix.is_empty() && documented.contains(prefix) {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                undocumented(&path, child, documented, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_documented_key_exists() {
    let config = effective_config();
    let missing: Vec<_> = documented_keys()
        .into_iter()
        .filter(|key| lookup(&config, key).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md §3 lists keys the configuration does not have: {missing:?}"
    );
}

#[test]
fn every_key_is_documented() {
    let mut missing = Vec::new();
    undocumented("", &effective_config(), &documented_keys(), &mut missing);
    assert!(
        missing.is_empty(),
        "configuration keys missing from the table of docs/reference.md §3: {missing:?}"
    );
}

#[test]
fn every_documented_route_is_in_the_openapi_document() {
    let openapi: Value = serde_yaml::from_str(include_str!("../docs/openapi.yaml"))
        .expect("docs/openapi.yaml is YAML");
    let paths = openapi["paths"]
        .as_object()
        .expect("docs/openapi.yaml has paths");
    for route in first_column(6) {
        let (methods, path) = route
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("route {route:?} is `METHOD[, METHOD] /path`"));
        let operations = paths.get(path).unwrap_or_else(|| {
            panic!("docs/reference.md §6 route {path} is not in docs/openapi.yaml")
        });
        for method in methods.split(',').map(|m| m.trim().to_lowercase()) {
            assert!(
                operations.get(&method).is_some(),
                "docs/reference.md §6 route {method} {path} is not in docs/openapi.yaml"
            );
        }
    }
}
