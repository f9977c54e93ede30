//! The broker never drops a message on its own (RabbitMQ 4 quorum queues default to a delivery
//! limit of 20 and drop past it when no dead-letter exchange is set), and a gateway starts
//! against queues an older version declared with other arguments.
//!
//! Runs against the host's RabbitMQ 3.10 and, from `scripts/test.sh`, against RabbitMQ 4.0
//! (`CIO_TEST_AMQP_PORT`, `CIO_TEST_RABBITMQCTL`; see tests/common).

mod common;

use cio_gateway::broker::topology::partition_queue;
use cio_gateway::broker::{self, Topology};
use common::TestVhost;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use std::time::Duration;

async fn connection(vhost: &TestVhost) -> Connection {
    Connection::connect(&vhost.url, ConnectionProperties::default())
        .await
        .expect("test connection")
}

/// A partition queue as the previous version declared it: quorum, single-active-consumer,
/// nothing else.
async fn declare_like_the_previous_version(vhost: &TestVhost, queue: &str) {
    let conn = connection(vhost).await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .expect("old-style declare");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn starts_against_queues_declared_by_the_previous_version() {
    let vhost = TestVhost::new("quorum-old");
    let old = partition_queue(0);
    declare_like_the_previous_version(&vhost, &old).await;

    let broker = broker::connect(&vhost.url, Topology::new(2))
        .await
        .expect("no PRECONDITION_FAILED against older queue arguments");
    // The old queue is usable as it is: the gateway consumes it.
    let stream = broker
        .consume(&old, 10)
        .await
        .expect("consumes the old queue");
    stream.close().await;
    broker.close().await;
}

/// The definitions file's policy covers every quorum queue the gateway declares, so an
/// existing deployment whose queues predate the arguments gets the same limit.
#[tokio::test]
async fn the_shipped_policy_covers_every_quorum_queue() {
    let vhost = TestVhost::new("quorum-policy");
    let file: Value = serde_json::from_str(include_str!("../deploy/rabbitmq/definitions.json"))
        .expect("definitions.json is JSON");
    let policy = &file["policies"][0];
    let status = common::rabbitmqctl()
        .args([
            "-q",
            "set_policy",
            "-p",
            &vhost.name,
            "--apply-to",
            policy["apply-to"].as_str().unwrap(),
            policy["name"].as_str().unwrap(),
            policy["pattern"].as_str().unwrap(),
            &policy["definition"].to_string(),
        ])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "set_policy failed");
    let topology = Topology::new(8);
    let broker = broker::connect(&vhost.url, topology.clone()).await.unwrap();
    let out = common::rabbitmqctl()
        .args([
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "name",
            "policy",
            "type",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.last() == Some(&"quorum") {
            assert_eq!(
                cols.get(1).copied(),
                policy["name"].as_str(),
                "policy must apply to quorum queue {}",
                cols[0]
            );
        }
    }
    assert!(listing.contains("customerio.partition.7"), "{listing}");
    broker.close().await;
}

/// Redelivered 25 times (past RabbitMQ 4's default limit of 20), a message is still there.
#[tokio::test]
async fn a_message_redelivered_past_twenty_times_is_not_dropped() {
    let vhost = TestVhost::new("quorum-redeliver");
    let broker = broker::connect(&vhost.url, Topology::new(2)).await.unwrap();
    let queue = partition_queue(1);
    let conn = connection(&vhost).await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{\"keep\":\"me\"}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "redeliverer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..25 {
        let delivery = next_delivery(&mut consumer).await;
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    let last = next_delivery(&mut consumer).await;
    assert_eq!(last.data, b"{\"keep\":\"me\"}");
    last.acker.ack(Default::default()).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    broker.close().await;
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message came back")
        .expect("stream open")
        .expect("delivery")
}

/// `broker.url` may name several nodes of one cluster: a dead first endpoint is skipped.
#[tokio::test]
async fn several_endpoints_are_tried_in_turn() {
    let vhost = TestVhost::new("endpoints");
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let url = format!("{dead},{}", vhost.url);
    let broker = broker::connect(&url, Topology::new(1))
        .await
        .expect("the second endpoint answers");
    assert!(broker.is_connected());
    broker.close().await;
    let err = broker::connect(dead, Topology::new(1)).await.err().unwrap();
    assert!(
        !err.to_string().contains("guest:guest"),
        "credentials stay out: {err}"
    );
}
