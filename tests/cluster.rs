//! A three-node RabbitMQ cluster, and one node lost (issue 11.6).
//!
//! `a_lost_node_loses_nothing_and_both_replicas_keep_serving` runs on the cluster of
//! `scripts/rabbitmq-cluster.sh` (nodes c1-c3 on 5681-5683) and only with `CIO_TEST_CLUSTER=1`
//! (scripts/test.sh starts the cluster and sets it). Two gateway processes and the test's
//! producer list all three nodes; the node leading most partition queues is killed with
//! SIGKILL under load, the rest of the cluster must go on serving, then the node comes back.
//!
//! `persistent_nacks_reopen_the_publishing_channel` needs only the broker under test.

mod common;
#[path = "common/faults.rs"]
mod faults;

use cio_gateway::broker::topology::{
    BindingSpec, DLQ_QUEUE, PROCESSED_EXCHANGE, QueueKind, QueueSpec, partition_queue,
};
use cio_gateway::broker::{self, AmqpBroker, Broker, BrokerError, Publish, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, Faults, SandboxConfig};
use common::{TestVhost, eventually, eventually_async};
use faults::{
    ChildGateway, PARTITIONS, Sent, TAP, assert_all_processed, assert_ordered,
    assert_repeats_are_harmless, depth, envelope_of, gateway_env, user_name,
};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const NODES: [(&str, u16); 3] = [("c1", 5681), ("c2", 5682), ("c3", 5683)];

fn cluster_script() -> String {
    format!("{}/scripts/rabbitmq-cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/rabbitmq-cluster.sh ARGS`, without blocking the runtime; its stdout, trimmed.
async fn cluster(args: &[&str]) -> String {
    let out = tokio::process::Command::new("bash")
        .arg(cluster_script())
        .args(args)
        .output()
        .await
        .expect("the cluster script runs");
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A killed node, started again (and awaited until it rejoined) when dropped, however the test
/// ends, unless the test already restarted it.
struct KilledNode {
    node: String,
    restarted: bool,
}

impl KilledNode {
    async fn kill(node: &str) -> Self {
        cluster(&["kill", node]).await;
        Self {
            node: node.to_string(),
            restarted: false,
        }
    }

    async fn restart(&mut self) {
        cluster(&["restart", &self.node]).await;
        self.restarted = true;
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        if !self.restarted {
            let _ = Command::new("bash")
                .arg(cluster_script())
                .args(["restart", &self.node])
                .status();
        }
    }
}

/// The gateway's topology plus the tap as a quorum queue: a classic queue lives on one node
/// and the tap must survive the loss of any one.
fn topology_with_quorum_tap() -> Topology {
    let mut t = Topology::new(PARTITIONS);
    t.queues.push(QueueSpec {
        name: TAP.into(),
        kind: QueueKind::Quorum {
            single_active: false,
        },
    });
    t.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: TAP.into(),
        routing_key: String::new(),
    });
    t
}

/// The URL of `vhost` listing the nodes starting with the one at `first` (each replica
/// prefers another node, as clients behind a load balancer would be spread).
fn url_from(vhost: &TestVhost, first: usize) -> String {
    let endpoints: Vec<&str> = vhost.url.split(',').collect();
    (0..endpoints.len())
        .map(|i| endpoints[(first + i) % endpoints.len()])
        .collect::<Vec<_>>()
        .join(",")
}

/// Identify and track only. A replica that loses its node loses its consumers, and what it had
/// delivered but not yet acked is delivered again by the other: events are de-duplicated by
/// their `id` and an identify sets the same attributes again, but a transactional send would go
/// out twice (the App API has no idempotency key: documented at-least-once).
fn identify_or_track(user: usize, seq: u64) -> &'static str {
    if (seq + user as u64) % 4 < 2 {
        "identify"
    } else {
        "track"
    }
}

/// Each user's order over everything Customer.io received, repeats included: first deliveries
/// exactly 0..n, and a failover replay resends from an earlier point onwards (an event repeated
/// inside it is flagged `duplicate`, so it is counted here and not skipped); every repeat
/// harmless. Returns the repeats (duplicate events, identify replays).
fn check_users_with_replays(
    sandbox: &cio_gateway::sandbox::Sandbox,
    users: usize,
    n: u64,
) -> (usize, usize) {
    let (mut duplicates, mut replays) = (0, 0);
    for u in 0..users {
        let user = user_name(u);
        let records = sandbox.records_for(&user);
        let seqs: Vec<u64> = records.iter().filter_map(faults::seq_of).collect();
        assert_ordered(&user, &seqs, n);
        let (d, r) = assert_repeats_are_harmless(&user, &records);
        duplicates += d;
        replays += r;
    }
    (duplicates, replays)
}

