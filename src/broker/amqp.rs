//! RabbitMQ through lapin: one connection, a confirm-mode publishing channel, a channel per
//! consumer. When the connection drops, streams end, publishes fail fast, and the next call
//! (or the watchdog) reconnects with backoff and re-declares the topology.
//!
//! A connection is dead when lapin says so (socket closed, or no frame for two heartbeat
//! intervals) or when a publish's confirm is overdue (two heartbeat intervals): a silently
//! partitioned network closes nothing, so the gateway must notice by itself. A dead connection's
//! consumer streams end at once, so nothing more is delivered from it, and the next call
//! reconnects through the endpoint list, each endpoint bounded by `connect_timeout`.

mod forward;

use super::topology::{
    ExchangeKind, HEADER_FORWARDED_EXCHANGE, HEADER_FORWARDED_ROUTING_KEY, QueueKind, Topology,
};
use super::{
    Acker, Broker, BrokerError, ConnectOptions, Delivery, DeliveryStream, Headers, Publish,
    reply_code,
};
use crate::retry::Backoff;
use crate::telemetry::events;
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long `close` waits for RabbitMQ's `close-ok`. Past it the connection is dropped (RabbitMQ
/// requeues whatever was unacked when the socket goes), so a shutdown never hangs on it: after
/// forced connection closes, lapin 4.12 was seen waiting for `close-ok` forever.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long declaring the topology on a new connection may take before it counts as failed: a
/// node still booting can accept the AMQP handshake and not answer, and the watchdog must try
/// again. (Reaching an endpoint is bounded by `ConnectOptions::connect_timeout`, per endpoint.)
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publish may wait for its confirm with heartbeats off. With heartbeats on it is
/// two heartbeat intervals ([`confirm_deadline`]). Far above a healthy broker's milliseconds;
/// past it the message counts as not stored (the caller retries or answers 503) and the
/// connection as dead, so no caller waits forever on a confirm lost with a dying channel.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a confirm may be overdue before the connection counts as dead: as long as lapin
/// waits for a frame before it gives the connection up (two heartbeat intervals).
fn confirm_deadline(heartbeat_secs: u16) -> Duration {
    if heartbeat_secs == 0 {
        CONFIRM_TIMEOUT
    } else {
        Duration::from_secs(2 * u64::from(heartbeat_secs))
    }
}
/// Nacks in a row on the publishing channel after which it is replaced by a new one. On a
/// cluster, a channel whose first publish to a quorum queue fell into the leader election after
/// a node was lost was seen (3.10.8) to get a nack for every later publish too; a new channel
/// publishes fine. A few nacks in a row are otherwise rare (a full queue rejecting publishes
/// nacks every channel alike, and a new channel costs one round trip).
const NACKS_BEFORE_REOPEN: u32 = 3;

pub struct AmqpBroker {
    url: String,
    topology: Topology,
    options: ConnectOptions,
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
    /// Cancelled once the gateway judged the connection dead (a confirm overdue): its
    /// consumer streams end, and the next call reconnects.
    dead: CancellationToken,
}

impl Live {
    fn healthy(&self) -> bool {
        !self.dead.is_cancelled()
            && self.connection.status().connected()
            && self.publisher.status().connected()
    }

    /// Gives the connection up: ends its streams now, and closes it in the background (on a
    /// partitioned network the close is never answered; the server requeues when it notices).
    fn declare_dead(&self, why: &str) {
        if self.dead.is_cancelled() {
            return;
        }
        events::broker_connection_abandoned(why);
        self.dead.cancel();
        let connection = self.connection.clone();
        tokio::spawn(async move {
            let close = connection.close(320, "gateway: connection considered dead".into());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        });
    }
}

impl AmqpBroker {
    /// [`AmqpBroker::connect_with`] default options.
    pub async fn connect(url: &str, topology: Topology) -> Result<Arc<Self>, BrokerError> {
        Self::connect_with(url, topology, ConnectOptions::default()).await
    }

    /// Connects (failing fast if RabbitMQ is unreachable now), declares the topology and
    /// starts a watchdog that reconnects after a connection loss.
    pub async fn connect_with(
        url: &str,
        topology: Topology,
        options: ConnectOptions,
    ) -> Result<Arc<Self>, BrokerError> {
        let broker = Arc::new(Self {
            url: url.to_string(),
            topology,
            options,
            live: Mutex::new(None),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            nacks_in_a_row: AtomicU32::new(0),
            publisher_id: AtomicU32::new(0),
            publisher_reopens: AtomicU64::new(0),
        });
        broker.live().await?;
        tokio::spawn(watchdog(Arc::downgrade(&broker)));
        if broker.topology.uses_modulus_hash() {
            tokio::spawn(warn_of_khepri_caveat(
                broker.url.clone(),
                broker.options.connect_timeout,
            ));
        }
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
        let live = self.open().await?;
        *guard = Some(live.clone());
        self.set_connected(true);
        tracing::info!("connected to RabbitMQ");
        Ok(live)
    }

