//! RabbitMQ through lapin: one connection, a confirm-mode publishing channel, a channel per
//! consumer. When the connection drops, streams end, publishes fail fast, and the next call
//! (or the watchdog) reconnects with backoff and re-declares the topology.

use super::topology::{ExchangeKind, QueueKind, Topology};
use super::{Acker, Broker, BrokerError, Delivery, DeliveryStream, Headers, Publish};
use crate::retry::Backoff;
use crate::telemetry::metric;
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long `close` waits for RabbitMQ's `close-ok`. Past it the connection is dropped (RabbitMQ
/// requeues whatever was unacked when the socket goes), so a shutdown never hangs on it: after
/// forced connection closes, lapin 4.12 was seen waiting for `close-ok` forever.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting (and declaring the topology) may take before it counts as failed: a
/// node still booting can accept the socket and not answer, and the watchdog must try again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publish may wait for its confirm. Far above a healthy broker's milliseconds;
/// past it the message counts as not stored (the caller retries or answers 503), so no caller
/// waits forever on a confirm lost with a dying channel.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Nacks in a row on the publishing channel after which it is replaced by a new one. On a
/// cluster, a channel whose first publish to a quorum queue fell into the leader election after
/// a node was lost was seen (3.10.8) to get a nack for every later publish too; a new channel
/// publishes fine. A few nacks in a row are otherwise rare (a full queue rejecting publishes
/// nacks every channel alike, and a new channel costs one round trip).
const NACKS_BEFORE_REOPEN: u32 = 3;

