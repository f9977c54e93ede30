//! The shard's correctness (issue 11): a message whose routing key is not its userId is
//! dead-lettered as `invalid`, since partitions follow the routing key and lanes the userId.

mod common;

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

/// Waits until `customerio.dlq` holds exactly one letter, and reads it (left unacked on the
/// returned stream).
async fn the_only_dead_letter(
    broker: &cio_gateway::broker::SharedBroker,
    what: &str,
) -> (serde_json::Value, cio_gateway::broker::DeliveryStream) {
    let dead = eventually_async(Duration::from_secs(10), || {
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