    /// A new connection with the topology declared and a confirm-mode publishing channel.
    async fn open(&self) -> Result<Live, BrokerError> {
        let connection = connect_any(&self.url, &self.options).await?;
        let setup = async {
            declare_on(&connection, &self.topology).await?;
            publisher_channel(&connection).await
        };
        let setup = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(format!(
                    "topology not declared within {SETUP_TIMEOUT:?}"
                )))
            });
        let publisher = match setup {
            Ok(publisher) => publisher,
            Err(e) => {
                // A refused declare may leave the connection open (RabbitMQ 4 closes only the
                // channel): close it, not leak it.
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    connection.close(200, "setup failed".into()),
                )
                .await;
                return Err(e);
            }
        };
        self.publisher_id
            .store(u32::from(publisher.id()), Ordering::Relaxed);
        self.nacks_in_a_row.store(0, Ordering::Relaxed);
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
            dead: CancellationToken::new(),
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
                events::publisher_reopened(nacks);
                tokio::spawn(async move {
                    let close = old.close(200, "reopened after nacks".into());
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "reopening the publishing channel failed"),
        }
    }

    /// Runs a request on `live` that RabbitMQ answers at once when healthy; overdue as long as
    /// a confirm, the connection counts as dead.
    async fn answered_in_time<T>(
        &self,
        live: &Live,
        request: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let deadline = confirm_deadline(self.options.heartbeat_secs);
        match tokio::time::timeout(deadline, request).await {
            Ok(result) => result,
            Err(_) => {
                live.declare_dead("a request to RabbitMQ is overdue");
                Err(BrokerError::Unavailable(format!(
                    "RabbitMQ did not answer within {deadline:?}"
                )))
            }
        }
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        events::broker_connected(up);
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

/// Warns at start where the broker's version may move a user's `x-modulus-hash` partition
/// across a node restart (docs/operations.md, "RabbitMQ versions and the partitioner").
async fn warn_of_khepri_caveat(url: String, timeout: Duration) {
    use super::server_version::{KhepriCaveat, khepri_caveat, probe};
    let Some(endpoint) = url.split(',').map(str::trim).find(|e| !e.is_empty()) else {
        return;
    };
    let Some(version) = probe(endpoint, timeout).await else {
        return;
    };
    match khepri_caveat(&version) {
        Some(KhepriCaveat::Affected) => tracing::warn!(
            version,
            "RabbitMQ {version} stores metadata in Khepri by default, where x-modulus-hash can \
             send a user to another partition after a node restart (reordering messages queued \
             before it); fixed in RabbitMQ 4.3.0 (rabbitmq-server PR #15849): upgrade, or run \
             on Mnesia"
        ),
        Some(KhepriCaveat::IfKhepriEnabled) => tracing::info!(
            version,
            "RabbitMQ {version}: if the khepri_db feature flag is enabled, x-modulus-hash can \
             send a user to another partition after a node restart; fixed in RabbitMQ 4.3.0"
        ),
        None => tracing::debug!(version, "RabbitMQ version"),
    }
}

/// Connects to the first endpoint that answers: `url` may name several nodes of one cluster,
/// comma-separated, tried in turn (on every reconnect too, so a lost node is skipped), each
/// for at most `connect_timeout` (a black-holed endpoint neither accepts nor refuses).
async fn connect_any(url: &str, options: &ConnectOptions) -> Result<Connection, BrokerError> {
    let mut failures = Vec::new();
    for endpoint in url.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let uri = match endpoint_uri(endpoint, options.heartbeat_secs) {
            Ok(uri) => uri,
            Err(e) => {
                failures.push(format!("{}: {e}", redacted(endpoint)));
                continue;
            }
        };
        let connect = Connection::connect_uri(uri, ConnectionProperties::default());
        match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => failures.push(format!("{}: {e}", redacted(endpoint))),
            Err(_) => failures.push(format!(
                "{}: no AMQP handshake within {:?}",
                redacted(endpoint),
                options.connect_timeout
            )),
        }
    }
    Err(BrokerError::Unavailable(failures.join("; ")))
}

