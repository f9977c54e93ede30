//! The Customer.io client against the sandbox over real HTTP: every operation's method, path,
//! credentials and body as the sandbox received them; how each failure is classified; limits
//! refused before sending; per-operation batch failures; the request budget.

use cio_gateway::config::{CustomerIoSettings, Region, Secret};
use cio_gateway::customerio::{CioError, CustomerIo, TrackCall};
use cio_gateway::domain::{
    Attributes, Device, Event, EventName, Operation, PersonRef, TransactionalRequest, UserId, View,
};
use cio_gateway::sandbox::{self, Faults, Record, RunningSandbox, SandboxConfig};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn sandbox() -> RunningSandbox {
    sandbox::spawn(SandboxConfig::default())
        .await
        .expect("sandbox starts")
}

fn settings(sb: &RunningSandbox) -> CustomerIoSettings {
    CustomerIoSettings {
        region: Region::Sandbox,
        track_url: Some(sb.track_url()),
        app_url: Some(sb.app_url()),
        site_id: None,
        api_key: None,
        app_api_key: None,
        track_rps: 1000,
        app_rps: 1000,
        broadcast_interval_ms: 10,
        timeout_ms: 5000,
        circuit_max_backoff_ms: 200,
        circuit_failure_threshold: 3,
        ..CustomerIoSettings::default()
    }
}

