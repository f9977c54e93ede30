//! Issue 12.6: webhook actions are applied in the order their events arrived, across replicas
//! and through a retry. Two WebhookActors (two "replicas", each with its own connection)
//! consume `customerio.webhooks.actions` on a real RabbitMQ; only one of them is active. A
//! bounce whose suppress fails to publish once, followed by a `customer.subscribed` that lifts
//! the suppression, must reach the pipeline as suppress, then unsuppress: the person ends
//! unsuppressed. Also: a gateway still starts against the actions queue as the previous
//! version declared it (without single-active-consumer).

mod common;

use actix::Actor;
use cio_gateway::actors::WebhookActor;
use cio_gateway::broker::topology::{WEBHOOKS_ACTIONS_QUEUE, WEBHOOKS_EXCHANGE};
use cio_gateway::broker::{self, BrokerError, Publish, SharedBroker, Topology};
use cio_gateway::preferences::{ActionLedger, PostgresStore, SqliteStore};
use cio_gateway::publisher::Publisher;
use common::{ACTION_PATTERNS as PATTERNS, action_rules as rules};
use common::{HookedBroker, TestDb, TestVhost, eventually, eventually_async};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A broker whose first `suppress` publish fails (while `armed`), as a publish RabbitMQ did
/// not confirm would; every other call goes straight through.
fn fail_first_suppress(inner: SharedBroker, armed: Arc<AtomicBool>) -> SharedBroker {
    HookedBroker::new(
        inner,
        Box::new(move |message| {
            let kind = serde_json::from_slice::<Value>(&message.body).ok();
            let suppress = kind.is_some_and(|v| v["type"] == "suppress");
            let fail = suppress && armed.swap(false, Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    return Err(BrokerError::NotConfirmed("test: the first suppress".into()));
                }
                Ok(())
            })
        }),
    )
}

/// `rabbitmqctl list_consumers` of the actions queue: each consumer's activity status
/// (`single_active` / `waiting` on a single-active-consumer queue, `up` otherwise).
fn actions_consumers(vhost: &TestVhost) -> Vec<String> {
    let out = common::rabbitmqctl()
        .args([
            "-q",
            "list_consumers",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "queue_name",
            "activity_status",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let mut statuses: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == WEBHOOKS_ACTIONS_QUEUE).then(|| parts.next().map(str::to_string))?
        })
        .collect();
    statuses.sort();
    statuses
}

fn event(event_id: &str, object_type: &str, metric: &str, person: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": chrono::Utc::now().timestamp(),
        "data": {"customer_id": person, "identifiers": {"id": person}},
    }))
    .unwrap()
}

/// The envelope types queued for `person` in the partition queues, in queue order (what
/// Customer.io receives, in order).
async fn queued_types(broker: &SharedBroker, topology: &Topology, person: &str) -> Vec<String> {
    let queued = common::queued_envelopes(broker, topology, person).await;
    queued
        .iter()
        .map(|body| body["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn partition_depth(broker: &SharedBroker, topology: &Topology) -> u32 {
    let mut total = 0;
    for queue in topology.partition_queues() {
        total += broker.queue_len(&queue).await.unwrap_or(0);
    }
    total
}

#[actix_rt::test]
async fn a_retried_bounce_does_not_undo_a_later_unsuppress() {
    common::init_test_logging();
    let vhost = TestVhost::new("actions-order");
    let topology = Topology::with_action_patterns(2, &PATTERNS);
    let armed = Arc::new(AtomicBool::new(true));
    // The replicas share the action ledger's database, as in production.
    let db = TestDb::new("actions-order");

    // Two replicas: a connection each, consuming the actions queue and publishing through
    // the same kind of faulty publisher (whichever takes the bounce fails once).
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let connection = broker::connect(&vhost.url, topology.clone())
            .await
            .expect("RabbitMQ connects");
        let publisher = Publisher::new(fail_first_suppress(connection.clone(), armed.clone()));
        let ledger: Arc<dyn ActionLedger> =
            Arc::new(PostgresStore::connect(&db.url).await.unwrap());
        WebhookActor::new(connection.clone(), publisher, rules(), ledger).start();
        replicas.push(connection);
    }
    assert!(
        eventually(Duration::from_secs(20), || actions_consumers(&vhost).len()
            == 2)
        .await,
        "both replicas subscribed: {:?}",
        actions_consumers(&vhost)
    );
    assert_eq!(
        actions_consumers(&vhost),
        ["single_active", "waiting"],
        "one replica at a time acts on webhook events"
    );

    let producer = &replicas[0];
    let person = "u-bounced-then-subscribed";
    producer
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "email.bounced",
            event("ev-bounce", "email", "bounced", person),
        ))
        .await
        .unwrap();
    producer
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "customer.subscribed",
            event("ev-subscribed", "customer", "subscribed", person),
        ))
        .await
        .unwrap();

    assert!(
        eventually_async(Duration::from_secs(30), || async {
            partition_depth(producer, &topology).await >= 2
                && producer.queue_len(WEBHOOKS_ACTIONS_QUEUE).await.ok() == Some(0)
        })
        .await,
        "both actions published"
    );
    assert!(
        !armed.load(Ordering::SeqCst),
        "the first suppress failed once"
    );
    let types = queued_types(producer, &topology, person).await;
    assert_eq!(
        types,
        ["suppress", "unsuppress"],
        "the bounce is acted on before the later unsuppress, so the person ends unsuppressed"
    );
    for replica in &replicas {
        replica.close().await;
    }
}