/// An endpoint's URI, asking for `heartbeat_secs` unless its `?heartbeat=` names a value.
fn endpoint_uri(endpoint: &str, heartbeat_secs: u16) -> Result<AMQPUri, String> {
    let mut uri = AMQPUri::from_str(endpoint)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(heartbeat_secs);
    }
    Ok(uri)
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

/// A new channel consuming `queue` with manual acks and at most `prefetch` unacked
/// deliveries; in transaction mode when `transactional` (the builtin partitioner's forwarding).
async fn subscribe(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
    transactional: bool,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = new_channel(connection).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| BrokerError::amqp("setting the prefetch", e))?;
    if transactional {
        channel
            .tx_select()
            .await
            .map_err(|e| BrokerError::amqp("selecting transactions", e))?;
    }
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::amqp(format!("consuming {queue}"), e))?;
    Ok((channel, consumer))
}

/// A confirm-mode channel for publishing.
async fn publisher_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = new_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| BrokerError::amqp("enabling publisher confirms", e))?;
    Ok(channel)
}

async fn new_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(|e| BrokerError::amqp("opening a channel", e))
}

/// The AMQP reply code a lapin error carries: RabbitMQ's `channel.close` / `connection.close`.
pub(super) fn reply_code_of(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
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
    let mut channel = new_channel(connection).await?;
    let result = declare_all(connection, &mut channel, topology).await;
    let _ = channel.close(200, "declared".into()).await;
    result
}

