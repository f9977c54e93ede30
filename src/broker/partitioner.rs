//! How a producer's message reaches its partition queue (`broker.partitioner`).
//!
//! - `modulus-hash`: the three producer exchanges are bound into one `x-modulus-hash` exchange
//!   (plugin `rabbitmq_sharding`, or the core server from the release that carries it), which
//!   picks the partition inside RabbitMQ.
//! - `builtin`: core RabbitMQ only. The producer exchanges feed one single-active-consumer intake
//!   queue; the gateway replica that holds it routes each message to its partition queue by the
//!   same function of the routing key, with a publisher confirm before it acks the intake copy.
//! - `auto` (default): `modulus-hash` where the broker offers it, `builtin` elsewhere.
//!
//! In this version only `modulus-hash` is implemented: `auto` means `modulus-hash` (a broker
//! without the exchange type fails the start with `BrokerError::PluginMissing`), and `builtin`
//! is refused by the configuration check, naming the key.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioner {
    #[default]
    Auto,
    ModulusHash,
    Builtin,
}