pub struct AmqpBroker {
    url: String,
    topology: Topology,
    live: Mutex<Option<Live>>,
    connected: AtomicBool,
    closed: AtomicBool,
    /// Publishes nacked in a row on the current publishing channel, and that channel's id
    /// (nacks still arriving on a replaced one are not counted).
    nacks_in_a_row: AtomicU32,
    publisher_id: AtomicU32,
    /// How often the publishing channel was replaced after persistent nacks.
    publisher_reopens: AtomicU64,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Live {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl AmqpBroker {
    /// Connects (failing fast if RabbitMQ is unreachable now), declares the topology and
    /// starts a watchdog that reconnects after a connection loss.
    pub async fn connect(url: &str, topology: Topology) -> Result<Arc<Self>, BrokerError> {
        let broker = Arc::new(Self {
            url: url.to_string(),
            topology,
            live: Mutex::new(None),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            nacks_in_a_row: AtomicU32::new(0),
            publisher_id: AtomicU32::new(0),
            publisher_reopens: AtomicU64::new(0),
        });
        broker.live().await?;
        tokio::spawn(watchdog(Arc::downgrade(&broker)));
        Ok(broker)
    }

    /// The current connection, re-established (and the topology re-declared) if it was lost.
    async fn live(&self) -> Result<Live, BrokerError> {
        let mut guard = self.live.lock().await;
        if self.closed.load(Ordering::Relaxed) {
            return Err(BrokerError::Unavailable("broker closed".into()));
        }
        if let Some(live) = guard.as_ref().filter(|l| l.healthy()) {
            return Ok(live.clone());
        }
        self.set_connected(false);
        let live = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!("no connection within {CONNECT_TIMEOUT:?}"))
            })??;
        *guard = Some(live.clone());
        self.set_connected(true);
        tracing::info!("connected to RabbitMQ");
        Ok(live)
    }

    /// A new connection with the topology declared and a confirm-mode publishing channel.
    async fn open(&self) -> Result<Live, BrokerError> {
        let connection = connect_any(&self.url).await?;
        declare_on(&connection, &self.topology).await?;
        let publisher = publisher_channel(&connection).await?;
        self.publisher_id
            .store(u32::from(publisher.id()), Ordering::Relaxed);
        self.nacks_in_a_row.store(0, Ordering::Relaxed);
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// How often the publishing channel was replaced after [`NACKS_BEFORE_REOPEN`] nacks in a row.
    pub fn publisher_reopens(&self) -> u64 {
        self.publisher_reopens.load(Ordering::Relaxed)
    }

    /// Counts a nack on `used`; after [`NACKS_BEFORE_REOPEN`] in a row, replaces the publishing
    /// channel (unless a concurrent publish already did) and closes the old one.
    async fn note_nack(&self, used: &Channel) {
        if u32::from(used.id()) != self.publisher_id.load(Ordering::Relaxed) {
            return;
        }
        let nacks = self.nacks_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if nacks < NACKS_BEFORE_REOPEN {
            return;
        }
        let mut guard = self.live.lock().await;
        let Some(live) = guard.as_mut() else { return };
        if live.publisher.id() != used.id() || !live.connection.status().connected() {
            return;
        }
        match publisher_channel(&live.connection).await {
            Ok(fresh) => {
                self.publisher_id
                    .store(u32::from(fresh.id()), Ordering::Relaxed);
                let old = std::mem::replace(&mut live.publisher, fresh);
                self.nacks_in_a_row.store(0, Ordering::Relaxed);
                self.publisher_reopens.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::BROKER_PUBLISHER_REOPENED).increment(1);
                tracing::warn!(
                    nacks,
                    "publishes nacked in a row; reopened the publishing channel"
                );
                tokio::spawn(async move {
                    let close = old.close(200, "reopened after nacks".into());
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "reopening the publishing channel failed"),
        }
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        metrics::gauge!(metric::BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }
}

/// How often the watchdog looks at a healthy connection.
const HEALTHY_CHECK: Duration = Duration::from_millis(500);

/// Notices a lost connection even when nothing is publishing, and reconnects with backoff.
async fn watchdog(broker: std::sync::Weak<AmqpBroker>) {
    let mut failures = Backoff::exact(Duration::from_millis(400), Duration::from_secs(5)).streak();
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::time::sleep(wait).await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.closed.load(Ordering::Relaxed) {
            return;
        }
        match broker.live().await {
            Ok(_) => {
                failures.succeeded();
                wait = HEALTHY_CHECK;
            }
            Err(e) => {
                tracing::warn!(error = %e, "RabbitMQ unavailable, retrying");
                wait = failures.failed();
            }
        }
    }
}

/// Connects to the first endpoint that answers: `url` may name several nodes of one cluster,
/// comma-separated, tried in turn (on every reconnect too, so a lost node is skipped).
async fn connect_any(url: &str) -> Result<Connection, BrokerError> {
    let mut failures = Vec::new();
    for endpoint in url.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match Connection::connect(endpoint, ConnectionProperties::default()).await {
            Ok(connection) => return Ok(connection),
            Err(e) => failures.push(format!("{}: {e}", redacted(endpoint))),
        }
    }
    Err(BrokerError::Unavailable(failures.join("; ")))
}

/// An endpoint without its credentials, for error messages.
fn redacted(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<unparsable endpoint>".to_string(),
    }
}

/// A confirm-mode channel for publishing.
async fn publisher_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await.map_err(unavailable)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(channel)
}

fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The broker's own redelivery limit on every quorum queue: far above the gateway's attempt
/// and redelivery caps, so the gateway decides; past it RabbitMQ dead-letters into
/// `customerio.dlq` (at-least-once) instead of dropping, as RabbitMQ 4 does by default (20).
pub const QUORUM_DELIVERY_LIMIT: i32 = 1000;
/// The policy operators apply to queues declared without these arguments by older versions.
pub const QUORUM_POLICY: &str = "customerio-quorum-safety";

fn quorum_safety_args(args: &mut FieldTable) {
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(QUORUM_DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(super::topology::DLQ_EXCHANGE.into()),
    );
    // At-least-once dead-lettering needs reject-publish overflow; there is no length limit.
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
}