fn client(sb: &RunningSandbox) -> CustomerIo {
    CustomerIo::new(&settings(sb)).expect("client builds")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn event(payload: Value) -> Event {
    Event::parse(&payload).unwrap()
}

fn attributes(value: Value) -> Attributes {
    Attributes::parse_person(&value).unwrap()
}

fn call(id: &str, operation: Operation) -> TrackCall {
    TrackCall::new(user(id), operation)
}

fn transactional(payload: Value) -> TransactionalRequest {
    TransactionalRequest::parse(&payload, &user("42")).unwrap()
}

/// The only record about `id`.
fn only(sb: &RunningSandbox, id: &str) -> Record {
    let records = sb.sandbox.records_for(id);
    assert_eq!(records.len(), 1, "records for {id}: {records:#?}");
    records.into_iter().next().unwrap()
}

fn assert_request(record: &Record, api: &str, method: &str, path: &str, action: &str) {
    assert_eq!(record.api, api, "{record:#?}");
    assert_eq!(record.method, method, "{record:#?}");
    assert_eq!(record.path, path, "{record:#?}");
    assert_eq!(record.action, action, "{record:#?}");
}

// ---- Track v1: one request per operation ----

// Runs on actix-rt, as the gateway does; the other tests run on plain tokio.
#[actix_rt::test]
async fn identify_puts_the_attributes_as_the_body() {
    let sb = sandbox().await;
    client(&sb)
        .identify(&user("42"), &attributes(json!({"plan": "pro", "seats": 3})))
        .await
        .unwrap();
    let r = only(&sb, "42");
    assert_request(&r, "track_v1", "PUT", "/api/v1/customers/42", "identify");
    assert_eq!(r.body, json!({"plan": "pro", "seats": 3}));
}

#[tokio::test]
async fn path_ids_are_percent_encoded() {
    let sb = sandbox().await;
    let id = "a/b c+é%?#";
    client(&sb).delete(&user(id)).await.unwrap();
    let r = only(&sb, id);
    assert_request(
        &r,
        "track_v1",
        "DELETE",
        "/api/v1/customers/a%2Fb%20c%2B%C3%A9%25%3F%23",
        "delete",
    );
    assert_eq!(r.body, Value::Null);
}

#[tokio::test]
async fn delete_is_a_delete_of_the_person() {
    let sb = sandbox().await;
    client(&sb).delete(&user("7")).await.unwrap();
    assert_request(
        &only(&sb, "7"),
        "track_v1",
        "DELETE",
        "/api/v1/customers/7",
        "delete",
    );
}

#[tokio::test]
async fn track_posts_the_event_with_its_id_and_a_resend_is_a_duplicate() {
    let sb = sandbox().await;
    let cio = client(&sb);
    let id = ulid::Ulid::new();
    let e = event(json!({"name": "signup", "data": {"plan": "pro"}, "timestamp": 1764115200}));
    cio.track(&user("42"), &e, Some(id)).await.unwrap();
    cio.track(&user("42"), &e, Some(id)).await.unwrap();
    let records = sb.sandbox.records_for("42");
    assert_eq!(records.len(), 2);
    assert_request(
        &records[0],
        "track_v1",
        "POST",
        "/api/v1/customers/42/events",
        "event",
    );
    assert_eq!(
        records[0].body,
        json!({"name": "signup", "data": {"plan": "pro"}, "timestamp": 1764115200,
            "id": id.to_string()})
    );
    assert_eq!(records[0].event_id, Some(id.to_string()));
    assert!(!records[0].duplicate);
    assert!(
        records[1].duplicate,
        "Customer.io ignores a repeated event id"
    );
    assert_eq!(sb.sandbox.stats().duplicates, 1);
}

#[tokio::test]
async fn anonymous_track_posts_to_events() {
    let sb = sandbox().await;
    let id = ulid::Ulid::new();
    client(&sb)
        .track_anonymous(
            &user("cookie-1"),
            &event(json!({"name": "viewed", "data": {"n": 1}})),
            Some(id),
        )
        .await
        .unwrap();
    let records = sb.sandbox.records();
    assert_eq!(records.len(), 1);
    assert_request(
        &records[0],
        "track_v1",
        "POST",
        "/api/v1/events",
        "anonymous_event",
    );
    assert_eq!(records[0].user, None);
    assert_eq!(
        records[0].body,
        json!({"anonymous_id": "cookie-1", "name": "viewed", "data": {"n": 1},
            "id": id.to_string()})
    );
}

#[tokio::test]
async fn page_is_an_event_of_type_page_named_by_the_path() {
    let sb = sandbox().await;
    let page = View::page(&json!({"path": "/pricing", "data": {"ref": "ad"}})).unwrap();
    let id = ulid::Ulid::new();
    client(&sb)
        .page(&user("42"), &page, Some(id))
        .await
        .unwrap();
    let r = only(&sb, "42");
    assert_request(
        &r,
        "track_v1",
        "POST",
        "/api/v1/customers/42/events",
        "page",
    );
    assert_eq!(
        r.body,
        json!({"type": "page", "name": "/pricing", "data": {"ref": "ad"}, "id": id.to_string()})
    );
}

#[tokio::test]
async fn suppress_and_unsuppress_post_to_their_paths() {
    let sb = sandbox().await;
    let cio = client(&sb);
    cio.suppress(&user("42")).await.unwrap();
    cio.unsuppress(&user("42")).await.unwrap();
    let records = sb.sandbox.records_for("42");
    assert_request(
        &records[0],
        "track_v1",
        "POST",
        "/api/v1/customers/42/suppress",
        "suppress",
    );
    assert_request(
        &records[1],
        "track_v1",
        "POST",
        "/api/v1/customers/42/unsuppress",
        "unsuppress",
    );
}

#[tokio::test]
async fn add_device_puts_the_documented_device_object() {
    let sb = sandbox().await;
    let device = Device::parse(&json!({"deviceId": "tok-1", "platform": "ios",
        "data": {"last_used": 1764115200, "app_version": "2.1"}}))
    .unwrap();
    client(&sb).add_device(&user("42"), &device).await.unwrap();
    let r = only(&sb, "42");
    assert_request(
        &r,
        "track_v1",
        "PUT",
        "/api/v1/customers/42/devices",
        "add_device",
    );
    assert_eq!(
        r.body,
        json!({"device": {"id": "tok-1", "platform": "ios", "last_used": 1764115200,
            "attributes": {"app_version": "2.1"}}})
    );
}

#[tokio::test]
async fn delete_device_names_the_token_in_the_path() {
    let sb = sandbox().await;
    client(&sb)
        .delete_device(&user("42"), "tok/1")
        .await
        .unwrap();
    assert_request(
        &only(&sb, "42"),
        "track_v1",
        "DELETE",
        "/api/v1/customers/42/devices/tok%2F1",
        "delete_device",
    );
}

#[tokio::test]
async fn merge_posts_primary_and_secondary() {
    let sb = sandbox().await;
    let primary = PersonRef::parse(&json!({"id": "42"})).unwrap();
    let secondary = PersonRef::parse(&json!({"email": "old@example.com"})).unwrap();
    client(&sb)
        .merge(&user("42"), &primary, &secondary)
        .await
        .unwrap();
    let r = only(&sb, "42");
    assert_request(&r, "track_v1", "POST", "/api/v1/merge_customers", "merge");
    assert_eq!(
        r.body,
        json!({"primary": {"id": "42"}, "secondary": {"email": "old@example.com"}})
    );
}

#[tokio::test]
async fn perform_refuses_a_transactional_call() {
    let sb = sandbox().await;
    let op = Operation::Transactional(transactional(json!({"transactional_message_id": 1})));
    let e = client(&sb).perform(&call("42", op)).await.unwrap_err();
    assert!(matches!(e, CioError::Invalid(_)), "{e}");
    assert_eq!(sb.sandbox.stats().requests, 0);
}

// ---- Track v2 ----

#[tokio::test]
async fn v2_batch_records_every_operation_in_batch_order() {
    let sb = sandbox().await;
    let id = ulid::Ulid::new();
    let calls = vec![
        call(
            "u1",
            Operation::Identify(attributes(json!({"plan": "pro"}))),
        ),
        TrackCall {
            event_id: Some(id),
            ..call(
                "u2",
                Operation::Track(event(json!({"name": "paid", "data": {"amount": 9},
                    "timestamp": 1764115200}))),
            )
        },
        call(
            "u3",
            Operation::Page(View::page(&json!({"path": "/home"})).unwrap()),
        ),
        call(
            "u4",
            Operation::AddDevice(
                Device::parse(&json!({"deviceId": "t", "platform": "android"})).unwrap(),
            ),
        ),
        call("u5", Operation::DeleteDevice("t".into())),
        call("u6", Operation::Suppress),
        call("u7", Operation::Unsuppress),
        call("u8", Operation::Delete),
        call(
            "u9",
            Operation::Merge {
                primary: PersonRef::parse(&json!("u9")).unwrap(),
                secondary: PersonRef::parse(&json!({"cio_id": "abc"})).unwrap(),
            },
        ),
    ];
    let results = client(&sb).batch(&calls).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let records = sb.sandbox.records();
    let actions: Vec<_> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "identify",
            "event",
            "page",
            "add_device",
            "delete_device",
            "suppress",
            "unsuppress",
            "delete",
            "merge"
        ]
    );
    let seqs: Vec<_> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..9).collect::<Vec<_>>());
    for r in &records {
        assert_eq!(
            (r.api.as_str(), r.method.as_str(), r.path.as_str()),
            ("track_v2", "POST", "/api/v2/batch")
        );
    }
    assert_eq!(
        records[0].body,
        json!({"type": "person", "identifiers": {"id": "u1"}, "action": "identify",
            "attributes": {"plan": "pro"}})
    );
    assert_eq!(
        records[1].body,
        json!({"type": "person", "identifiers": {"id": "u2"}, "action": "event", "name": "paid",
            "attributes": {"amount": 9}, "timestamp": 1764115200, "id": id.to_string()})
    );
    assert_eq!(records[1].event_id, Some(id.to_string()));
    assert_eq!(
        records[3].body["device"],
        json!({"token": "t", "platform": "android"})
    );
    assert_eq!(records[4].body["device"], json!({"token": "t"}));
    assert_eq!(
        records[8].body,
        json!({"type": "person", "action": "merge", "primary": {"id": "u9"},
            "secondary": {"cio_id": "abc"}})
    );
    assert_eq!(records[8].user.as_deref(), Some("u9"));
}