/// Publishes seqs `from..to` of `users` users like `faults::publish_range`, but retries a
/// publish that failed (its node went away: the next try reconnects to another), as a producer
/// must. Returns what was sent and how many publishes were retried.
async fn publish_retrying(
    publisher: &Publisher,
    users: usize,
    from: u64,
    to: u64,
) -> (Vec<Sent>, usize) {
    let mut sent = Vec::new();
    let mut retries = 0;
    for seq in from..to {
        let round: Vec<_> = (0..users)
            .map(|u| {
                let user = user_name(u);
                let kind = identify_or_track(u, seq);
                let body = envelope_of(kind, &user, seq);
                sent.push(Sent {
                    user,
                    seq,
                    correlation_id: body["correlationId"].as_str().unwrap().to_string(),
                    kind,
                });
                async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut tries = 0;
                    loop {
                        match publisher.publish(body.clone()).await {
                            Ok(_) => return tries,
                            Err(e) if Instant::now() < deadline => {
                                tries += 1;
                                tracing::debug!(error = %e, "publish failed, retrying");
                                // A pause between tries, not a synchronisation.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("not published within 60 s: {e}"),
                        }
                    }
                }
            })
            .collect();
        retries += futures::future::join_all(round).await.iter().sum::<usize>();
    }
    (sent, retries)
}

/// How many envelopes of `users` users with `seq < upto` reached the sandbox (first deliveries).
fn delivered_below(sandbox: &cio_gateway::sandbox::Sandbox, users: usize, upto: u64) -> usize {
    (0..users)
        .map(|u| {
            let mut seqs = faults::delivered_seqs(&sandbox.records_for(&user_name(u)));
            seqs.retain(|s| *s < upto);
            seqs.sort_unstable();
            seqs.dedup();
            seqs.len()
        })
        .sum()
}

/// Node name (c1..c3) -> how many partition queues it leads.
async fn partition_leaders(vhost: &TestVhost) -> BTreeMap<String, usize> {
    let mut leaders = BTreeMap::new();
    for i in 0..PARTITIONS {
        let leader = cluster(&["leader", &partition_queue(i), &vhost.name]).await;
        assert!(!leader.is_empty(), "partition {i} has a leader");
        *leaders.entry(leader).or_default() += 1;
    }
    leaders
}

/// Whether every partition queue has `n` consumers (the active replica and the standby).
async fn partitions_consumed_by(vhost: &TestVhost, n: u64) -> bool {
    let counts = faults::list_queues(vhost, "consumers").await;
    (0..PARTITIONS).all(|i| counts.get(&partition_queue(i)) == Some(&n))
}

fn reopens_in(log: &str) -> usize {
    log.matches("reopened the publishing channel").count()
}

