//! The message broker behind one narrow interface: RabbitMQ (`amqp://`) or in-process (`memory://`).
//!
//! Everything else in the gateway names neither backend: it publishes with confirms, consumes
//! with manual acks, and asks how long a queue is. Dropping a [`DeliveryStream`] returns every
//! delivery it did not ack to its queue, in order — the property "nothing lost" rests on.

mod amqp;
mod memory;
pub mod partitioner;
pub mod router;
pub mod server_version;
pub mod topology;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use amqp::AmqpBroker;
pub use memory::MemoryBroker;
pub use topology::Topology;

pub type Headers = BTreeMap<String, String>;

/// A message to publish; `publish` returns once the broker confirmed it.
#[derive(Debug, Clone)]
pub struct Publish {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    /// Fail (instead of silently dropping) when no queue is bound to receive it.
    pub mandatory: bool,
}

impl Publish {
    pub fn new(exchange: &str, routing_key: &str, body: Vec<u8>) -> Self {
        Self {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            body,
            headers: Headers::new(),
            mandatory: true,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name.to_string(), value.into());
        self
    }

    pub fn optional_route(mut self) -> Self {
        self.mandatory = false;
        self
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    #[error("no queue is bound to receive messages on exchange {0:?}")]
    Unroutable(String),
    #[error(
        "RabbitMQ has no x-modulus-hash exchange type; enable it with: rabbitmq-plugins enable rabbitmq_sharding (RabbitMQ 4.3 and later have it without the plugin)"
    )]
    PluginMissing,
    #[error("broker: {0}")]
    Protocol(String),
    /// RabbitMQ refused an operation, or the connection under it failed. Classified by the AMQP
    /// reply code ([`BrokerError::reply_code`]), never by the text.
    #[error("RabbitMQ: {context}: {source}")]
    Amqp {
        context: String,
        #[source]
        source: lapin::Error,
    },
}

/// AMQP 0-9-1 reply codes the gateway acts on (the spec's constants; RabbitMQ sends them in
/// `channel.close` / `connection.close`).
pub mod reply_code {
    /// `NOT_FOUND`: no such queue or exchange, or (classic queue) its node is down.
    pub const NOT_FOUND: u16 = 404;
    /// `RESOURCE_LOCKED`: e.g. `basic.get` on a single-active-consumer quorum queue.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// `PRECONDITION_FAILED`: declared before with other arguments.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// `COMMAND_INVALID`: e.g. an exchange type the broker does not know.
    pub const COMMAND_INVALID: u16 = 503;
}

impl BrokerError {
    pub(crate) fn amqp(context: impl Into<String>, source: lapin::Error) -> Self {
        Self::Amqp {
            context: context.into(),
            source,
        }
    }

    /// The AMQP reply code RabbitMQ closed the channel or connection with, if it did.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Self::Amqp { source, .. } => amqp::reply_code_of(source),
            _ => None,
        }
    }
}

/// How the gateway connects beyond what the URL says (`broker.*`, docs/reference.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The AMQP heartbeat asked for on endpoints whose URL names none (`?heartbeat=` in the
    /// URL wins). Both sides then declare the peer dead after about two missed beats; 0 turns
    /// heartbeats off (the server's own default then applies).
    pub heartbeat_secs: u16,
    /// How long one endpoint may take to accept and finish the AMQP handshake before the next
    /// is tried: a black-holed endpoint must not hang a reconnect.
    pub connect_timeout: Duration,
    /// How messages reach their partition queue.
    pub partitioner: partitioner::Partitioner,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            heartbeat_secs: 10,
            connect_timeout: Duration::from_secs(5),
            partitioner: partitioner::Partitioner::Auto,
        }
    }
}

impl ConnectOptions {
    /// From the gateway's settings.
    pub fn for_settings(settings: &crate::config::Settings) -> Self {
        Self {
            heartbeat_secs: settings.broker.heartbeat_secs,
            connect_timeout: Duration::from_millis(settings.broker.connect_timeout_ms),
            partitioner: settings.broker.partitioner,
        }
    }
}

/// A message taken from a queue, to be acked once its outcome is durable.
pub struct Delivery {
    pub body: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    pub headers: Headers,
    pub redelivered: bool,
    /// How often the broker returned this message to its queue before this delivery
    /// (RabbitMQ's `x-delivery-count` on quorum queues; 0 the first time).
    pub delivery_count: u32,
    pub acker: Acker,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// How long settling one delivery may take. RabbitMQ does not answer acks, so lapin resolves
/// one as soon as the frame is written, but an ack raced with a channel's death can stay
/// unresolved for good (lapin 4.12 drops its resolver): past this, it counts as failed and the
/// delivery as returned to its queue, which it is when the channel goes.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settles one delivery. Cheap to clone; settling twice or after the stream died is an error,
/// never a panic or a hang.
#[derive(Clone)]
pub enum Acker {
    Amqp(lapin::Acker),
    Memory(memory::MemoryAcker),
}

impl Acker {
    pub async fn ack(&self) -> Result<(), BrokerError> {
        match self {
            Acker::Amqp(a) => {
                settle_within(a.ack(lapin::options::BasicAckOptions::default()), "ack").await
            }
            Acker::Memory(a) => a.ack(),
        }
    }

