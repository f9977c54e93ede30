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
    let dead = eventually_async(Duration::from_secs(10), || {
        let broker = broker.clone();
        async move { broker.queue_len(DLQ_QUEUE).await.unwrap_or(0) == 1 }
    })
    .await;
    assert!(dead, "the mismatched message is dead-lettered");
    let mut stream = broker.consume(DLQ_QUEUE, 1).await.unwrap();
    let letter = stream.next().await.unwrap();
    let letter: serde_json::Value = serde_json::from_slice(&letter.body).unwrap();
    assert_eq!(letter["errorKind"], "invalid", "{letter}");
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("routing key") && error.contains("alice"),
        "{error}"
    );
    let sandbox = gateway.sandbox().expect("local mode sandbox");
    assert!(sandbox.records_for("alice").is_empty(), "nothing sent");
    drop(stream);
    gateway.shutdown().await;
}
