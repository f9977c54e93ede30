//! `broker.partitioner = builtin` on RabbitMQ: the intake queue's active consumer forwards each
//! message to its partition queue. Publishes and the ack that covers them are one transaction
//! (`tx.select` on the consuming channel): until the commit, neither happened, so a router that
//! dies (killed, disconnected) leaves the batch in the intake queue, for the next router to
//! forward once, in order. Transactions and publisher confirms exclude each other on a channel;
//! the commit is the confirm here.

use super::{AmqpBroker, CloseOnDrop, confirm_deadline, subscribe};
use crate::broker::BrokerError;
use crate::broker::partitioner::partition_of;
use crate::broker::topology::{
    HEADER_FORWARDED_EXCHANGE, HEADER_FORWARDED_ROUTING_KEY, partition_queue,
};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Consumer};

/// Set by the queue on a redelivery; the partition queue counts its own.
const DELIVERY_COUNT: &str = "x-delivery-count";

impl AmqpBroker {
    /// Forwards `queue` to `partitions` partitions ([`partition_of`] each routing key), batch
    /// by batch, until the connection
    /// or the channel is lost (the error says which).
    pub(crate) async fn forward_intake(
        &self,
        queue: &str,
        prefetch: u16,
        partitions: u16,
    ) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let open = subscribe(&live.connection, queue, prefetch, true);
        let (channel, mut consumer) = self.answered_in_time(&live, open).await?;
        // Closing the channel rolls back a transaction not committed.
        let _close = CloseOnDrop(Some(channel.clone()));
        let deadline = confirm_deadline(self.options.heartbeat_secs);
        loop {
            let batch = tokio::select! {
                batch = next_batch(&mut consumer, usize::from(prefetch)) => batch?,
                () = live.dead.cancelled() => {
                    return Err(BrokerError::Unavailable("connection considered dead".into()));
                }
            };
            match tokio::time::timeout(deadline, commit(&channel, &batch, partitions)).await {
                Ok(result) => result?,
                Err(_) => {
                    live.declare_dead("a forwarding commit is overdue");
                    return Err(BrokerError::Unavailable(format!(
                        "forwarding not committed within {deadline:?}"
                    )));
                }
            }
        }
    }
}

/// The next delivery, and every one already received behind it (at most `max`).
async fn next_batch(consumer: &mut Consumer, max: usize) -> Result<Vec<Delivery>, BrokerError> {
    let ended = || BrokerError::Unavailable("the intake consumer ended".into());
    let first = consumer
        .next()
        .await
        .ok_or_else(ended)?
        .map_err(|e| BrokerError::amqp("consuming the intake queue", e))?;
    let mut batch = vec![first];
    while batch.len() < max {
        match consumer.next().now_or_never() {
            Some(Some(Ok(delivery))) => batch.push(delivery),
            Some(Some(Err(e))) => return Err(BrokerError::amqp("consuming the intake queue", e)),
            Some(None) => return Err(ended()),
            None => break,
        }
    }
    Ok(batch)
}

/// Publishes each delivery to its partition (named by the producer's routing key, which travels
/// along with the producer's exchange in headers), acks them all, and commits.
async fn commit(channel: &Channel, batch: &[Delivery], partitions: u16) -> Result<(), BrokerError> {
    let failed = |e| BrokerError::amqp("forwarding to a partition", e);
    for delivery in batch {
        let mut headers = FieldTable::default();
        if let Some(table) = delivery.properties.headers() {
            for (name, value) in table.inner() {
                if name.as_str() != DELIVERY_COUNT {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(
            HEADER_FORWARDED_EXCHANGE.into(),
            text(delivery.exchange.as_str()),
        );
        headers.insert(
            HEADER_FORWARDED_ROUTING_KEY.into(),
            text(delivery.routing_key.as_str()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let partition = partition_queue(partition_of(delivery.routing_key.as_str(), partitions));
        channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(partition.as_str()),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .map_err(failed)?;
    }
    if let Some(last) = batch.last() {
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(failed)?;
    }
    channel.tx_commit().await.map_err(failed)
}