    /// Acks a channel's oldest unacked deliveries, `ackers` in the order received: with one
    /// `multiple` ack on the last where the broker has it. The caller vouches that no delivery
    /// of the channel before the last is left unacked except these.
    pub async fn ack_oldest(ackers: &[Acker]) -> Result<(), BrokerError> {
        match ackers.last() {
            None => Ok(()),
            Some(Acker::Amqp(last)) => {
                let multiple = lapin::options::BasicAckOptions { multiple: true };
                settle_within(last.ack(multiple), "ack").await
            }
            Some(Acker::Memory(_)) => {
                for acker in ackers {
                    acker.ack().await?;
                }
                Ok(())
            }
        }
    }

    /// Returns the message to its queue for another consumer or a later attempt.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        match self {
            Acker::Amqp(a) => {
                let requeue = lapin::options::BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                settle_within(a.nack(requeue), "requeue").await
            }
            Acker::Memory(a) => a.requeue(),
        }
    }
}

async fn settle_within(
    settle: impl Future<Output = lapin::Result<bool>>,
    what: &str,
) -> Result<(), BrokerError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "{what} not written within {SETTLE_TIMEOUT:?} (channel gone?)"
        ))),
    }
}

/// Deliveries from one queue. Ends when the connection or channel is lost; dropping it returns
/// unacked deliveries to the queue (for RabbitMQ, shortly after: the channel closes in the
/// background). [`DeliveryStream::close`] does the same and returns once they are back.
pub struct DeliveryStream {
    inner: BoxStream<'static, Delivery>,
    guard: Box<dyn StreamGuard>,
}

/// What keeps a consumer alive; released on drop, or explicitly (and awaited) by `close`.
trait StreamGuard: Send + Sync + 'static {
    /// Stops the consumer; the future resolves once its unacked deliveries are requeued.
    fn release(&mut self) -> BoxFuture<'static, ()>;
}

impl DeliveryStream {
    fn new(inner: BoxStream<'static, Delivery>, guard: impl StreamGuard) -> Self {
        Self {
            inner,
            guard: Box::new(guard),
        }
    }

    /// Stops consuming and waits until every delivery not acked is back in its queue, so a
    /// `queue_len` or a new consumer right after sees them. Acking after this is an error.
    pub async fn close(self) {
        let Self { inner, mut guard } = self;
        let released = guard.release();
        drop(guard);
        drop(inner);
        released.await;
    }
}

impl futures::Stream for DeliveryStream {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares exchanges, queues and bindings; idempotent.
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError>;
    /// Publishes persistently and waits for the broker's confirm.
    async fn publish(&self, message: Publish) -> Result<(), BrokerError>;
    /// Consumes with manual acks and at most `prefetch` unacked deliveries.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError>;
    /// `broker.partitioner = builtin`: consumes `queue` and forwards each delivery to its
    /// partition queue (of `partitions`, by its routing key), so that a delivery is in one of the two,
    /// never both or neither. Runs until the connection or channel is lost.
    async fn forward(
        &self,
        queue: &str,
        _prefetch: u16,
        _partitions: u16,
    ) -> Result<(), BrokerError> {
        Err(BrokerError::Protocol(format!(
            "{queue}: this broker routes to its partitions itself"
        )))
    }
    /// Whether the gateway must forward the intake queue to the partitions ([`Broker::forward`]).
    fn forwards_intake(&self) -> bool {
        false
    }
    /// Messages ready in a queue (not counting unacked ones).
    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError>;
    /// Whether the broker is reachable right now (readiness).
    fn is_connected(&self) -> bool;
    /// For a broker whose queues die with the process (local mode's in-process broker): what
    /// each queue still holds, ready or unacked, so shutdown can drain it first. `None` for a
    /// broker that keeps its queues (RabbitMQ): what is left there is redelivered later.
    fn volatile_backlog(&self) -> Option<Vec<QueueBacklog>> {
        None
    }
    /// Closes connections; unacked deliveries return to their queues.
    async fn close(&self);
}

pub type SharedBroker = Arc<dyn Broker>;

/// What one queue holds: messages waiting, and messages delivered but not yet settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBacklog {
    pub queue: String,
    pub ready: u64,
    pub unacked: u64,
}

impl QueueBacklog {
    pub fn total(&self) -> u64 {
        self.ready + self.unacked
    }
}

/// Connects to the broker named by `url` and declares the topology, with default options.
pub async fn connect(url: &str, topology: Topology) -> Result<SharedBroker, BrokerError> {
    connect_with(url, topology, &ConnectOptions::default()).await
}

/// Connects to the broker named by `url` and declares the topology.
pub async fn connect_with(
    url: &str,
    topology: Topology,
    options: &ConnectOptions,
) -> Result<SharedBroker, BrokerError> {
    if url == "memory://" {
        let broker = MemoryBroker::new();
        broker.declare(&topology).await?;
        Ok(Arc::new(broker))
    } else {
        match AmqpBroker::connect_with(url, topology.clone(), options.clone()).await {
            // `auto`: a broker without `x-modulus-hash` gets the partitioner that needs nothing
            // but core RabbitMQ.
            Err(BrokerError::PluginMissing)
                if options.partitioner == partitioner::Partitioner::Auto
                    && topology.uses_modulus_hash() =>
            {
                tracing::warn!(
                    "RabbitMQ has no x-modulus-hash exchange type: the gateway partitions (broker.partitioner = builtin)"
                );
                let builtin = topology.routed_by_gateway();
                Ok(AmqpBroker::connect_with(url, builtin, options.clone()).await?)
            }
            connected => Ok(connected?),
        }
    }
}