#[tokio::test]
async fn v2_entity_posts_one_operation() {
    let sb = sandbox().await;
    let c = call(
        "42",
        Operation::Identify(attributes(json!({"plan": "pro"}))),
    );
    client(&sb).entity(&c).await.unwrap();
    let r = only(&sb, "42");
    assert_request(&r, "track_v2", "POST", "/api/v2/entity", "identify");
    assert_eq!(
        r.body,
        json!({"type": "person", "identifiers": {"id": "42"}, "action": "identify",
            "attributes": {"plan": "pro"}})
    );
    assert_eq!(
        client(&sb).encode(&c).size(),
        serde_json::to_vec(&r.body).unwrap().len()
    );
}

#[tokio::test]
async fn a_rejected_user_fails_only_their_operations_of_a_batch() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([("u2".to_string(), 400)]),
        ..Faults::default()
    });
    let calls: Vec<_> = ["u1", "u2", "u3", "u2"]
        .iter()
        .map(|u| call(u, Operation::Identify(attributes(json!({"x": 1})))))
        .collect();
    let results = client(&sb).batch(&calls).await.unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    for failed in [&results[1], &results[3]] {
        let e = failed.as_ref().unwrap_err();
        assert!(matches!(e, CioError::Permanent { status: 400, .. }), "{e}");
        assert!(e.to_string().contains("batch_index"), "{e}");
    }
    let users: Vec<_> = sb
        .sandbox
        .records()
        .into_iter()
        .filter_map(|r| r.user)
        .collect();
    assert_eq!(users, ["u1", "u3"]);
}