/// The actions queue as the previous version declared it: quorum with the safety arguments,
/// no single-active-consumer. Start-up must not fail on it (the declare falls back to a
/// passive one and warns), and the procedure of docs/operations.md (delete it when empty,
/// `cio-gateway topology`) gives it the argument while a replica keeps running.
#[actix_rt::test]
async fn the_actions_queue_of_the_previous_version_is_used_then_recreated() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    common::init_test_logging();
    let vhost = TestVhost::new("actions-old");
    let conn = lapin::Connection::connect(&vhost.url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1000));
    args.insert("x-dead-letter-exchange".into(), text("customerio.dlq"));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    channel
        .queue_declare(
            WEBHOOKS_ACTIONS_QUEUE.into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await
        .expect("old-style declare");
    let _ = conn.close(200, "done".into()).await;

    let topology = Topology::with_action_patterns(2, &PATTERNS);
    let broker = broker::connect(&vhost.url, topology.clone())
        .await
        .expect("no PRECONDITION_FAILED against the old actions queue");
    // Supervised, as in the gateway (src/actors/reporting.rs): restarted when its
    // subscription ends, while its address is held.
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn ActionLedger> = Arc::new(
        SqliteStore::open(&dir.path().join("preferences.db"))
            .await
            .unwrap(),
    );
    let _actions = {
        let broker = broker.clone();
        actix::Supervisor::start(move |_| {
            WebhookActor::new(
                broker.clone(),
                Publisher::new(broker.clone()),
                rules(),
                ledger,
            )
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || actions_consumers(&vhost)
            == ["up"])
        .await,
        "the old queue is consumed as it is: {:?}",
        actions_consumers(&vhost)
    );

    // Quorum queues refuse `--if-empty`: the procedure checks the depth, then deletes.
    assert_eq!(vhost.queue_depths().get(WEBHOOKS_ACTIONS_QUEUE), Some(&0));
    let deleted = common::rabbitmqctl_async()
        .args(["-q", "delete_queue", "-p", &vhost.name])
        .arg(WEBHOOKS_ACTIONS_QUEUE)
        .output()
        .await
        .unwrap();
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    // The running consumer is cancelled with the queue. Declaring the queue again before
    // RabbitMQ 3.10 has finished deleting a quorum queue can revive its old state (a consumer
    // that never receives); an operator runs the next step seconds later.
    assert!(
        eventually(Duration::from_secs(20), || actions_consumers(&vhost)
            .is_empty())
        .await,
        "the consumer of the deleted queue is cancelled: {:?}",
        actions_consumers(&vhost)
    );
    // What `cio-gateway topology` does.
    broker::connect(&vhost.url, topology.clone())
        .await
        .expect("the topology is declared again")
        .close()
        .await;
    assert!(
        eventually(Duration::from_secs(30), || actions_consumers(&vhost)
            == ["single_active"])
        .await,
        "the running replica subscribed to the recreated queue: {:?}",
        actions_consumers(&vhost)
    );

    // Bound again: a bounce is acted on.
    broker
        .publish(Publish::new(
            WEBHOOKS_EXCHANGE,
            "email.bounced",
            event("ev-after", "email", "bounced", "u-after"),
        ))
        .await
        .unwrap();
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            partition_depth(&broker, &topology).await == 1
        })
        .await,
        "the bounce on the recreated queue was acted on: {:?}, consumers {:?}",
        vhost.queue_depths(),
        actions_consumers(&vhost)
    );
    assert_eq!(
        queued_types(&broker, &topology, "u-after").await,
        ["suppress"]
    );
    broker.close().await;
}
