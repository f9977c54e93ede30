//! The sandbox over real HTTP, with a plain HTTP client: credentials, the request budget,
//! fault injection, validation against Customer.io's documented shapes and limits, records per
//! person in order, duplicate event ids, and the control routes.

use actix_web::{App, HttpServer, web};
use cio_gateway::sandbox::{
    self, Faults, Record, RunningSandbox, SANDBOX_API_KEY, SANDBOX_APP_API_KEY, SANDBOX_SITE_ID,
    Sandbox, SandboxConfig, Stats,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn sandbox() -> RunningSandbox {
    sandbox::spawn(SandboxConfig::default())
        .await
        .expect("sandbox starts")
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

/// A Track request with the sandbox's Basic credentials.
async fn track(base: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
    let req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .basic_auth(SANDBOX_SITE_ID, Some(SANDBOX_API_KEY));
    answer(with_json(req, body)).await
}

/// An App API request with the sandbox's Bearer key.
async fn app(base: &str, path: &str, body: Value) -> Answer {
    let req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(SANDBOX_APP_API_KEY);
    answer(with_json(req, Some(body))).await
}

fn with_json(req: reqwest::RequestBuilder, body: Option<Value>) -> reqwest::RequestBuilder {
    match body {
        Some(body) => req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap()),
        None => req,
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let response = req.send().await.expect("the sandbox answers");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn identify(base: &str, user: &str, body: Value) -> Answer {
    track(
        base,
        Method::PUT,
        &format!("/api/v1/customers/{user}"),
        Some(body),
    )
    .await
}

async fn event(base: &str, user: &str, body: Value) -> Answer {
    track(
        base,
        Method::POST,
        &format!("/api/v1/customers/{user}/events"),
        Some(body),
    )
    .await
}

fn person_op(user: &str, action: &str, extra: Value) -> Value {
    let mut op = json!({"type": "person", "identifiers": {"id": user}, "action": action});
    op.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    op
}

// ---- credentials ----

#[tokio::test]
async fn requests_without_or_with_wrong_credentials_are_401() {
    let sb = sandbox().await;
    let url = sb.url();
    let http = reqwest::Client::new();
    let path = format!("{url}/api/v1/customers/42");
    let none = answer(http.put(&path).json(&json!({}))).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.body["meta"]["error"].is_string(), "{:?}", none.body);
    let wrong = answer(
        http.put(&path)
            .basic_auth(SANDBOX_SITE_ID, Some("nope"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // The App API takes a Bearer key, not the Track credentials.
    let basic_on_app = answer(
        http.post(format!("{url}/v1/send/email"))
            .basic_auth(SANDBOX_SITE_ID, Some(SANDBOX_API_KEY))
            .json(&json!({})),
    )
    .await;
    assert_eq!(basic_on_app.status, StatusCode::UNAUTHORIZED);
    let bearer_on_track = answer(
        http.put(&path)
            .bearer_auth(SANDBOX_API_KEY)
            .json(&json!({})),
    )
    .await;
    assert_eq!(bearer_on_track.status, StatusCode::UNAUTHORIZED);
    let v2 = answer(
        http.post(format!("{url}/api/v2/batch"))
            .json(&json!({"batch": []})),
    )
    .await;
    assert_eq!(v2.status, StatusCode::UNAUTHORIZED);
    assert!(v2.body["errors"][0]["message"].is_string(), "{:?}", v2.body);

    assert!(sb.sandbox.records().is_empty());
    let stats = sb.sandbox.stats();
    assert_eq!((stats.requests, stats.unauthorized), (5, 5));
    // The right ones pass.
    assert_eq!(identify(&url, "42", json!({})).await.status, StatusCode::OK);
}

// ---- request budget ----

#[tokio::test]
async fn over_budget_is_429_with_retry_after() {
    let sb = sandbox().await;
    sb.sandbox.set_rps(Some(1));
    let url = sb.url();
    // Sent at once: the bucket holds one second's worth (1), refilled at 1/s.
    let answers = futures::future::join_all((0..6).map(|i| {
        let url = url.clone();
        async move { identify(&url, "42", json!({"n": i})).await }
    }))
    .await;
    let mut limited = 0;
    for a in &answers {
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let secs: u64 = a
                .retry_after
                .as_deref()
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!(secs >= 1, "whole seconds, at least 1");
            assert!(a.body["meta"]["error"].is_string());
        } else {
            assert_eq!(a.status, StatusCode::OK);
        }
    }
    assert!(limited >= 4, "{limited} of 6 were over budget");
    assert_eq!(sb.sandbox.stats().rate_limited, limited);
    assert_eq!(sb.sandbox.records().len() as u64, 6 - limited);
    sb.sandbox.set_rps(None);
    assert_eq!(identify(&url, "42", json!({})).await.status, StatusCode::OK);
}

// ---- fault injection ----

#[tokio::test]
async fn error_rate_one_fails_everything_and_zero_nothing() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..20 {
        let a = identify(&sb.url(), "42", json!({})).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.retry_after, None);
    }
    assert!(sb.sandbox.records().is_empty());
    sb.sandbox.set_faults(Faults {
        error_rate: 0.0,
        ..Faults::default()
    });
    for _ in 0..20 {
        assert_eq!(
            identify(&sb.url(), "42", json!({})).await.status,
            StatusCode::OK
        );
    }
    let stats = sb.sandbox.stats();
    assert_eq!((stats.injected_failures, stats.accepted_ops), (20, 20));
}

#[tokio::test]
async fn error_rate_half_fails_about_half() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        error_rate: 0.5,
        error_status: 500,
        ..Faults::default()
    });
    let mut failed = 0;
    for _ in 0..100 {
        if identify(&sb.url(), "42", json!({})).await.status == StatusCode::INTERNAL_SERVER_ERROR {
            failed += 1;
        }
    }
    assert!((20..=80).contains(&failed), "{failed} of 100 failed");
}