async fn declare_on(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    let mut channel = connection.create_channel().await.map_err(unavailable)?;
    let result = declare_all(connection, &mut channel, topology).await;
    let _ = channel.close(200, "declared".into()).await;
    result
}

async fn declare_all(
    connection: &Connection,
    channel: &mut Channel,
    topology: &Topology,
) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::ModulusHash => lapin::ExchangeKind::Custom("x-modulus-hash".into()),
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("unknown exchange type") || text.contains("invalid exchange type")
                {
                    BrokerError::PluginMissing
                } else {
                    BrokerError::Protocol(format!("declaring exchange {}: {text}", exchange.name))
                }
            })?;
    }
    // Queues whose node is down: declared (and bound) again on the next connect.
    let mut unreachable = Vec::new();
    for queue in &topology.queues {
        let mut args = FieldTable::default();
        match queue.kind {
            QueueKind::Quorum { single_active } => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
                if single_active {
                    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                }
                quorum_safety_args(&mut args);
            }
            QueueKind::Classic => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("classic".into()),
                );
            }
        }
        let declared = channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await;
        match declared {
            Ok(_) => {}
            // Declared by an older version with other arguments, which cannot change: use it
            // as it is (the failed declare closed the channel) and say which policy fixes it.
            Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
                tracing::warn!(
                    queue = %queue.name,
                    error = %e,
                    policy = QUORUM_POLICY,
                    "queue exists with older arguments; apply the policy {QUORUM_POLICY} from \
                     deploy/rabbitmq/definitions.json (delivery-limit, dead-letter-exchange)"
                );
                // No policy can add single-active-consumer; RabbitMQ names only the first
                // argument that differs, so say it for every queue that should have it.
                if matches!(
                    queue.kind,
                    QueueKind::Quorum {
                        single_active: true
                    }
                ) {
                    tracing::warn!(
                        queue = %queue.name,
                        "if this queue lacks x-single-active-consumer (customerio.webhooks.actions \
                         declared by a version before it had it), its consumers run side by side \
                         and may apply one person's actions out of order: drain it, delete it and \
                         declare it again (docs/operations.md, \"Webhook actions in order\")"
                    );
                }
                *channel = connection.create_channel().await.map_err(unavailable)?;
                channel
                    .queue_declare(
                        queue.name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        BrokerError::Protocol(format!("declaring queue {}: {e}", queue.name))
                    })?;
            }
            // A classic queue lives on one node of a cluster; while that node is down the
            // queue exists but cannot be declared. Reconnecting to the rest of the cluster must
            // not wait for it (the partitions are quorum queues and keep serving).
            Err(e)
                if queue.kind == QueueKind::Classic
                    && e.to_string().contains("is down or inaccessible") =>
            {
                tracing::warn!(queue = %queue.name, error = %e, "queue's node is down; going on without it");
                unreachable.push(queue.name.as_str());
                *channel = connection.create_channel().await.map_err(unavailable)?;
            }
            Err(e) => {
                return Err(BrokerError::Protocol(format!(
                    "declaring queue {}: {e}",
                    queue.name
                )));
            }
        }
    }
    for b in &topology.exchange_bindings {
        channel
            .exchange_bind(
                b.destination.as_str().into(),
                b.source.as_str().into(),
                b.routing_key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::Protocol(format!("binding {}: {e}", b.source)))?;
    }
    for b in &topology.queue_bindings {
        if unreachable.contains(&b.destination.as_str()) {
            continue;
        }
        channel
            .queue_bind(
                b.destination.as_str().into(),
                b.source.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::Protocol(format!("binding {}: {e}", b.destination)))?;
    }
    Ok(())
}

fn to_field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    table
}

fn from_field_table(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                other => format!("{other:?}"),
            };
            (k.as_str().to_string(), value)
        })
        .collect()
}