/// Whether declaring the `x-modulus-hash` exchange `name` failed because the broker has no such
/// exchange type. RabbitMQ 3.x closes the connection with COMMAND_INVALID; 4.x closes the
/// channel with PRECONDITION_FAILED, which also means "declared before with another type", so
/// then the exchange must not exist either (a passive declare answers NOT_FOUND).
async fn modulus_hash_unknown(connection: &Connection, name: &str, error: &lapin::Error) -> bool {
    match reply_code_of(error) {
        Some(reply_code::COMMAND_INVALID) => true,
        Some(reply_code::PRECONDITION_FAILED) => {
            let Ok(channel) = new_channel(connection).await else {
                return false;
            };
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let exists = channel
                .exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Fanout,
                    passive,
                    FieldTable::default(),
                )
                .await;
            match exists {
                Ok(()) => {
                    let _ = channel.close(200, "probed".into()).await;
                    false
                }
                Err(e) => reply_code_of(&e) == Some(reply_code::NOT_FOUND),
            }
        }
        _ => false,
    }
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
        let declared = channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            )
            .await;
        if let Err(e) = declared {
            if exchange.kind == ExchangeKind::ModulusHash
                && modulus_hash_unknown(connection, &exchange.name, &e).await
            {
                return Err(BrokerError::PluginMissing);
            }
            return Err(BrokerError::amqp(
                format!("declaring exchange {}", exchange.name),
                e,
            ));
        }
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
            Err(e) if reply_code_of(&e) == Some(reply_code::PRECONDITION_FAILED) => {
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
                *channel = new_channel(connection).await?;
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
                    .map_err(|e| BrokerError::amqp(format!("declaring queue {}", queue.name), e))?;
            }
            // A classic queue lives on one node of a cluster; while that node is down the
            // queue exists but cannot be declared. Reconnecting to the rest of the cluster must
            // not wait for it (the partitions are quorum queues and keep serving). RabbitMQ
            // answers NOT_FOUND ("home node ... is down or inaccessible").
            Err(e)
                if queue.kind == QueueKind::Classic
                    && reply_code_of(&e) == Some(reply_code::NOT_FOUND) =>
            {
                tracing::warn!(queue = %queue.name, error = %e, "queue's node is down; going on without it");
                unreachable.push(queue.name.as_str());
                *channel = new_channel(connection).await?;
            }
            Err(e) => {
                return Err(BrokerError::amqp(
                    format!("declaring queue {}", queue.name),
                    e,
                ));
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
            .map_err(|e| BrokerError::amqp(format!("binding {}", b.source), e))?;
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
            .map_err(|e| BrokerError::amqp(format!("binding {}", b.destination), e))?;
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
    let headers = from_field_table(d.properties.headers().as_ref());
    // Forwarded from the intake queue (`builtin`): it reads as the producer published it.
    let exchange = headers
        .get(HEADER_FORWARDED_EXCHANGE)
        .cloned()
        .unwrap_or_else(|| d.exchange.as_str().to_string());
    let routing_key = headers
        .get(HEADER_FORWARDED_ROUTING_KEY)
        .cloned()
        .unwrap_or_else(|| d.routing_key.as_str().to_string());
    Delivery {
        body: d.data,
        exchange,
        routing_key,
        redelivered: d.redelivered,
        delivery_count: delivery_count(d.properties.headers().as_ref()),
        headers,
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
                .map_err(|e| BrokerError::amqp("publishing", e))?
                .await
                .map_err(|e| BrokerError::NotConfirmed(e.to_string()))
        };
        let deadline = confirm_deadline(self.options.heartbeat_secs);
        let confirm = match tokio::time::timeout(deadline, confirmed).await {
            Ok(confirm) => confirm?,
            Err(_) => {
                live.declare_dead("a publish confirm is overdue");
                return Err(BrokerError::NotConfirmed(format!(
                    "no confirm within {deadline:?}"
                )));
            }
        };
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
        let subscribing = subscribe(&live.connection, queue, prefetch, false);
        let (channel, consumer) = self.answered_in_time(&live, subscribing).await?;
        // An error item means the channel or connection is gone, and a connection judged dead
        // delivers nothing more: end the stream there.
        let stream = consumer
            .take_while(|item| futures::future::ready(item.is_ok()))
            .filter_map(|item| futures::future::ready(item.ok().map(into_delivery)))
            .take_until(live.dead.clone().cancelled_owned())
            .boxed();
        Ok(DeliveryStream::new(stream, CloseOnDrop(Some(channel))))
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let live = self.live().await?;
        let count = async {
            let channel = new_channel(&live.connection).await?;
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
                .map_err(|e| BrokerError::amqp(format!("queue {queue}"), e))?;
            let _ = channel.close(200, "counted".into()).await;
            Ok(declared.message_count())
        };
        self.answered_in_time(&live, count).await
    }

    async fn forward(
        &self,
        queue: &str,
        prefetch: u16,
        partitions: u16,
    ) -> Result<(), BrokerError> {
        self.forward_intake(queue, prefetch, partitions).await
    }

    fn forwards_intake(&self) -> bool {
        self.topology.has_intake()
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
    /// hole): connecting gives up after the connect timeout instead of hanging the watchdog.
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
        let options = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            ..ConnectOptions::default()
        };
        let started = std::time::Instant::now();
        // Twice the same silent endpoint: each is given up after its own timeout.
        let url = format!("amqp://guest:guest@{addr}/%2f,amqp://guest:guest@{addr}/%2f");
        let result = AmqpBroker::connect_with(&url, Topology::new(1), options).await;
        let Err(BrokerError::Unavailable(why)) = result else {
            panic!("{:?}", result.err());
        };
        assert_eq!(why.matches("no AMQP handshake within").count(), 2, "{why}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        silent.abort();
    }

    #[test]
    fn the_heartbeat_is_asked_for_unless_the_url_names_one() {
        let uri = endpoint_uri("amqp://guest:guest@127.0.0.1:5672/%2f", 10).unwrap();
        assert_eq!(uri.query.heartbeat, Some(10));
        let uri = endpoint_uri("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=3", 10).unwrap();
        assert_eq!(uri.query.heartbeat, Some(3));
        let uri = endpoint_uri("amqp://127.0.0.1:5672/%2f?heartbeat=0", 10).unwrap();
        assert_eq!(uri.query.heartbeat, Some(0), "0 in the URL turns them off");
    }

    #[test]
    fn a_confirm_is_overdue_after_two_heartbeats() {
        assert_eq!(confirm_deadline(10), Duration::from_secs(20));
        assert_eq!(confirm_deadline(0), CONFIRM_TIMEOUT);
    }

    #[test]
    fn reply_codes_come_from_the_protocol_error_not_its_text() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let protocol = |kind: AMQPErrorKind, text: &str| -> lapin::Error {
            lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
        };
        let failed = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "some text",
        );
        assert_eq!(
            reply_code_of(&failed),
            Some(reply_code::PRECONDITION_FAILED)
        );
        let invalid = protocol(
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID),
            "PRECONDITION_FAILED in the text only",
        );
        assert_eq!(reply_code_of(&invalid), Some(reply_code::COMMAND_INVALID));
        let error = BrokerError::amqp("declaring", invalid);
        assert_eq!(error.reply_code(), Some(reply_code::COMMAND_INVALID));
        assert!(
            std::error::Error::source(&error).is_some(),
            "lapin's error is kept as the source"
        );
        let io: lapin::Error = lapin::ErrorKind::MissingHeartbeatError.into();
        assert_eq!(reply_code_of(&io), None);
    }
}
