//! The shard's correctness (issue 11): a message whose routing key is not its userId is
//! dead-lettered as `invalid`, since partitions follow the routing key and lanes the userId; a
//! lane moves on only once its head's outcome is confirmed; a message's failed attempts are
//! counted across reconnects; a redelivered copy is checked against the dedup window when it is
//! dispatched; a panicking attempt is retried.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::app::Gateway;
use cio_gateway::broker::Publish;
use cio_gateway::broker::topology::{DLQ_QUEUE, TRACK_EXCHANGE};
use common::eventually_async;
use futures::StreamExt;
use std::time::Duration;

#[actix_rt::test]
async fn a_routing_key_that_is_not_the_user_id_is_dead_lettered_as_invalid() {
    common::init_test_logging();
    let settings = common::settings(&[
        ("GATEWAY__BROKER__URL", "memory://"),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
    ]);
    let gateway = Gateway::start(settings).await.expect("gateway starts");
    let broker = gateway.broker().clone();
    let body = serde_json::json!({"type": "track", "userId": "alice",
        "correlationId": ulid::Ulid::new().to_string(), "payload": {"name": "step"}});
    broker
        .publish(Publish::new(
            TRACK_EXCHANGE,
            "bob",
            serde_json::to_vec(&body).unwrap(),
        ))
        .await
        .unwrap();
    let (letter, stream) =
        the_only_dead_letter(&broker, "the mismatched message is dead-lettered").await;
    assert_eq!(letter["errorKind"], "invalid", "{letter}");
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("routing key") && error.contains("alice"),
        "{error}"
    );
    let sandbox = gateway.sandbox().expect("local mode sandbox");
    assert!(sandbox.records_for("alice").is_empty(), "nothing sent");
    stream.close().await;
    gateway.shutdown().await;
}