#[tokio::test]
async fn a_server_failure_fails_the_whole_batch() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([("u2".to_string(), 503)]),
        ..Faults::default()
    });
    let calls: Vec<_> = ["u1", "u2"]
        .iter()
        .map(|u| call(u, Operation::Delete))
        .collect();
    let e = client(&sb).batch(&calls).await.unwrap_err();
    // A failure across users is the workspace's: the messages wait without spending an attempt.
    assert!(e.is_workspace() && e.status() == Some(503), "{e}");
    assert!(sb.sandbox.records().is_empty());
}

// ---- App API ----

#[tokio::test]
async fn send_email_push_and_sms_post_the_send_bodies() {
    let sb = sandbox().await;
    let cio = client(&sb);
    let email = transactional(json!({"transactional_message_id": 7, "to": "a@example.com",
        "message_data": {"code": "1234"}}));
    let receipt = cio.send(&email, Some(&json!(7))).await.unwrap();
    let push = transactional(json!({"channel": "push", "template": "welcome",
        "identifiers": {"email": "a@example.com"}}));
    cio.send(&push, Some(&json!("welcome-push"))).await.unwrap();
    let sms = transactional(json!({"channel": "sms", "transactional_message_id": "otp",
        "to": "+15551234567"}));
    cio.send(&sms, None).await.unwrap();

    let r = &sb.sandbox.records_for("42")[0];
    assert_request(r, "app", "POST", "/v1/send/email", "send_email");
    assert_eq!(
        r.body,
        json!({"transactional_message_id": 7, "to": "a@example.com", "identifiers": {"id": "42"},
            "message_data": {"code": "1234"}})
    );
    assert_eq!(r.delivery_id.as_deref(), Some(receipt.delivery_id.as_str()));
    assert!(receipt.queued_at > 1_700_000_000, "{receipt:?}");

    let r = only(&sb, "a@example.com");
    assert_request(&r, "app", "POST", "/v1/send/push", "send_push");
    assert_eq!(
        r.body,
        json!({"transactional_message_id": "welcome-push",
            "identifiers": {"email": "a@example.com"}})
    );
    let r = &sb.sandbox.records_for("42")[1];
    assert_request(r, "app", "POST", "/v1/send/sms", "send_sms");
    assert_eq!(r.body["transactional_message_id"], "otp");
}

