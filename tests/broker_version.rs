//! The broker's version, read from its `connection.start` (for the Khepri caveat warning of
//! `x-modulus-hash`): the same version `rabbitmqctl version` reports.

mod common;

use cio_gateway::broker::server_version::probe;
use std::time::Duration;

#[tokio::test]
async fn the_version_is_read_from_the_handshake() {
    let url = format!("amqp://guest:guest@{}/%2f", common::amqp_host());
    let version = probe(&url, Duration::from_secs(5))
        .await
        .expect("a version from connection.start");
    let out = common::rabbitmqctl_async()
        .args(["-q", "version"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    let expected = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(version, expected);
}