/// A message returned to its queue more than `delivery.max_redeliveries` times without an
/// outcome (as when it kills its consumer each time) is dead-lettered as `exhausted`, naming
/// the count; the user's next message and other users are delivered.
#[actix_rt::test]
async fn a_message_returned_too_often_is_dead_lettered_as_exhausted() {
    use cio_gateway::broker::topology::partition_queue;
    use cio_gateway::broker::{self, Topology};
    use cio_gateway::sandbox::{self, SandboxConfig};
    use lapin::options::{BasicConsumeOptions, BasicNackOptions};

    let vhost = common::TestVhost::new("lanes-redeliveries");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let producer = broker::connect(&vhost.url, Topology::new(1)).await.unwrap();
    let envelope = |seq: u64| {
        let body = serde_json::json!({"type": "track", "userId": "carol",
            "correlationId": ulid::Ulid::new().to_string(),
            "payload": {"name": "step", "data": {"seq": seq}}});
        Publish::new(TRACK_EXCHANGE, "carol", serde_json::to_vec(&body).unwrap())
    };
    producer.publish(envelope(0)).await.unwrap();

    // A consumer that dies with it four times: the broker counts four returns.
    let conn = lapin::Connection::connect(&vhost.url, Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            partition_queue(0).as_str().into(),
            "crashing".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    for _ in 0..4 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivered again")
            .unwrap()
            .unwrap();
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        delivery.acker.nack(requeue).await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    producer.publish(envelope(1)).await.unwrap();

    let vars = [
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", "1".to_string()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".to_string()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
        ("GATEWAY__DELIVERY__MAX_REDELIVERIES", "3".to_string()),
    ];
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gateway = Gateway::start(common::settings(&pairs)).await.unwrap();
    let delivered = common::eventually(Duration::from_secs(20), || {
        !sandbox.sandbox.records_for("carol").is_empty()
    })
    .await;
    assert!(delivered, "the user's next message is delivered");
    let (letter, stream) =
        the_only_dead_letter(&producer, "the message returned too often is dead-lettered").await;
    assert_eq!(letter["errorKind"], "exhausted", "{letter}");
    assert_eq!(letter["payload"]["data"]["seq"], 0, "{letter}");
    let error = letter["error"].as_str().unwrap();
    // Four nacks, and one more return when the crashing consumer's connection closed with the
    // message prefetched again.
    assert!(
        error.contains("returned to its queue") && error.contains("max_redeliveries = 3"),
        "{error}"
    );
    assert!(letter["attempts"].as_u64().unwrap() >= 4, "{letter}");
    let records = sandbox.sandbox.records_for("carol");
    assert_eq!(
        records.len(),
        1,
        "only the next message reached Customer.io"
    );
    stream.close().await;
    gateway.shutdown().await;
    producer.close().await;
}

/// A queue on `customerio.processed` that refuses every message (`x-max-length` 0 with
/// `reject-publish`): while it is bound, the broker nacks every processed event, though the
/// gateway's channels stay up. Deleted by `unblock`.
async fn block_processed_events(vhost: &common::TestVhost) -> lapin::Channel {
    use cio_gateway::broker::topology::PROCESSED_EXCHANGE;
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = lapin::Connection::connect(&vhost.url, Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(BLOCK.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            BLOCK.into(),
            PROCESSED_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
}

const BLOCK: &str = "test.refuse-processed";

/// The processed event of a user's first message is nacked for longer than the gateway retries
/// it: the user's second message must not reach Customer.io before the first is settled (the
/// shard restarts its consumer instead of moving on), and once the broker takes processed
/// events again, both are delivered once, in order, and nothing is dead-lettered.
#[actix_rt::test]
async fn a_lane_waits_until_its_head_is_confirmed() {
    use cio_gateway::publisher::Publisher;
    use cio_gateway::sandbox::{self, SandboxConfig};
    use lapin::options::QueueDeleteOptions;

    let vhost = common::TestVhost::new("lanes-confirm");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let producer = faults::producer(&vhost).await;
    let block = block_processed_events(&vhost).await;
    let env = faults::gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &[]);
    let gateway = faults::start_gateway(&env).await;
    let user = faults::user_name(0);
    let publisher = Publisher::new(producer.clone());
    let sent = faults::publish_users(&publisher, 0..1, 0, 2, |_, _| "track").await;

    let first = common::eventually(Duration::from_secs(20), || {
        !sandbox.sandbox.records_for(&user).is_empty()
    })
    .await;
    assert!(first, "the first message is delivered");
    // Longer than the gateway retries one processed event (about 6 s), so the shard also
    // restarts its consumer while the block holds.
    let overtaken = common::eventually(Duration::from_secs(8), || {
        sandbox.sandbox.records_for(&user).len() > 1
    })
    .await;
    assert!(
        !overtaken,
        "the second message was sent while the first was unsettled: {:?}",
        faults::delivered_seqs(&sandbox.sandbox.records_for(&user))
    );
    block
        .queue_delete(BLOCK.into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    faults::assert_all_processed(&producer, &sent, false, Duration::from_secs(30)).await;
    faults::check_users(&sandbox.sandbox, 0..1, 2);
    assert_eq!(
        faults::depth(&vhost, DLQ_QUEUE).await,
        0,
        "nothing dead-lettered"
    );
    faults::shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}

/// A user whose every request fails with a 500 (retryable), while the broker connection is
/// closed after each of the first two failures: the message is dead-lettered as `exhausted`
/// after exactly `delivery.max_attempts` requests, since the failures of the attempts before
/// each reconnect still count.
#[actix_rt::test]
async fn failed_attempts_are_counted_across_reconnects() {
    use cio_gateway::publisher::Publisher;
    use cio_gateway::sandbox::{self, Faults, SandboxConfig};
    use std::collections::BTreeMap;

    let vhost = common::TestVhost::new("lanes-ledger");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let user = faults::user_name(0);
    sandbox.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([(user.clone(), 500)]),
        // A 2 s floor between attempts: time to close the connection in between.
        retry_after_secs: Some(2),
        ..Faults::default()
    });
    let producer = faults::producer(&vhost).await;
    let extra = [
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "3".to_string()),
        // One user's 500s stay that message's failures: the circuit must not open.
        (
            "GATEWAY__CUSTOMERIO__CIRCUIT_FAILURE_THRESHOLD",
            "1000".to_string(),
        ),
    ];
    let env = faults::gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &extra);
    let gateway = faults::start_gateway(&env).await;
    let publisher = Publisher::new(producer.clone());
    faults::publish_users(&publisher, 0..1, 0, 1, |_, _| "track").await;

    for failures in 1..=2 {
        let failed = common::eventually(Duration::from_secs(20), || {
            sandbox.sandbox.stats().injected_failures >= failures
        })
        .await;
        assert!(failed, "attempt {failures} was made");
        faults::close_connections(&vhost).await;
    }
    let (letter, stream) = the_only_dead_letter_within(
        &producer,
        "the message is dead-lettered",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(letter["errorKind"], "exhausted", "{letter}");
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert_eq!(
        sandbox.sandbox.stats().injected_failures,
        3,
        "exactly max_attempts requests, reconnects or not"
    );
    stream.close().await;
    faults::shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}