#[tokio::test]
async fn in_app_and_inbox_messages_post_to_their_own_paths_and_need_a_template() {
    let sb = sandbox().await;
    let cio = client(&sb);
    for (channel, path) in [
        ("in_app", "/v1/send/in_app"),
        ("inbox_message", "/v1/send/inbox_message"),
    ] {
        let send = transactional(
            json!({"channel": channel, "transactional_message_id": "order",
            "message_data": {"order_id": "ORD-1"}}),
        );
        let receipt = cio.send(&send, None).await.unwrap();
        let r = sb.sandbox.records_for("42").pop().unwrap();
        assert_request(&r, "app", "POST", path, &format!("send_{channel}"));
        assert_eq!(
            r.body,
            json!({"transactional_message_id": "order", "identifiers": {"id": "42"},
                "message_data": {"order_id": "ORD-1"}})
        );
        assert_eq!(r.delivery_id.as_deref(), Some(receipt.delivery_id.as_str()));
        // Composed inline, they cannot be sent: the message body is the template's.
        let inline = json!({"channel": channel, "to": "a@example.com",
            "from": "us@example.com", "subject": "Hi", "body": "<p>Hi</p>"});
        let refused = TransactionalRequest::parse(&inline, &user("42")).unwrap_err();
        assert_eq!(refused.field, "transactional_message_id", "{channel}");
    }
}

#[tokio::test]
async fn an_inline_email_has_no_template_id() {
    let sb = sandbox().await;
    let email = transactional(json!({"to": "a@example.com", "from": "us@example.com",
        "subject": "Hi", "body": "<p>Hi</p>"}));
    client(&sb).send(&email, None).await.unwrap();
    let r = only(&sb, "42");
    assert!(r.body.get("transactional_message_id").is_none(), "{r:?}");
    assert_eq!(r.body["subject"], "Hi");
}

// ---- credentials ----

#[tokio::test]
async fn wrong_credentials_pause_delivery_with_401s() {
    let sb = sandbox::spawn(SandboxConfig {
        site_id: "site-9".into(),
        api_key: "key-9".into(),
        app_api_key: "app-9".into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    // The sandbox defaults are now wrong.
    let wrong = client(&sb);
    let e = wrong.delete(&user("42")).await.unwrap_err();
    // Refused credentials are the workspace's failure, not the message's.
    assert!(e.is_workspace() && e.status() == Some(401), "{e}");
    let email = transactional(json!({"transactional_message_id": 1, "to": "a@b.co"}));
    let e = wrong.send(&email, None).await.unwrap_err();
    assert!(e.is_workspace() && e.status() == Some(401), "{e}");

    let right = CustomerIo::new(&CustomerIoSettings {
        site_id: Some(Secret::new("site-9")),
        api_key: Some(Secret::new("key-9")),
        app_api_key: Some(Secret::new("app-9")),
        ..settings(&sb)
    })
    .unwrap();
    right.delete(&user("42")).await.unwrap();
    right.send(&email, None).await.unwrap();
    assert_eq!(sb.sandbox.records().len(), 2);
    assert_eq!(sb.sandbox.stats().unauthorized, 2);
}

/// A 3xx means the wrong region: it is not followed (that would drop `Authorization` or turn
/// the POST into a GET), and it is the workspace's failure, which pauses like a 401.
#[tokio::test]
async fn a_redirect_is_the_wrong_region_and_is_not_followed() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        redirect_status: Some(308),
        ..Faults::default()
    });
    let c = client(&sb);
    let e = c.delete(&user("42")).await.unwrap_err();
    assert!(e.is_workspace() && e.status() == Some(308), "{e}");
    assert!(e.to_string().contains("wrong region"), "{e}");
    assert_eq!(
        sb.sandbox.stats().requests,
        1,
        "the redirect was not followed"
    );
    let email = transactional(json!({"transactional_message_id": 1, "to": "a@b.co"}));
    let e = c.send(&email, None).await.unwrap_err();
    assert!(
        e.is_workspace() && e.to_string().contains("wrong region"),
        "{e}"
    );
    assert!(sb.sandbox.records().is_empty(), "nothing applied");

    sb.sandbox.set_faults(Faults::default());
    c.delete(&user("42")).await.unwrap();
    assert_eq!(
        sb.sandbox.records().len(),
        1,
        "delivered once the region is right"
    );
}