/// RabbitMQ's `x-delivery-count`, an integer of whatever width the broker chose.
fn delivery_count(table: Option<&FieldTable>) -> u32 {
    let value = table.and_then(|t| t.inner().get("x-delivery-count"));
    let count = match value {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

fn into_delivery(d: lapin::message::Delivery) -> Delivery {
    Delivery {
        headers: from_field_table(d.properties.headers().as_ref()),
        body: d.data,
        exchange: d.exchange.as_str().to_string(),
        routing_key: d.routing_key.as_str().to_string(),
        redelivered: d.redelivered,
        delivery_count: delivery_count(d.properties.headers().as_ref()),
        acker: Acker::Amqp(d.acker),
    }
}

/// Closes a consumer's channel when its stream is dropped, so RabbitMQ requeues what was
/// not acked right away instead of when the connection dies. RabbitMQ answers `close-ok` only
/// after the queues took the unacked deliveries back, so awaiting the close awaits the requeue.
struct CloseOnDrop(Option<Channel>);

/// Closes a consumer's channel, giving up after [`CLOSE_TIMEOUT`] (the connection is gone then,
/// and RabbitMQ requeues with it).
async fn close_consumer(channel: Channel) {
    let close = channel.close(200, "consumer stopped".into());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

impl super::StreamGuard for CloseOnDrop {
    fn release(&mut self) -> futures::future::BoxFuture<'static, ()> {
        let channel = self.0.take();
        Box::pin(async move {
            if let Some(channel) = channel {
                close_consumer(channel).await;
            }
        })
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(channel) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(close_consumer(channel));
        }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let live = self.live().await?;
        declare_on(&live.connection, topology).await
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        let live = self.live().await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(to_field_table(&message.headers));
        let confirmed = async {
            live.publisher
                .basic_publish(
                    message.exchange.as_str().into(),
                    ShortString::from(message.routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..Default::default()
                    },
                    &message.body,
                    properties,
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(|e| BrokerError::NotConfirmed(e.to_string()))
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .map_err(|_| {
                BrokerError::NotConfirmed(format!("no confirm within {CONFIRM_TIMEOUT:?}"))
            })??;
        if !matches!(confirm, Confirmation::Nack(_)) {
            self.nacks_in_a_row.store(0, Ordering::Relaxed);
        }
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(message.exchange)),
            Confirmation::Nack(_) => {
                self.note_nack(&live.publisher).await;
                Err(BrokerError::NotConfirmed("broker nacked".into()))
            }
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed(
                "confirms not enabled on the channel".into(),
            )),
        }
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        let live = self.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::Protocol(format!("consuming {queue}: {e}")))?;
        // An error item means the channel or connection is gone: end the stream there.
        let stream = consumer
            .take_while(|item| futures::future::ready(item.is_ok()))
            .filter_map(|item| futures::future::ready(item.ok().map(into_delivery)))
            .boxed();
        Ok(DeliveryStream::new(stream, CloseOnDrop(Some(channel))))
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let live = self.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::Protocol(format!("queue {queue}: {e}")))?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared.message_count())
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(live) = self.live.lock().await.take() {
            let close = live.connection.close(200, "shutdown".into());
            if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
                tracing::warn!(
                    timeout = ?CLOSE_TIMEOUT,
                    "RabbitMQ did not confirm closing the connection; dropping it"
                );
            }
        }
        self.set_connected(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that accepts the socket and never speaks AMQP (a node still booting, a black
    /// hole): connecting gives up after CONNECT_TIMEOUT instead of hanging the watchdog.
    #[tokio::test]
    async fn a_silent_peer_fails_the_connection_in_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = std::time::Instant::now();
        let url = format!("amqp://guest:guest@{addr}/%2f");
        let result = AmqpBroker::connect(&url, Topology::new(1)).await;
        assert!(
            matches!(result, Err(BrokerError::Unavailable(_))),
            "{:?}",
            result.err()
        );
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(5));
        silent.abort();
    }
}