/// A delivery attempt that panics (through the test-only fault hook) fails as retryable: the
/// message is sent on its next attempt, in order, nothing is lost or dead-lettered, and the
/// delivering actor keeps serving, so the replica stays ready.
#[actix_rt::test]
async fn a_panicking_attempt_is_retried_and_the_actor_survives() {
    use cio_gateway::actors::panic_guard::panic_next_attempt_of;
    use cio_gateway::publisher::Publisher;
    use cio_gateway::sandbox::{self, SandboxConfig};

    let vhost = common::TestVhost::new("lanes-panic");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let producer = faults::producer(&vhost).await;
    let env = faults::gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &[]);
    let gateway = faults::start_gateway(&env).await;
    // A user no other test of this file uses: the hook is process-wide.
    let users = 7..10;
    panic_next_attempt_of(&faults::user_name(7));
    let publisher = Publisher::new(producer.clone());
    let sent = faults::publish_users(&publisher, users.clone(), 0, 4, |u, seq| {
        faults::mixed_kind(u, seq)
    })
    .await;

    let expected = sent.iter().map(|s| s.correlation_id.clone()).collect();
    let (bodies, counts) = faults::collect(
        &producer,
        faults::TAP,
        &expected,
        faults::correlation_id,
        Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        counts.len(),
        sent.len(),
        "every envelope processed: {counts:?}"
    );
    assert!(counts.values().all(|n| *n == 1), "each once: {counts:?}");
    let first = &sent[0];
    assert_eq!(first.user, faults::user_name(7));
    let retried = bodies
        .iter()
        .find(|b| b["correlationId"] == first.correlation_id.as_str())
        .unwrap();
    assert_eq!(
        retried["attempts"], 2,
        "the panicked attempt counted: {retried}"
    );
    faults::check_users(&sandbox.sandbox, users, 4);
    assert_eq!(
        faults::depth(&vhost, DLQ_QUEUE).await,
        0,
        "nothing dead-lettered"
    );
    let ready = reqwest::get(format!("http://{}/readyz", gateway.addr))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "the actors survived the panic");
    faults::shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}

/// A transactional send still on the wire (the sandbox answers after 3 s) when the connection
/// drops: the broker redelivers the message, and its copy waits behind the old attempt. That
/// attempt succeeds, so the copy is found in the dedup window when it reaches the head of its
/// lane and is settled without a second email.
#[actix_rt::test]
async fn a_redelivered_copy_behind_a_successful_attempt_is_not_sent_again() {
    use cio_gateway::publisher::Publisher;
    use cio_gateway::sandbox::{self, Faults, SandboxConfig};

    let vhost = common::TestVhost::new("lanes-dedup-dispatch");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 3_000,
        ..Faults::default()
    });
    let producer = faults::producer(&vhost).await;
    let env = faults::gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &[]);
    let gateway = faults::start_gateway(&env).await;
    let publisher = Publisher::new(producer.clone());
    let sent = faults::publish_users(&publisher, 20..21, 0, 1, |_, _| "transactional").await;

    let on_the_wire = common::eventually(Duration::from_secs(20), || {
        sandbox.sandbox.stats().requests >= 1
    })
    .await;
    assert!(on_the_wire, "the send reached Customer.io");
    faults::close_connections(&vhost).await;

    faults::assert_all_processed(&producer, &sent, true, Duration::from_secs(30)).await;
    let sends = sandbox.sandbox.records_for(&faults::user_name(20));
    assert_eq!(sends.len(), 1, "one email, not two: {sends:?}");
    assert_eq!(
        sandbox.sandbox.stats().requests,
        1,
        "one request to the App API"
    );
    assert_eq!(
        faults::depth(&vhost, DLQ_QUEUE).await,
        0,
        "nothing dead-lettered"
    );
    faults::shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}