/// A request cancelled while it waits for the open circuit (its shard lost the partition) is
/// answered at once as the workspace's (no attempt spent), and never sent.
#[tokio::test]
async fn a_request_cancelled_while_it_waits_is_never_sent() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        outage_ms: 60_000,
        outage_status: 401,
        ..Faults::default()
    });
    let c = CustomerIo::new(&CustomerIoSettings {
        circuit_max_backoff_ms: 2000,
        ..settings(&sb)
    })
    .unwrap();
    assert!(c.delete(&user("1")).await.unwrap_err().is_workspace());
    let cancel = tokio_util::sync::CancellationToken::new();
    let waiting = tokio::spawn({
        let (c, cancel) = (c.clone(), cancel.clone());
        async move { cio_gateway::customerio::unless_cancelled(cancel, c.delete(&user("2"))).await }
    });
    cancel.cancel();
    let answered = tokio::time::timeout(Duration::from_millis(400), waiting)
        .await
        .expect("answered before the next probe")
        .unwrap();
    let e = answered.unwrap_err();
    assert!(
        e.is_workspace() && e.to_string().contains("cancelled"),
        "{e}"
    );
    assert_eq!(
        sb.sandbox.stats().requests,
        1,
        "only the first request was sent"
    );
}

#[tokio::test]
async fn settings_are_checked_naming_the_key() {
    let sb = sandbox().await;
    let err = |s: CustomerIoSettings| CustomerIo::new(&s).err().unwrap().to_string();
    assert!(
        err(CustomerIoSettings {
            track_url: None,
            ..settings(&sb)
        })
        .contains("customerio.track_url")
    );
    assert!(
        err(CustomerIoSettings {
            app_url: None,
            ..settings(&sb)
        })
        .contains("customerio.app_url")
    );
    let us = CustomerIoSettings {
        region: Region::Us,
        track_url: None,
        app_url: None,
        ..settings(&sb)
    };
    assert!(err(us.clone()).contains("customerio.site_id"));
    let us = CustomerIo::new(&CustomerIoSettings {
        site_id: Some(Secret::new("s")),
        api_key: Some(Secret::new("k")),
        ..us
    })
    .unwrap();
    assert_eq!(us.urls().track_v2, "https://track.customer.io/api/v2");
    // No App API key outside the sandbox: sends are refused before sending, naming the key.
    let email = transactional(json!({"transactional_message_id": 1, "to": "a@b.co"}));
    let e = us.send(&email, None).await.unwrap_err();
    assert!(e.to_string().contains("customerio.app_api_key"), "{e}");
}

// ---- failure classification ----

#[tokio::test]
async fn statuses_are_classified_for_retry() {
    let sb = sandbox().await;
    // 401 and 429 are the workspace's failures (see the circuit and budget tests).
    let cases = [
        (400, false),
        (404, false),
        (408, true),
        (413, false),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (522, true),
        (524, true),
    ];
    for (status, retryable) in cases {
        sb.sandbox.set_faults(Faults {
            fail_first: 1,
            error_status: status,
            ..Faults::default()
        });
        // A fresh client per case: no circuit state carries over.
        let e = client(&sb).delete(&user("42")).await.unwrap_err();
        assert_eq!(e.status(), Some(status), "{e}");
        assert_eq!(e.is_retryable(), retryable, "{status}: {e}");
        if !retryable {
            let CioError::Permanent { body, .. } = &e else {
                panic!("{e:?}")
            };
            assert!(body.contains("injected"), "the error body is kept: {body}");
        }
    }
    assert!(sb.sandbox.records().is_empty());
}

