//! The OpenAPI document: `docs/openapi.yaml` and the served `docs/openapi.json` agree, every
//! route `http::configure` registers (path and method) is documented, and every documented
//! operation exists.

mod common;

use actix_web::test as web_test;
use actix_web::{App, HttpRequest, HttpResponse, http::Method, web};
use cio_gateway::http::{self, openapi::OPENAPI_JSON};
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const UNMATCHED: &str = "x-test-unmatched";

fn served() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("docs/openapi.json is JSON")
}

#[test]
fn yaml_and_json_are_the_same_document() {
    let yaml: Value = serde_yaml::from_str(include_str!("../docs/openapi.yaml"))
        .expect("docs/openapi.yaml is YAML");
    assert_eq!(
        yaml,
        served(),
        "docs/openapi.json is stale; regenerate it from docs/openapi.yaml, e.g. \
         python3 -c 'import yaml,json; print(json.dumps(yaml.safe_load(open(\"docs/openapi.yaml\")), indent=2, ensure_ascii=False))' > docs/openapi.json"
    );
}

#[test]
fn document_is_openapi_3_and_references_resolve() {
    let doc = served();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every local $ref points at something.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let pointer = r.strip_prefix('#').expect("only local references");
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    // Every operation answers something documented, with an id.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no response"
                );
            }
        }
    }
}

/// Every documented (path, method).
fn documented() -> BTreeSet<(String, String)> {
    let doc = served();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_string()));
            }
        }
    }
    out
}

/// The route patterns of an actix resource map, read from its debug form (actix has no
/// public way to list routes).
fn patterns(debug: &str) -> BTreeSet<String> {
    debug
        .split("Single(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\")").map(|(p, _)| p.to_string()))
        .filter(|p| p.starts_with('/') && p.len() > 1)
        .collect()
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "probe-user")
}

#[actix_rt::test]
async fn every_registered_route_is_documented_and_every_documented_one_exists() {
    let state = common::routes_state(&[
        ("GATEWAY__INGEST__TOKEN", "ingest-secret"),
        ("GATEWAY__ADMIN__TOKEN", "admin-secret"),
    ])
    .await;
    let app = web_test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .configure(http::configure)
            .default_service(web::to(|req: HttpRequest| async move {
                HttpResponse::NotFound()
                    .insert_header((UNMATCHED, "1"))
                    .body(format!("{:?}", req.resource_map()))
            })),
    )
    .await;

    // The registered paths, from the resource map the unmatched request sees.
    let response = web_test::call_service(
        &app,
        web_test::TestRequest::get()
            .uri("/__no_such_route")
            .to_request(),
    )
    .await;
    assert!(response.headers().contains_key(UNMATCHED));
    let body = web_test::read_body(response).await;
    let registered_paths = patterns(&String::from_utf8_lossy(&body));
    assert!(
        registered_paths.contains("/healthz"),
        "{registered_paths:?}"
    );

    let documented = documented();
    let documented_paths: BTreeSet<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    let undocumented: Vec<_> = registered_paths.difference(&documented_paths).collect();
    assert!(
        undocumented.is_empty(),
        "registered but not in docs/openapi.yaml: {undocumented:?}"
    );

    // Which methods each path answers: anything but "no such route" / 405 means registered.
    let mut registered = BTreeSet::new();
    for path in &registered_paths {
        for method in METHODS {
            let request = web_test::TestRequest::default()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(&concrete(path))
                .insert_header(("authorization", "Bearer wrong"))
                .to_request();
            let response = web_test::call_service(&app, request).await;
            let unmatched = response.headers().contains_key(UNMATCHED)
                || response.status() == actix_web::http::StatusCode::METHOD_NOT_ALLOWED;
            if !unmatched {
                registered.insert((path.clone(), method.to_string()));
            }
        }
    }
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "answered but not documented: {undocumented:?}"
    );
    let missing: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "documented but not registered: {missing:?}"
    );
}

#[actix_rt::test]
async fn the_document_is_served() {
    let state = common::routes_state(&[]).await;
    let app = web_test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .configure(http::configure),
    )
    .await;
    let response = web_test::call_service(
        &app,
        web_test::TestRequest::get()
            .uri("/openapi.json")
            .to_request(),
    )
    .await;
    assert!(response.status().is_success());
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    let body: Value = serde_json::from_slice(&web_test::read_body(response).await).unwrap();
    assert_eq!(body, served());
}