#[actix_rt::test]
async fn a_lost_node_loses_nothing_and_both_replicas_keep_serving() {
    if std::env::var("CIO_TEST_CLUSTER").as_deref() != Ok("1") {
        eprintln!(
            "cluster not running (start scripts/rabbitmq-cluster.sh, set CIO_TEST_CLUSTER=1)"
        );
        return;
    }
    let hosts: Vec<String> = NODES
        .iter()
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    let vhost = TestVhost::on(
        "cluster",
        &format!("bash {} ctl any", cluster_script()),
        &hosts,
    );
    let sandbox = sandbox::spawn(SandboxConfig::default()).await.unwrap();
    // Each request takes a while, so the run lasts long enough for the kill to land mid-run.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 100,
        ..Faults::default()
    });
    let producer = broker::connect(&vhost.url, topology_with_quorum_tap())
        .await
        .expect("the producer connects");
    let publisher = Publisher::new(producer.clone());

    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<ChildGateway> = (0..2)
        .map(|r| {
            let extra = [("GATEWAY__BROKER__URL", url_from(&vhost, r))];
            let vars = gateway_env(&vhost, &sandbox.track_url(), &sandbox.app_url(), &extra);
            ChildGateway::spawn(&vars, dir.path(), &format!("replica-{r}"))
        })
        .collect();
    let logs = || {
        replicas
            .iter()
            .enumerate()
            .map(|(r, g)| format!("--- replica-{r}:\n{}", g.log()))
            .collect::<String>()
    };
    assert!(
        eventually_async(Duration::from_secs(60), || partitions_consumed_by(
            &vhost, 2
        ))
        .await,
        "both replicas consume every partition: {:?}\n{}",
        faults::list_queues(&vhost, "consumers").await,
        logs()
    );

    // Leaders move only when a node goes: the one leading most partitions now is the one to kill.
    let leaders = partition_leaders(&vhost).await;
    let (victim, led) = leaders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(node, n)| (node.clone(), *n))
        .unwrap();

    // Three waves per user: the first half before the kill (which lands while it is being
    // delivered), a quarter while the node is down, the rest after it rejoined.
    let (users, per_user) = (30usize, 20u64);
    let (first_wave, second_wave) = (per_user / 2, 3 * per_user / 4);
    let started = Instant::now();
    let (mut sent, mut retries) = publish_retrying(&publisher, users, 0, first_wave).await;
    let wave_size = users * first_wave as usize;
    assert!(
        eventually(Duration::from_secs(60), || {
            delivered_below(&sandbox.sandbox, users, first_wave) >= wave_size / 4
        })
        .await,
        "the first wave is being delivered\n{}",
        logs()
    );
    let delivered_at_kill = delivered_below(&sandbox.sandbox, users, first_wave);
    let killed_at = Instant::now();
    let mut killed = KilledNode::kill(&victim).await;
    assert!(
        delivered_below(&sandbox.sandbox, users, first_wave) < wave_size,
        "the kill must land mid-run"
    );

    let (wave, tries) = publish_retrying(&publisher, users, first_wave, second_wave).await;
    sent.extend(wave);
    retries += tries;
    let first_after_kill = eventually(Duration::from_secs(60), || {
        (0..users).any(|u| {
            faults::delivered_seqs(&sandbox.sandbox.records_for(&user_name(u)))
                .iter()
                .any(|s| *s >= first_wave)
        })
    })
    .await;
    assert!(
        first_after_kill,
        "nothing published after the kill was delivered\n{}",
        logs()
    );
    let to_first = killed_at.elapsed();
    // The two remaining nodes are a majority: everything so far is delivered with one node down.
    let all_so_far = users * second_wave as usize;
    assert!(
        eventually(Duration::from_secs(90), || {
            delivered_below(&sandbox.sandbox, users, second_wave) == all_so_far
        })
        .await,
        "{} of {all_so_far} delivered with {victim} down\n{}",
        delivered_below(&sandbox.sandbox, users, second_wave),
        logs()
    );
    let to_all_while_down = killed_at.elapsed();

    let restart_started = Instant::now();
    killed.restart().await;
    let rejoin = restart_started.elapsed();
    let (wave, tries) = publish_retrying(&publisher, users, second_wave, per_user).await;
    sent.extend(wave);
    retries += tries;
    let total = users * per_user as usize;
    assert!(
        eventually(Duration::from_secs(90), || delivered_below(
            &sandbox.sandbox,
            users,
            per_user
        ) == total)
        .await,
        "{} of {total} delivered after {victim} rejoined\n{}",
        delivered_below(&sandbox.sandbox, users, per_user),
        logs()
    );
    let to_all = killed_at.elapsed();

    let repeats = assert_all_processed(&producer, &sent, false, Duration::from_secs(60)).await;
    let (duplicate_events, identify_replays) =
        check_users_with_replays(&sandbox.sandbox, users, per_user);
    assert_eq!(depth(&vhost, DLQ_QUEUE).await, 0, "nothing dead-lettered");
    assert!(
        eventually_async(Duration::from_secs(60), || partitions_consumed_by(
            &vhost, 2
        ))
        .await,
        "both replicas still consume every partition: {:?}\n{}",
        faults::list_queues(&vhost, "consumers").await,
        logs()
    );
    let mut replicas = replicas;
    for (r, replica) in replicas.iter_mut().enumerate() {
        assert!(
            replica.child.try_wait().unwrap().is_none(),
            "replica-{r} still runs\n{}",
            replica.log()
        );
    }
    let reopens: usize = replicas.iter().map(|g| reopens_in(&g.log())).sum();
    eprintln!(
        "cluster: {total} envelopes ({users} users x {per_user}), {victim} killed leading {led} of \
         {PARTITIONS} partitions ({leaders:?}) with {delivered_at_kill} delivered; kill -> first \
         envelope published after it delivered {to_first:.2?}, -> all {all_so_far} so far \
         delivered (node down) {to_all_while_down:.2?}; restart -> rejoined {rejoin:.2?}; \
         kill -> all delivered {to_all:.2?}; run {:.2?}; producer retries {retries}, \
         processed repeats {repeats}, duplicate events {}, identify replays {}, publisher \
         channel reopens {reopens}",
        started.elapsed(),
        duplicate_events,
        identify_replays,
    );
    producer.close().await;
}

/// Publishes into a queue that refuses them (`max-length` 0, `reject-publish`): after three
/// nacks in a row the publishing channel is replaced, and once the queue accepts again the
/// next publish is confirmed on the new channel.
#[actix_rt::test]
async fn persistent_nacks_reopen_the_publishing_channel() {
    let vhost = TestVhost::new("nacks");
    let queue = "test.refusing";
    let status = vhost
        .rabbitmqctl_async()
        .args([
            "-q",
            "set_policy",
            "-p",
            &vhost.name,
            "--apply-to",
            "queues",
            "refuse",
            "^test\\.refusing$",
            r#"{"max-length":0,"overflow":"reject-publish"}"#,
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut topology = Topology::new(1);
    topology.queues.push(QueueSpec {
        name: queue.into(),
        kind: QueueKind::Classic,
    });
    let broker = AmqpBroker::connect(&vhost.url, topology).await.unwrap();
    let message = || Publish::new("", queue, b"{}".to_vec());

    for n in 1..=3 {
        let result = broker.publish(message()).await;
        assert!(
            matches!(result, Err(BrokerError::NotConfirmed(_))),
            "publish {n} is nacked: {result:?}"
        );
    }
    assert_eq!(broker.publisher_reopens(), 1, "reopened after three nacks");

    let status = vhost
        .rabbitmqctl_async()
        .args(["-q", "clear_policy", "-p", &vhost.name, "refuse"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let accepted = eventually_async(Duration::from_secs(10), || async {
        broker.publish(message()).await.is_ok()
    })
    .await;
    assert!(accepted, "the new channel publishes");
    broker.close().await;
}