#[tokio::test]
async fn retry_after_is_honoured_from_429s_and_5xx() {
    let sb = sandbox().await;
    let cio = client(&sb);
    for status in [429, 503] {
        sb.sandbox.set_faults(Faults {
            fail_first: 1,
            error_status: status,
            retry_after_secs: Some(7),
            ..Faults::default()
        });
        let e = cio.delete(&user("42")).await.unwrap_err();
        assert!(
            e.is_retryable() || (status == 429 && e.is_workspace()),
            "{e}"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "{e}");
    }
    sb.sandbox.set_faults(Faults {
        fail_first: 1,
        error_status: 429,
        retry_after_secs: Some(3600),
        ..Faults::default()
    });
    let e = cio.delete(&user("42")).await.unwrap_err();
    assert_eq!(
        e.retry_after(),
        Some(cio_gateway::retry::MAX_RETRY_AFTER),
        "capped at the gateway's one Retry-After cap"
    );
}

#[tokio::test]
async fn the_sandbox_budget_answers_429_with_retry_after() {
    let sb = sandbox().await;
    sb.sandbox.set_rps(Some(1));
    let cio = client(&sb);
    cio.delete(&user("42")).await.unwrap();
    let e = cio.delete(&user("42")).await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert!(e.is_workspace(), "a 429 pauses the API: {e}");
    assert!(e.retry_after() >= Some(Duration::from_secs(1)), "{e:?}");
}

#[tokio::test]
async fn network_errors_are_retryable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let cio = CustomerIo::new(&CustomerIoSettings {
        region: Region::Sandbox,
        track_url: Some(format!("http://{addr}/api/v1")),
        app_url: Some(format!("http://{addr}/v1")),
        site_id: None,
        api_key: None,
        app_api_key: None,
        track_rps: 100,
        app_rps: 100,
        broadcast_interval_ms: 10,
        timeout_ms: 2000,
        circuit_max_backoff_ms: 200,
        circuit_failure_threshold: 3,
        ..CustomerIoSettings::default()
    })
    .unwrap();
    let e = cio.delete(&user("42")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.status(), None);
    let e = cio
        .send(
            &transactional(json!({"transactional_message_id": 1, "to": "a@b.co"})),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable() && e.status().is_none(), "{e}");
}