/// Acks are coalesced per channel (one `multiple` ack for the oldest settled deliveries), but a
/// user held by a failing head holds back only their own acks: while every request for them
/// fails with a 500, every other user's messages are delivered and acked, and only the held
/// user's three stay unacked. Once the failures stop, all are delivered in order, none twice,
/// and nothing is dead-lettered.
#[actix_rt::test]
async fn a_held_user_holds_back_no_other_users_acks() {
    use cio_gateway::broker::topology::PARTITION_QUEUE_PREFIX;
    use cio_gateway::publisher::Publisher;
    use cio_gateway::sandbox::{self, Faults, SandboxConfig};
    use std::collections::BTreeMap;

    let vhost = common::TestVhost::new("lanes-acks");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    let held = faults::user_name(30);
    sandbox.sandbox.set_faults(Faults {
        fail_users: BTreeMap::from([(held.clone(), 500)]),
        ..Faults::default()
    });
    let producer = faults::producer(&vhost).await;
    let extra = [
        ("GATEWAY__DELIVERY__TRACK_API", "v1".to_string()),
        (
            "GATEWAY__CUSTOMERIO__CIRCUIT_FAILURE_THRESHOLD",
            "1000000".to_string(),
        ),
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "1000000".to_string()),
    ];
    let env = faults::gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &extra);
    let gateway = faults::start_gateway(&env).await;
    let publisher = Publisher::new(producer.clone());
    let mut sent = faults::publish_users(&publisher, 30..31, 0, 3, |_, _| "track").await;
    sent.extend(faults::publish_users(&publisher, 31..51, 0, 5, faults::mixed_kind).await);

    let others_done = common::eventually(Duration::from_secs(30), || {
        (31..51).all(|u| {
            faults::delivered_seqs(&sandbox.sandbox.records_for(&faults::user_name(u))).len() >= 5
        })
    })
    .await;
    assert!(others_done, "every other user is delivered");
    let partitions = |queues: BTreeMap<String, u64>| -> u64 {
        queues
            .iter()
            .filter(|(name, _)| name.starts_with(PARTITION_QUEUE_PREFIX))
            .map(|(_, n)| n)
            .sum()
    };
    let only_held_unacked = eventually_async(Duration::from_secs(10), || async {
        partitions(faults::list_queues(&vhost, "messages_unacknowledged").await) == 3
    })
    .await;
    let unacked = faults::list_queues(&vhost, "messages_unacknowledged").await;
    assert!(
        only_held_unacked,
        "only the held user's 3 messages stay unacked: {unacked:?}"
    );
    assert_eq!(
        partitions(faults::list_queues(&vhost, "messages_ready").await),
        0,
        "nothing waits in a queue"
    );
    assert!(
        sandbox.sandbox.records_for(&held).is_empty(),
        "the held user got nothing yet"
    );

    sandbox.sandbox.set_faults(Faults::default());
    faults::assert_all_processed(&producer, &sent, false, Duration::from_secs(30)).await;
    let held_repeats = faults::check_users(&sandbox.sandbox, 30..31, 3);
    let other_repeats = faults::check_users(&sandbox.sandbox, 31..51, 5);
    assert_eq!(
        held_repeats.duplicate_events + other_repeats.duplicate_events,
        0,
        "no event sent twice"
    );
    assert_eq!(
        faults::depth(&vhost, DLQ_QUEUE).await,
        0,
        "nothing dead-lettered"
    );
    faults::shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}

/// Waits until `customerio.dlq` holds exactly one letter, and reads it (left unacked on the
/// returned stream).
async fn the_only_dead_letter(
    broker: &cio_gateway::broker::SharedBroker,
    what: &str,
) -> (serde_json::Value, cio_gateway::broker::DeliveryStream) {
    the_only_dead_letter_within(broker, what, Duration::from_secs(10)).await
}

async fn the_only_dead_letter_within(
    broker: &cio_gateway::broker::SharedBroker,
    what: &str,
    timeout: Duration,
) -> (serde_json::Value, cio_gateway::broker::DeliveryStream) {
    let dead = eventually_async(timeout, || {
        let broker = broker.clone();
        async move { broker.queue_len(DLQ_QUEUE).await.unwrap_or(0) == 1 }
    })
    .await;
    assert!(dead, "{what}");
    let mut stream = broker.consume(DLQ_QUEUE, 1).await.unwrap();
    let letter = stream.next().await.unwrap();
    let letter = serde_json::from_slice(&letter.body).unwrap();
    (letter, stream)
}