#[tokio::test]
async fn fail_first_fails_the_next_requests_then_counts_out() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        fail_first: 2,
        error_status: 502,
        retry_after_secs: Some(3),
        ..Faults::default()
    });
    for _ in 0..2 {
        let a = identify(&sb.url(), "42", json!({})).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY);
        assert_eq!(a.retry_after.as_deref(), Some("3"));
    }
    assert_eq!(
        identify(&sb.url(), "42", json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(sb.sandbox.faults().fail_first, 0);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(
        identify(&sb.url(), "42", json!({})).await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn fail_users_fails_requests_about_that_person_only() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([("bad".to_string(), 404)]),
        ..Faults::default()
    });
    assert_eq!(
        identify(&sb.url(), "bad", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    let send = app(
        &sb.url(),
        "/v1/send/push",
        json!({"transactional_message_id": 1, "identifiers": {"id": "bad"}}),
    )
    .await;
    assert_eq!(send.status, StatusCode::NOT_FOUND);
    assert_eq!(
        identify(&sb.url(), "good", json!({})).await.status,
        StatusCode::OK
    );
    let batch = track(
        &sb.url(),
        Method::POST,
        "/api/v2/batch",
        Some(json!({"batch": [
            person_op("good", "delete", json!({})),
            person_op("bad", "delete", json!({})),
        ]})),
    )
    .await;
    assert_eq!(batch.status, StatusCode::MULTI_STATUS);
    assert_eq!(batch.body["errors"].as_array().unwrap().len(), 1);
    assert_eq!(batch.body["errors"][0]["batch_index"], 1);
    assert!(sb.sandbox.records_for("bad").is_empty());
    assert_eq!(sb.sandbox.records_for("good").len(), 2);
}

// ---- records ----

#[tokio::test]
async fn records_per_user_in_arrival_order() {
    let sb = sandbox().await;
    let url = sb.url();
    for seq in 0..5 {
        for user in ["a", "b"] {
            identify(&url, user, json!({"seq": seq})).await;
        }
    }
    track(
        &url,
        Method::POST,
        "/api/v2/batch",
        Some(json!({"batch": [
            person_op("b", "identify", json!({"attributes": {"seq": 5}})),
            person_op("a", "identify", json!({"attributes": {"seq": 5}})),
        ]})),
    )
    .await;
    for user in ["a", "b"] {
        let records = sb.sandbox.records_for(user);
        let seqs: Vec<_> = records
            .iter()
            .map(|r| {
                r.body
                    .pointer("/seq")
                    .or(r.body.pointer("/attributes/seq"))
                    .and_then(Value::as_u64)
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5], "{user}");
        assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    let all = sb.sandbox.records();
    assert_eq!(all.len(), 12);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    assert_eq!(
        (all[10].user.as_deref(), all[11].user.as_deref()),
        (Some("b"), Some("a"))
    );
    sb.sandbox.reset();
    assert!(sb.sandbox.records().is_empty());
    assert_eq!(sb.sandbox.stats(), Stats::default());
}

#[tokio::test]
async fn repeated_event_ids_are_flagged_as_duplicates() {
    let sb = sandbox().await;
    let url = sb.url();
    let id = ulid::Ulid::new().to_string();
    event(&url, "42", json!({"name": "paid", "id": id})).await;
    event(&url, "42", json!({"name": "paid", "id": id})).await;
    // v1 and v2 share what Customer.io has seen.
    track(
        &url,
        Method::POST,
        "/api/v2/entity",
        Some(person_op("42", "event", json!({"name": "paid", "id": id}))),
    )
    .await;
    event(
        &url,
        "42",
        json!({"name": "paid", "id": ulid::Ulid::new().to_string()}),
    )
    .await;
    event(&url, "42", json!({"name": "no id"})).await;
    event(&url, "42", json!({"name": "no id"})).await;
    let flags: Vec<_> = sb
        .sandbox
        .records_for("42")
        .iter()
        .map(|r| r.duplicate)
        .collect();
    assert_eq!(flags, [false, true, true, false, false, false]);
    assert_eq!(sb.sandbox.stats().duplicates, 2);
}

// ---- validation ----

#[tokio::test]
async fn invalid_v1_bodies_are_400_with_the_meta_shape() {
    let sb = sandbox().await;
    let url = sb.url();
    let a = event(&url, "42", json!({"data": {"x": 1}})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.body["meta"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("name"),
        "{:?}",
        a.body
    );
    assert!(a.body["meta"]["error"].is_string());
    let cases = [
        (
            Method::POST,
            "/api/v1/customers/42/events",
            json!({"name": "x".repeat(101)}),
        ),
        (
            Method::POST,
            "/api/v1/customers/42/events",
            json!({"name": "x", "id": "not-a-ulid"}),
        ),
        (
            Method::POST,
            "/api/v1/customers/42/events",
            json!({"name": "x", "data": []}),
        ),
        (
            Method::PUT,
            "/api/v1/customers/42",
            json!({"bio": "x".repeat(1001)}),
        ),
        (Method::PUT, "/api/v1/customers/42", json!([1, 2])),
        (
            Method::PUT,
            "/api/v1/customers/42/devices",
            json!({"device": {"id": "t"}}),
        ),
        (
            Method::PUT,
            "/api/v1/customers/42/devices",
            json!({"device": {"id": "t", "platform": "windows"}}),
        ),
        (
            Method::POST,
            "/api/v1/merge_customers",
            json!({"primary": {"id": "1", "email": "a@b.c"}, "secondary": {"id": "2"}}),
        ),
        (
            Method::POST,
            "/api/v1/merge_customers",
            json!({"primary": {"id": "1"}}),
        ),
        (Method::POST, "/api/v1/events", json!({"anonymous_id": "c"})),
    ];
    for (method, path, body) in cases {
        let a = track(&url, method.clone(), path, Some(body.clone())).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {:?}",
            a.body
        );
    }
    let many: serde_json::Map<String, Value> =
        (0..301).map(|i| (format!("a{i}"), json!(i))).collect();
    assert_eq!(
        identify(&url, "42", Value::Object(many)).await.status,
        StatusCode::BAD_REQUEST
    );
    let long_id = "x".repeat(151);
    assert_eq!(
        identify(&url, &long_id, json!({})).await.status,
        StatusCode::BAD_REQUEST
    );
    let raw = answer(
        reqwest::Client::new()
            .put(format!("{url}/api/v1/customers/42"))
            .basic_auth(SANDBOX_SITE_ID, Some(SANDBOX_API_KEY))
            .body("{not json"),
    )
    .await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    // Event data over 100000 bytes is too large.
    let big = event(
        &url,
        "42",
        json!({"name": "x", "data": {"b": "x".repeat(100_000)}}),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(sb.sandbox.records().is_empty());
    let stats = sb.sandbox.stats();
    assert_eq!((stats.invalid, stats.too_large), (14, 1));
}

#[tokio::test]
async fn invalid_v2_operations_are_400_for_entity_and_207_in_a_batch() {
    let sb = sandbox().await;
    let url = sb.url();
    let a = track(
        &url,
        Method::POST,
        "/api/v2/entity",
        Some(person_op("42", "event", json!({"attributes": {}}))),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["errors"][0]["field"], "name", "{:?}", a.body);

    let batch = json!({"batch": [
        person_op("1", "identify", json!({"attributes": {"ok": true}})),
        person_op("2", "event", json!({})),
        {"type": "person", "action": "delete", "identifiers": {"id": "3", "email": "x@y.z"}},
        person_op("4", "fly", json!({})),
        person_op("5", "event", json!({"name": "big", "attributes": {"b": "x".repeat(33 * 1024)}})),
        person_op("6", "add_device", json!({"device": {"token": "t", "platform": "ios"}})),
    ]});
    let a = track(&url, Method::POST, "/api/v2/batch", Some(batch)).await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{:?}", a.body);
    let indexes: Vec<_> = a.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["batch_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4]);
    assert_eq!(a.body["errors"][0]["field"], "name");
    for e in a.body["errors"].as_array().unwrap() {
        assert!(e["reason"].is_string() && e["message"].is_string(), "{e}");
    }
    // The valid operations are accepted.
    let users: Vec<_> = sb
        .sandbox
        .records()
        .into_iter()
        .filter_map(|r| r.user)
        .collect();
    assert_eq!(users, ["1", "6"]);

    let a = track(
        &url,
        Method::POST,
        "/api/v2/batch",
        Some(json!({"ops": []})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["errors"][0]["field"], "batch");
}

#[tokio::test]
async fn oversized_v2_requests_are_413() {
    let sb = sandbox().await;
    let url = sb.url();
    let op = |user: &str, bytes: usize| {
        person_op(
            user,
            "event",
            json!({"name": "e", "attributes": {"b": "x".repeat(bytes)}}),
        )
    };
    let a = track(
        &url,
        Method::POST,
        "/api/v2/entity",
        Some(op("1", 33 * 1024)),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("32768")
    );
    let ops: Vec<_> = (0..20).map(|i| op(&i.to_string(), 30_000)).collect();
    let a = track(
        &url,
        Method::POST,
        "/api/v2/batch",
        Some(json!({ "batch": ops })),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Over the raw 1 MiB any route refuses.
    let a = identify(&url, "1", json!({"b": "x".repeat(1024 * 1024)})).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(sb.sandbox.records().is_empty());
    assert_eq!(sb.sandbox.stats().too_large, 3);
}

#[tokio::test]
async fn app_sends_answer_a_delivery_id_and_validate_the_channel() {
    let sb = sandbox().await;
    let url = sb.url();
    let a = app(
        &url,
        "/v1/send/email",
        json!({"transactional_message_id": 3,
        "to": "a@example.com", "identifiers": {"id": "42"}, "message_data": {"x": 1}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let delivery_id = a.body["delivery_id"].as_str().unwrap().to_string();
    assert!(a.body["queued_at"].as_i64().unwrap() > 1_700_000_000);
    let r = &sb.sandbox.records_for("42")[0];
    assert_eq!((r.api.as_str(), r.action.as_str()), ("app", "send_email"));
    assert_eq!(r.delivery_id.as_deref(), Some(delivery_id.as_str()));

    let bad = [
        (
            "/v1/send/email",
            json!({"transactional_message_id": 3, "identifiers": {"id": "42"}}),
        ),
        (
            "/v1/send/email",
            json!({"to": "a@b.co", "identifiers": {"id": "42"}}),
        ),
        (
            "/v1/send/email",
            json!({"transactional_message_id": 3, "to": "a@b.co"}),
        ),
        (
            "/v1/send/sms",
            json!({"transactional_message_id": 3, "identifiers": {"id": "42"}}),
        ),
        ("/v1/send/push", json!({"identifiers": {"id": "42"}})),
        (
            "/v1/send/push",
            json!({"transactional_message_id": 3,
            "identifiers": {"id": "42", "email": "a@b.co"}}),
        ),
    ];
    for (path, body) in bad {
        let a = app(&url, path, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(a.body["meta"]["error"].is_string());
    }
    assert_eq!(sb.sandbox.records().len(), 1);
}

// ---- control routes ----

#[tokio::test]
async fn control_routes_work_over_http() {
    let sb = sandbox().await;
    let url = sb.url();
    let http = reqwest::Client::new();
    identify(&url, "a", json!({"n": 1})).await;
    identify(&url, "b", json!({"n": 2})).await;

    let records: Vec<Record> = http
        .get(format!("{url}/sandbox/requests?user=b"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].body, json!({"n": 2}));
    let all: Vec<Record> = http
        .get(format!("{url}/sandbox/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);

    let put = http
        .put(format!("{url}/sandbox/faults"))
        .json(&json!({"fail_users": {"a": 400}, "latency_ms": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let faults: Faults = http
        .get(format!("{url}/sandbox/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        faults.error_status, 503,
        "missing fields take their defaults"
    );
    assert_eq!(faults.fail_users.get("a"), Some(&400));
    assert_eq!(
        identify(&url, "a", json!({})).await.status,
        StatusCode::BAD_REQUEST
    );
    let bad = http
        .put(format!("{url}/sandbox/faults"))
        .json(&json!({"error_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = http
        .put(format!("{url}/sandbox/faults"))
        .json(&json!({"typo": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let cleared = http
        .delete(format!("{url}/sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.sandbox.faults(), Faults::default());

    let budget = http
        .put(format!("{url}/sandbox/budget"))
        .json(&json!({"rps": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);
    assert_eq!(sb.sandbox.rps(), Some(7));

    let stats: Stats = http
        .get(format!("{url}/sandbox/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.accepted_ops, 2);
    let reset = http
        .delete(format!("{url}/sandbox/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert!(sb.sandbox.records().is_empty());
}

// ---- mounting ----

/// As the gateway embeds it: the API inside `/sandbox`, the control routes at the root.
#[actix_rt::test]
async fn embedded_under_a_scope_next_to_its_control_routes() {
    let sb = Sandbox::new(SandboxConfig::default());
    let app_sb = sb.clone();
    let server = HttpServer::new(move || {
        let sb = app_sb.clone();
        App::new()
            .configure(|cfg| sb.configure_control(cfg))
            .service(web::scope("/sandbox").configure(|cfg| sb.configure_api(cfg)))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let base = format!("http://{addr}/sandbox");
    assert_eq!(
        identify(&base, "42", json!({"plan": "pro"})).await.status,
        StatusCode::OK
    );
    let records: Vec<Record> = reqwest::get(format!("{base}/requests?user=42"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].path, "/sandbox/api/v1/customers/42");
    assert_eq!(sb.records(), records);
    handle.stop(true).await;
}

#[actix_rt::test]
async fn spawn_works_on_actix_rt_and_stops() {
    let sb = sandbox().await;
    assert_eq!(
        identify(&sb.url(), "42", json!({})).await.status,
        StatusCode::OK
    );
    let url = sb.url();
    sb.stop().await;
    assert!(
        reqwest::get(format!("{url}/sandbox/requests"))
            .await
            .is_err()
    );
}
