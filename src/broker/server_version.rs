//! Which RabbitMQ the gateway talks to, for the one known hazard of its partitioner: under the
//! Khepri metadata store, `x-modulus-hash` picked its destination from an unordered table, so a
//! user's partition could change across a node restart and messages already queued could be
//! overtaken (fixed by rabbitmq-server PR #15849, in RabbitMQ 4.3.0, which also moved the
//! exchange type into the core server). Khepri is the default store for new deployments from
//! 4.2.0 (4.2.0 release notes), opt-in (feature flag `khepri_db`) on 3.13 to 4.1.
//!
//! lapin does not expose the server's `connection.start` properties, so the version is read
//! from a handshake of its own: the protocol header, then the server's first frame.

use lapin::types::{AMQPValue, parsing::parse_field_table};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the version means for `x-modulus-hash`, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum KhepriCaveat {
    /// Khepri by default and the fix not in: 4.2.x.
    Affected,
    /// Affected only where the `khepri_db` feature flag was enabled: 3.13 to 4.1.
    IfKhepriEnabled,
}

/// The caveat for a RabbitMQ version string such as `4.2.3` (None: not affected, or unparsable).
pub fn khepri_caveat(version: &str) -> Option<KhepriCaveat> {
    let mut parts = version.split(['.', '-', '+']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    match (major, minor) {
        (4, 2) => Some(KhepriCaveat::Affected),
        (3, 13) | (4, 0) | (4, 1) => Some(KhepriCaveat::IfKhepriEnabled),
        _ => None,
    }
}

/// The `version` server property of the RabbitMQ at `endpoint` (plain `amqp://` only).
pub async fn probe(endpoint: &str, timeout: Duration) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    if url.scheme() != "amqp" {
        return None;
    }
    let address = format!("{}:{}", url.host_str()?, url.port().unwrap_or(5672));
    tokio::time::timeout(timeout, read_version(&address))
        .await
        .ok()
        .flatten()
}

async fn read_version(address: &str) -> Option<String> {
    let mut socket = tokio::net::TcpStream::connect(address).await.ok()?;
    socket.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
    // A method frame: type 1, channel (2 bytes), payload size (4 bytes), payload, frame end.
    let mut header = [0u8; 7];
    socket.read_exact(&mut header).await.ok()?;
    let size = u32::from_be_bytes(header[3..7].try_into().ok()?) as usize;
    if header[0] != 1 || size > 1 << 20 {
        return None;
    }
    let mut payload = vec![0u8; size];
    socket.read_exact(&mut payload).await.ok()?;
    // connection.start (class 10, method 10), version-major, version-minor, server-properties.
    if payload.get(0..4)? != [0, 10, 0, 10] {
        return None;
    }
    let (_, properties) = parse_field_table(payload.get(6..)?).ok()?;
    match properties.inner().get("version")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_versions_with_khepri_and_without_the_fix_are_flagged() {
        assert_eq!(khepri_caveat("4.2.3"), Some(KhepriCaveat::Affected));
        assert_eq!(khepri_caveat("4.0.5"), Some(KhepriCaveat::IfKhepriEnabled));
        assert_eq!(khepri_caveat("3.13.7"), Some(KhepriCaveat::IfKhepriEnabled));
        assert_eq!(khepri_caveat("3.10.8"), None);
        assert_eq!(khepri_caveat("4.3.0"), None);
        assert_eq!(khepri_caveat("4.3.0-rc.1"), None);
        assert_eq!(khepri_caveat("garbage"), None);
    }
}
