//! RabbitMQ restarted mid-stream (`rabbitmqctl stop_app`, then `start_app`): the gateway's
//! reconnect watchdog and its supervised consumers come back on their own, and every envelope
//! — published before the restart or after it — is delivered, in order per user.
//!
//! The users who still have messages queued at the restart get more after it: their order
//! holds only if the partitioner sends them to the same partition after the boot. (With an
//! `x-consistent-hash` partitioner this test failed: RabbitMQ rebuilds its ring at boot in
//! binding-recovery order, and a user's newer messages raced the queued ones from another
//! partition.)
//!
//! Stopping RabbitMQ affects every test on the machine, and cargo runs test binaries one after
//! another, so this binary holds exactly this one test. A drop guard starts RabbitMQ again (and
//! waits for it) however the test ends, panics included.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::broker::topology::DLQ_QUEUE;
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually};
use faults::{
    assert_all_processed, check_users, depth, gateway_env, mixed_kind, producer, publish_range,
    publish_users, shutdown_within, start_gateway,
};
use std::time::{Duration, Instant};

/// Runs `rabbitmqctl start_app` and `await_startup` on drop, unless the test already did.
struct RestartOnDrop {
    started: bool,
}

impl RestartOnDrop {
    /// Stops the RabbitMQ application (the Erlang VM stays up); the guard restarts it.
    async fn stop_app() -> Self {
        let guard = Self { started: false };
        rabbitmqctl(&["stop_app"]).await;
        guard
    }

    async fn start_app(&mut self) {
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup", "--timeout", "120"]).await;
        self.started = true;
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.started {
            return;
        }
        eprintln!("restarting RabbitMQ after a failed test");
        for args in [
            &["start_app"][..],
            &["await_startup", "--timeout", "120"][..],
        ] {
            match common::rabbitmqctl().args(args).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "rabbitmqctl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("rabbitmqctl {args:?} did not run: {e}"),
            }
        }
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let out = crate::common::rabbitmqctl_async()
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn gateway_recovers_from_a_rabbitmq_restart_mid_stream() {
    let started = Instant::now();
    let vhost = TestVhost::new("faults-restart");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Slow enough that the restart lands mid-run.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 100,
        ..Faults::default()
    });
    let producer = producer(&vhost).await;
    let env = gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &[]);
    let gateway = start_gateway(&env).await;
    let publisher = Publisher::new(producer.clone());

    let (users, before, after) = (50, 40u64, 10u64);
    let mut sent = publish_range(&publisher, users, 0, before).await;
    let first_part = sent.len() as u64;
    let midway = eventually(Duration::from_secs(60), || {
        sandbox.sandbox.stats().accepted_ops >= first_part / 4
    })
    .await;
    assert!(midway, "{:?}", sandbox.sandbox.stats());

    // RabbitMQ goes away: every connection is closed, nothing can be published or acked.
    let mut restart = RestartOnDrop::stop_app().await;
    let stopped = Instant::now();
    let at_stop = sandbox.sandbox.stats().accepted_ops;
    assert!(at_stop < first_part, "the restart must land mid-run");
    let noticed = eventually(Duration::from_secs(30), || !gateway.state.is_ready()).await;
    assert!(
        noticed,
        "the gateway reports not ready while RabbitMQ is down"
    );
    restart.start_app().await;
    let down_for = stopped.elapsed();

    // The watchdog reconnects and the consumers come back without help.
    let ready = eventually(Duration::from_secs(60), || gateway.state.is_ready()).await;
    assert!(ready, "the gateway is ready again after RabbitMQ came back");
    let recovered_in = stopped.elapsed();
    // Producers publish again (their connection reconnects too), to the same users, whose
    // earlier messages are still queued.
    sent.extend(publish_users(&publisher, 0..users, before, before + after, mixed_kind).await);

    // Acks lost with the connection make a few processed events repeat; none is missing.
    let repeated = assert_all_processed(&producer, &sent, false, Duration::from_secs(180)).await;
    let repeats = check_users(&sandbox.sandbox, 0..users, before + after);
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "nothing dead-lettered");
    eprintln!(
        "broker restart: {} envelopes, RabbitMQ down {down_for:.1?}, gateway ready again \
         {recovered_in:.1?} after the stop, {repeated} processed events repeated, {repeats:?}, \
         {:.1?} in all",
        sent.len(),
        started.elapsed()
    );
    shutdown_within(gateway, Duration::from_secs(15)).await;
    producer.close().await;
}