#[tokio::test]
async fn a_timeout_is_retryable() {
    let sb = sandbox().await;
    sb.sandbox.set_faults(Faults {
        latency_ms: 600_000,
        ..Faults::default()
    });
    let cio = CustomerIo::new(&CustomerIoSettings {
        timeout_ms: 200,
        circuit_max_backoff_ms: 200,
        circuit_failure_threshold: 3,
        ..settings(&sb)
    })
    .unwrap();
    // The sandbox answers in ten minutes: only the client's timeout ends the call.
    let e = tokio::time::timeout(Duration::from_secs(60), cio.delete(&user("42")))
        .await
        .expect("the client's timeout applies")
        .unwrap_err();
    assert!(e.is_retryable() && e.status().is_none(), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
}

// ---- limits, refused before sending ----

#[tokio::test]
async fn limits_are_refused_before_sending() {
    let sb = sandbox().await;
    let cio = client(&sb);
    let invalid = |r: Result<(), CioError>| matches!(r, Err(CioError::Invalid(_)));

    // Event data over the documented 100000 bytes (built directly: the domain parser already
    // refuses it, the client must too).
    let mut blob = Map::new();
    blob.insert("blob".into(), json!("x".repeat(100_001)));
    let big = Event {
        name: EventName::parse("big").unwrap(),
        data: Attributes::from_map(blob),
        timestamp: None,
    };
    assert!(invalid(cio.track(&user("42"), &big, None).await));
    // More than 300 attributes in one identify.
    let many: Map<String, Value> = (0..301).map(|i| (format!("a{i}"), json!(i))).collect();
    assert!(invalid(
        cio.identify(&user("42"), &Attributes::from_map(many)).await
    ));
    // An attribute value over 1000 bytes.
    let mut long = Attributes::default();
    long.insert("bio", "x".repeat(1001));
    assert!(invalid(cio.identify(&user("42"), &long).await));
    // An identifier over 150 bytes.
    let primary = PersonRef::parse(&json!({"id": "42"})).unwrap();
    let secondary = PersonRef {
        kind: "email",
        value: format!("{}@example.com", "x".repeat(150)),
    };
    assert!(invalid(cio.merge(&user("42"), &primary, &secondary).await));
    // A v2 operation over 32 KB.
    let op = call(
        "42",
        Operation::Track(event(json!({"name": "e",
        "data": {"blob": "x".repeat(33 * 1024)}}))),
    );
    assert!(invalid(cio.entity(&op).await));
    // A path segment that URL parsers resolve away.
    assert!(invalid(cio.delete(&user("..")).await));
    // A send to someone named by an over-long identifier.
    let send = transactional(json!({"transactional_message_id": 1, "to": "a@b.co",
        "identifiers": {"id": "x".repeat(150)}}));
    let mut send_long = send.clone();
    send_long.identifiers.value.push('x');
    assert!(matches!(
        cio.send(&send_long, None).await,
        Err(CioError::Invalid(_))
    ));
    // Push and SMS need a template.
    let mut push = send.clone();
    push.channel = cio_gateway::domain::Channel::Push;
    push.template = cio_gateway::domain::TemplateRef::Inline;
    assert!(matches!(
        cio.send(&push, None).await,
        Err(CioError::Invalid(_))
    ));

    assert_eq!(sb.sandbox.stats().requests, 0, "the sandbox saw nothing");
}

#[tokio::test]
async fn an_oversized_operation_is_left_out_of_its_batch() {
    let sb = sandbox().await;
    let big = call(
        "u2",
        Operation::Track(event(json!({"name": "e",
        "data": {"blob": "x".repeat(33 * 1024)}}))),
    );
    let calls = vec![
        call("u1", Operation::Delete),
        big,
        call("u3", Operation::Delete),
    ];
    let results = client(&sb).batch(&calls).await.unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(
        matches!(results[1], Err(CioError::Invalid(_))),
        "{results:?}"
    );
    let users: Vec<_> = sb
        .sandbox
        .records()
        .into_iter()
        .filter_map(|r| r.user)
        .collect();
    assert_eq!(users, ["u1", "u3"]);
}

#[tokio::test]
async fn a_batch_over_500_kb_is_refused_whole() {
    let sb = sandbox().await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            call(
                &format!("u{i}"),
                Operation::Track(event(
                    json!({"name": "e", "data": {"blob": "x".repeat(30_000)}}),
                )),
            )
        })
        .collect();
    let e = client(&sb).batch(&calls).await.unwrap_err();
    assert!(matches!(e, CioError::Invalid(_)), "{e}");
    assert_eq!(sb.sandbox.stats().requests, 0);
}

// ---- request budget ----

#[tokio::test]
async fn the_track_budget_spaces_requests() {
    let sb = sandbox().await;
    let cio = CustomerIo::new(&CustomerIoSettings {
        track_rps: 5,
        ..settings(&sb)
    })
    .unwrap();
    let started = Instant::now();
    for i in 0..10 {
        // v1 and v2 share the Track budget.
        if i % 2 == 0 {
            cio.delete(&user("42")).await.unwrap();
        } else {
            cio.entity(&call("42", Operation::Delete)).await.unwrap();
        }
    }
    // A burst of 5, then one every 200 ms.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(950),
        "10 requests at 5/s took {elapsed:?}"
    );
    assert_eq!(sb.sandbox.records().len(), 10);
}
