//! The delivery pipeline against the real RabbitMQ and the sandbox (issue 3's "Show").
//!
//! Every test has its own vhost; "Customer.io" is a sandbox on an ephemeral port. Each message
//! carries its position `seq` in its payload, so what the sandbox received tells order and loss.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::broker::Publish;
use cio_gateway::broker::topology::{DLQ_QUEUE, TRACK_EXCHANGE};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, Sandbox, SandboxConfig};
use common::{TestVhost, eventually_async};
use faults::{
    TAP as PROCESSED_TAP, assert_ordered, delivered_seqs, depth, gateway_env, producer,
    publish_range, start_gateway,
};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Publishes `per_user` messages to each of `users` users, interleaved; returns how many.
async fn publish_all(publisher: &Publisher, users: usize, per_user: u32) -> usize {
    publish_range(publisher, users, 0, per_user as u64)
        .await
        .len()
}

/// Waits until the sandbox has every `seq` of every user at least once. (The processed tap is
/// no measure of that after a connection loss: a redelivered message is processed again.)
async fn wait_all_delivered(
    sandbox: &Sandbox,
    users: usize,
    per_user: u64,
    timeout: Duration,
) -> bool {
    common::eventually(timeout, || {
        (0..users).all(|u| {
            let seqs: BTreeSet<u64> = delivered_seqs(&sandbox.records_for(&format!("user-{u}")))
                .into_iter()
                .collect();
            seqs.len() as u64 == per_user
        })
    })
    .await
}

/// Waits until `queue` holds at least `n` messages.
async fn wait_depth(vhost: &TestVhost, queue: &str, n: u64, timeout: Duration) -> bool {
    eventually_async(timeout, || async { depth(vhost, queue).await >= n }).await
}

#[actix_rt::test]
async fn ordered_exactly_once_under_503s_and_429s() {
    let vhost = TestVhost::new("pipeline-faults");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        error_rate: 0.2,
        error_status: 503,
        ..Faults::default()
    });
    // A request budget below what the gateway may send makes the sandbox answer 429s too.
    sandbox.sandbox.set_rps(Some(150));
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &[],
    ))
    .await;

    let (users, per_user) = (200, 50);
    let published = publish_all(&Publisher::new(producer.clone()), users, per_user).await;
    assert_eq!(published, users * per_user as usize);

    let done = wait_depth(
        &vhost,
        PROCESSED_TAP,
        published as u64,
        Duration::from_secs(240),
    )
    .await;
    assert!(
        done,
        "processed {} of {published}",
        depth(&vhost, PROCESSED_TAP).await
    );

    let stats = sandbox.sandbox.stats();
    assert!(
        stats.injected_failures > 0,
        "the sandbox injected no 503: {stats:?}"
    );
    assert!(
        stats.rate_limited > 0,
        "the sandbox answered no 429: {stats:?}"
    );
    for u in 0..users {
        let user = format!("user-{u}");
        let seqs = delivered_seqs(&sandbox.sandbox.records_for(&user));
        // Nothing crashed: every message exactly once, in order.
        assert_eq!(
            seqs,
            (0..per_user as u64).collect::<Vec<_>>(),
            "user {user}"
        );
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    assert_eq!(depth(&vhost, PROCESSED_TAP).await, published as u64);
    gateway.shutdown().await;
    producer.close().await;
}

#[actix_rt::test]
async fn rejected_user_is_dead_lettered_and_others_proceed() {
    let vhost = TestVhost::new("pipeline-rejected");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([("user-0".to_string(), 400)]),
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &[],
    ))
    .await;

    let published = publish_all(&Publisher::new(producer.clone()), 5, 4).await;
    // Unparseable bodies and an unknown template are invalid, and do not stop the gateway.
    producer
        .publish(Publish::new(
            TRACK_EXCHANGE,
            "user-9",
            b"{not json".to_vec(),
        ))
        .await
        .unwrap();
    Publisher::new(producer.clone())
        .publish(json!({"type": "transactional", "userId": "user-9",
            "payload": {"template": "no-such-template"}}))
        .await
        .unwrap();
    let user0 = 4; // every message of user-0 is rejected
    let expected_dead = user0 + 2;
    let settled = eventually_async(Duration::from_secs(60), || async {
        depth(&vhost, DLQ_QUEUE).await == expected_dead
            && depth(&vhost, PROCESSED_TAP).await == (published as u64 - user0)
    })
    .await;
    assert!(
        settled,
        "dlq {} processed {}",
        depth(&vhost, DLQ_QUEUE).await,
        depth(&vhost, PROCESSED_TAP).await
    );
    for u in 1..5 {
        let seqs = delivered_seqs(&sandbox.sandbox.records_for(&format!("user-{u}")));
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }

    // Read the dead letters back: fields and headers of docs/reference.md §5.
    let mut stream = producer.consume(DLQ_QUEUE, 10).await.unwrap();
    let mut kinds = BTreeMap::new();
    for _ in 0..expected_dead {
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["status"], "failed");
        assert!(body["attempts"].is_u64() && body["processingTime"].is_u64());
        assert!(
            d.headers.contains_key("x-original-exchange"),
            "{:?}",
            d.headers
        );
        assert!(d.headers.contains_key("x-original-routing-key"));
        let kind = body["errorKind"].as_str().unwrap().to_string();
        if kind == "invalid" && body.get("raw").is_some() {
            assert_eq!(body["raw"], "{not json");
        }
        if body["payload"]["template"] == "no-such-template" {
            assert!(body["error"].as_str().unwrap().contains("no-such-template"));
        }
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(kinds.get("rejected"), Some(&4));
    assert_eq!(kinds.get("invalid"), Some(&2));
    drop(stream);
    assert!(gateway.state.is_ready(), "the gateway keeps running");
    gateway.shutdown().await;
    producer.close().await;
}

#[actix_rt::test]
async fn recovers_when_rabbitmq_closes_all_connections() {
    let vhost = TestVhost::new("pipeline-reconnect");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Slow enough that the close lands mid-run.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let gateway = start_gateway(&gateway_env(
        &vhost,
        &sandbox.track_url(),
        &sandbox.app_url(),
        &[],
    ))
    .await;
    let (users, per_user) = (50, 20);
    let published = publish_all(&Publisher::new(producer.clone()), users, per_user).await as u64;

    assert!(
        wait_depth(
            &vhost,
            PROCESSED_TAP,
            published / 4,
            Duration::from_secs(60)
        )
        .await
    );
    faults::close_connections(&vhost).await;
    // The test's own connection was closed too; it reconnects like any client.
    producer.close().await;
    let producer = faults::producer(&vhost).await;

    let done = wait_all_delivered(
        &sandbox.sandbox,
        users,
        per_user as u64,
        Duration::from_secs(120),
    )
    .await;
    assert!(
        done,
        "not everything delivered: tap {} of {published}",
        depth(&vhost, PROCESSED_TAP).await
    );
    // Every message was processed at least once (repeats are redeliveries after the close).
    assert!(wait_depth(&vhost, PROCESSED_TAP, published, Duration::from_secs(30)).await);
    for u in 0..users {
        let user = format!("user-{u}");
        assert_ordered(
            &user,
            &delivered_seqs(&sandbox.sandbox.records_for(&user)),
            per_user as u64,
        );
    }
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0);
    assert!(
        common::eventually(Duration::from_secs(10), || gateway.state.is_ready()).await,
        "ready again after reconnecting"
    );
    gateway.shutdown().await;
    producer.close().await;
}
