//! How a producer's message reaches its partition queue (`broker.partitioner`).
//!
//! - `modulus-hash`: the three producer exchanges are bound into one `x-modulus-hash` exchange
//!   (plugin `rabbitmq_sharding`, or the core server from the release that carries it), which
//!   picks the partition inside RabbitMQ.
//! - `builtin`: core RabbitMQ only. The producer exchanges feed one single-active-consumer intake
//!   queue (`customerio.intake`); the replica that is its active consumer forwards each message
//!   to its partition queue, [`partition_of`] its routing key. Forward and ack are one AMQP
//!   transaction: a router that dies before the commit leaves the message in the intake queue
//!   and nowhere else, so the next router forwards it once, in its place in the order.
//! - `auto` (default): `modulus-hash` where the broker offers it, `builtin` elsewhere.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioner {
    #[default]
    Auto,
    ModulusHash,
    Builtin,
}

/// The partition of a routing key in `builtin` mode: CRC-32 of its bytes modulo the count, a
/// function fixed by its specification, so every gateway version and replica agrees on it.
pub fn partition_of(routing_key: &str, partitions: u16) -> u16 {
    (crc32fast::hash(routing_key.as_bytes()) % u32::from(partitions.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_partition_and_keys_spread() {
        // CRC-32 (IEEE) of "42" is 0x3224B088: fixed, whatever the platform or version.
        assert_eq!(crc32fast::hash(b"42"), 0x3224_B088);
        assert_eq!(partition_of("42", 8), (0x3224_B088u32 % 8) as u16);
        let mut seen = [0u32; 8];
        for n in 0..8000 {
            seen[usize::from(partition_of(&format!("user-{n}"), 8))] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(partition_of("x", 1), 0);
    }
}
