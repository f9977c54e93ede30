//! What the fault tests (`tests/faults_*.rs`) share: a gateway pointed at a vhost and a
//! sandbox, a tap on `customerio.processed`, envelopes that carry their position, and the checks
//! every fault test makes — every envelope ends processed or dead-lettered, each user's order
//! holds, and a repeat reaches Customer.io only where Customer.io de-duplicates it.
//!
//! Include it next to `common` with `#[path = "common/faults.rs"] mod faults;`. RabbitMQ is
//! asked with `rabbitmqctl` through `tokio::process`, never blocking the test's runtime (which
//! also runs an in-process gateway's actors and broker connection).
#![allow(dead_code)]

use crate::common::TestVhost;
use cio_gateway::app::Gateway;
use cio_gateway::broker::topology::{BindingSpec, PROCESSED_EXCHANGE, QueueKind, QueueSpec};
use cio_gateway::broker::{self, SharedBroker, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::Record;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The queue the tests bind to `customerio.processed`.
pub const TAP: &str = "test.processed";
pub const PARTITIONS: u16 = 4;

/// `CIO_TEST_PARTITIONER=builtin` runs the fault tests with the gateway's own partitioner
/// (`broker.partitioner = builtin`: no plugin, the intake queue forwarded by the gateway).
pub fn builtin_partitioner() -> bool {
    std::env::var("CIO_TEST_PARTITIONER").as_deref() == Ok("builtin")
}

/// The gateway's topology plus [`TAP`].
pub fn topology_with_tap() -> Topology {
    let t = Topology::new(PARTITIONS);
    with_tap(if builtin_partitioner() {
        t.routed_by_gateway()
    } else {
        t
    })
}

/// `t` plus [`TAP`], bound to `customerio.processed`.
pub fn with_tap(mut t: Topology) -> Topology {
    t.queues.push(QueueSpec {
        name: TAP.into(),
        kind: QueueKind::Classic,
    });
    t.queue_bindings.push(BindingSpec {
        source: PROCESSED_EXCHANGE.into(),
        destination: TAP.into(),
        routing_key: String::new(),
    });
    t
}

/// The test's own connection; it declares the topology (and the tap) before any gateway runs.
pub async fn producer(vhost: &TestVhost) -> SharedBroker {
    broker::connect(&vhost.url, topology_with_tap())
        .await
        .expect("test producer connects")
}

/// `GATEWAY__...` settings of a gateway on `vhost` delivering to a sandbox; `extra` overrides.
pub fn gateway_env(
    vhost: &TestVhost,
    track_url: &str,
    app_url: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", PARTITIONS.to_string()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", track_url.to_string()),
        ("GATEWAY__CUSTOMERIO__APP_URL", app_url.to_string()),
        ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
        ("GATEWAY__CUSTOMERIO__APP_RPS", "1000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
        ("GATEWAY__DELIVERY__MAX_ATTEMPTS", "50".into()),
        // Scaled down like the backoff: a probe at most every 500 ms while the circuit is open.
        ("GATEWAY__CUSTOMERIO__CIRCUIT_MAX_BACKOFF_MS", "500".into()),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "5".into()),
        ("GATEWAY__TEMPLATES__WELCOME", "7".into()),
    ];
    if builtin_partitioner() {
        vars.push(("GATEWAY__BROKER__PARTITIONER", "builtin".into()));
    }
    for (key, value) in extra {
        vars.retain(|(k, _)| k != key);
        vars.push((key, value.clone()));
    }
    vars
}

#[allow(unused_imports)] // not every fault test starts an in-process gateway
pub use crate::common::start_gateway;

/// `Gateway::shutdown`, which must finish within `limit` (its drain deadline plus a margin).
pub async fn shutdown_within(gateway: Gateway, limit: Duration) {
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(limit, gateway.shutdown()).await;
    assert!(
        done.is_ok(),
        "the gateway did not shut down within {limit:?} ({:?})",
        started.elapsed()
    );
}

/// The gateway binary as a child process (`serve`), killed on drop if still running.
/// Its log goes to a file, shown by [`ChildGateway::log`] when a test fails.
pub struct ChildGateway {
    pub child: Child,
    log: std::path::PathBuf,
}

impl ChildGateway {
    pub fn spawn(vars: &[(&'static str, String)], dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cio-gateway"));
        command
            .arg("serve")
            .env("RUST_LOG", "warn,cio_gateway=info")
            .env("GATEWAY__APP__DATA_DIR", dir.join(format!("{name}-data")))
            .env("GATEWAY__WAREHOUSE__PATH", dir.join(format!("{name}-wh")))
            .stdout(Stdio::null())
            .stderr(file);
        for (key, value) in vars {
            command.env(key, value);
        }
        let child = command.spawn().expect("gateway binary starts");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -TERM <pid>`, as Kubernetes stops a pod.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the exit without blocking the runtime; `None` if still running at `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One published envelope: whose, which position, its correlation id and type.
#[derive(Debug, Clone)]
pub struct Sent {
    pub user: String,
    pub seq: u64,
    pub correlation_id: String,
    pub kind: &'static str,
}

/// The usual mix by position: 0, 1 identify; 2, 3 track; 4 transactional.
pub fn mixed_kind(_user: usize, seq: u64) -> &'static str {
    match seq % 5 {
        0 | 1 => "identify",
        2 | 3 => "track",
        _ => "transactional",
    }
}

/// The `seq`-th message of a user, of the given kind (`identify`, `track`, `transactional`),
/// carrying `seq` where the sandbox's record of it keeps it, and a fresh ULID correlation id.
pub fn envelope_of(kind: &str, user: &str, seq: u64) -> Value {
    let cid = ulid::Ulid::new().to_string();
    match kind {
        "identify" => json!({"type": "identify", "userId": user, "correlationId": cid,
            "payload": {"seq": seq, "plan": "pro"}}),
        "track" => json!({"type": "track", "userId": user, "correlationId": cid,
            "payload": {"name": "step", "data": {"seq": seq}}}),
        "transactional" => json!({"type": "transactional", "userId": user, "correlationId": cid,
            "payload": {"template": "welcome", "to": format!("{user}@example.com"),
                "message_data": {"seq": seq}}}),
        other => panic!("no envelope of kind {other}"),
    }
}

/// The `seq`-th message of a user in the usual mix; returns it with its kind.
pub fn envelope(user: &str, seq: u64) -> (Value, &'static str) {
    let kind = mixed_kind(0, seq);
    (envelope_of(kind, user, seq), kind)
}

pub fn user_name(u: usize) -> String {
    format!("user-{u}")
}

/// Publishes seqs `from..to` of `users` users in the usual mix; see [`publish_range_with`].
pub async fn publish_range(publisher: &Publisher, users: usize, from: u64, to: u64) -> Vec<Sent> {
    publish_range_with(publisher, users, from, to, mixed_kind).await
}

/// Publishes seqs `from..to` of `users` users, interleaved across users and in order per user,
/// each with a publisher confirm; `kind_of(user index, seq)` picks each message's kind.
pub async fn publish_range_with(
    publisher: &Publisher,
    users: usize,
    from: u64,
    to: u64,
    kind_of: impl Fn(usize, u64) -> &'static str,
) -> Vec<Sent> {
    publish_users(publisher, 0..users, from, to, kind_of).await
}

/// [`publish_range_with`] for the users numbered `users` (`user-<n>`).
pub async fn publish_users(
    publisher: &Publisher,
    users: std::ops::Range<usize>,
    from: u64,
    to: u64,
    kind_of: impl Fn(usize, u64) -> &'static str,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    for seq in from..to {
        let round: Vec<_> = users
            .clone()
            .map(|u| {
                let user = user_name(u);
                let kind = kind_of(u, seq);
                let body = envelope_of(kind, &user, seq);
                let cid = body["correlationId"].as_str().unwrap().to_string();
                sent.push(Sent {
                    user,
                    seq,
                    correlation_id: cid,
                    kind,
                });
                publisher.publish(body)
            })
            .collect();
        for result in futures::future::join_all(round).await {
            result.expect("published with confirm");
        }
    }
    sent
}

/// The `seq` a sandbox record carries, wherever its operation keeps it.
pub fn seq_of(record: &Record) -> Option<u64> {
    let body = &record.body;
    [
        body.pointer("/attributes/seq"),
        body.pointer("/seq"),
        body.pointer("/data/seq"),
        body.pointer("/message_data/seq"),
        // Pipelines calls: identify traits, track properties.
        body.pointer("/traits/seq"),
        body.pointer("/properties/seq"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_u64)
}

/// What Customer.io keeps of a user's stream: events with an already seen `id` are dropped.
pub fn delivered_seqs(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| !r.duplicate)
        .filter_map(seq_of)
        .collect()
}

/// Order holds when the first deliveries are exactly 0..n, and any repeat is a replay that
/// resends from an earlier point onwards (it never jumps ahead), ending at the newest.
pub fn assert_ordered(user: &str, seqs: &[u64], n: u64) {
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for s in seqs {
        if seen.insert(*s) {
            first.push(*s);
        }
    }
    assert_eq!(
        first,
        (0..n).collect::<Vec<_>>(),
        "user {user}: lost or reordered: {seqs:?}"
    );
    for pair in seqs.windows(2) {
        assert!(
            pair[1] == pair[0] + 1 || pair[1] <= pair[0],
            "user {user}: jumped from {} to {}: {seqs:?}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(
        seqs.last(),
        Some(&(n - 1)),
        "user {user}: does not end at the newest"
    );
}

/// Every repeat Customer.io would act on again is an identify (a replay sets the same
/// attributes again): a repeated event is flagged `duplicate` (its `id` was seen), and a
/// transactional send is never repeated. Returns how many repeats there were of each kind:
/// (events dropped as duplicates, identify replays).
pub fn assert_repeats_are_harmless(user: &str, records: &[Record]) -> (usize, usize) {
    let mut seen = BTreeSet::new();
    let (mut duplicates, mut replays) = (0, 0);
    for r in records {
        let Some(seq) = seq_of(r) else {
            panic!("user {user}: a record without seq: {r:?}");
        };
        if r.duplicate {
            assert!(
                seen.contains(&seq),
                "user {user}: a duplicate of something never delivered: {r:?}"
            );
            duplicates += 1;
        } else if !seen.insert(seq) {
            assert_eq!(
                r.action, "identify",
                "user {user}: seq {seq} reached Customer.io twice and would be acted on twice: {records:?}"
            );
            replays += 1;
        }
    }
    (duplicates, replays)
}

/// Checks one user's records: in order (replay rule) and repeats only where harmless.
pub fn check_user(user: &str, records: &[Record], n: u64) -> (usize, usize) {
    assert_ordered(user, &delivered_seqs(records), n);
    assert_repeats_are_harmless(user, records)
}

/// `rabbitmqctl list_queues name <column>` for the vhost, without blocking the runtime.
pub async fn list_queues(vhost: &TestVhost, column: &str) -> BTreeMap<String, u64> {
    let out = vhost
        .rabbitmqctl_async()
        .args([
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "name",
            column,
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

/// Ready messages per queue of the vhost.
pub async fn queue_depths(vhost: &TestVhost) -> BTreeMap<String, u64> {
    list_queues(vhost, "messages").await
}

/// Ready plus unacked messages of one queue (0 if unknown).
pub async fn depth(vhost: &TestVhost, queue: &str) -> u64 {
    queue_depths(vhost).await.get(queue).copied().unwrap_or(0)
}

/// `rabbitmqctl close_all_connections` for the vhost, without blocking the runtime.
pub async fn close_connections(vhost: &TestVhost) {
    let status = vhost
        .rabbitmqctl_async()
        .args([
            "-q",
            "close_all_connections",
            "--vhost",
            &vhost.name,
            "test: forced close",
        ])
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "close_all_connections failed");
}

/// Consumes `queue` (acking) until every key in `expected` was seen or `timeout` passes, then
/// takes what else is already there (until the queue is idle for `settle`). Returns every
/// message's JSON body and how often each key came, keyed by `key` (bodies without one are
/// counted under "").
pub async fn collect(
    broker: &SharedBroker,
    queue: &str,
    expected: &BTreeSet<String>,
    key: impl Fn(&Value) -> Option<String>,
    timeout: Duration,
    settle: Duration,
) -> (Vec<Value>, BTreeMap<String, usize>) {
    let mut stream = broker.consume(queue, 500).await.expect("consuming");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bodies = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let complete = expected.iter().all(|k| counts.contains_key(k));
        let next = if complete {
            tokio::time::timeout(settle, stream.next()).await
        } else {
            tokio::time::timeout_at(deadline, stream.next()).await
        };
        let Ok(Some(delivery)) = next else { break };
        let body: Value = serde_json::from_slice(&delivery.body).expect("JSON body");
        *counts.entry(key(&body).unwrap_or_default()).or_default() += 1;
        bodies.push(body);
        delivery.acker.ack().await.expect("ack");
    }
    stream.close().await;
    (bodies, counts)
}

/// The `correlationId` of a processed event or dead letter.
pub fn correlation_id(body: &Value) -> Option<String> {
    body["correlationId"].as_str().map(str::to_string)
}

/// Reads the whole tap: asserts every published envelope has its processed event (and,
/// if `exactly_once`, exactly one). Returns how many processed events repeated.
pub async fn assert_all_processed(
    broker: &SharedBroker,
    sent: &[Sent],
    exactly_once: bool,
    timeout: Duration,
) -> usize {
    let expected: BTreeSet<String> = sent.iter().map(|s| s.correlation_id.clone()).collect();
    let (bodies, counts) = collect(
        broker,
        TAP,
        &expected,
        correlation_id,
        timeout,
        Duration::from_millis(300),
    )
    .await;
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} envelopes have no processed event, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    let foreign: Vec<_> = counts.keys().filter(|k| !expected.contains(*k)).collect();
    assert!(
        foreign.is_empty(),
        "processed events of unknown envelopes: {foreign:?}"
    );
    for body in &bodies {
        assert_eq!(body["status"], "success", "{body}");
    }
    let repeats = bodies.len() - expected.len();
    if exactly_once {
        assert_eq!(repeats, 0, "processed events repeated: {counts:?}");
    }
    repeats
}

/// Per-user numbers of a run, for the test's output.
#[derive(Debug, Default)]
pub struct Repeats {
    pub duplicate_events: usize,
    pub identify_replays: usize,
}

/// Checks every user's records (0..n each) and adds up the repeats.
pub fn check_all_users(sandbox: &cio_gateway::sandbox::Sandbox, users: usize, n: u64) -> Repeats {
    check_users(sandbox, 0..users, n)
}

/// [`check_all_users`] for the users numbered `users`.
pub fn check_users(
    sandbox: &cio_gateway::sandbox::Sandbox,
    users: std::ops::Range<usize>,
    n: u64,
) -> Repeats {
    let mut total = Repeats::default();
    for u in users {
        let user = user_name(u);
        let (d, r) = check_user(&user, &sandbox.records_for(&user), n);
        total.duplicate_events += d;
        total.identify_replays += r;
    }
    total
}

/// A TCP proxy in front of RabbitMQ that can black-hole the path: while it does, bytes in
/// either direction are read and thrown away and no socket is closed, as a silent network
/// partition looks to both ends (no FIN, no RST; only heartbeats can tell). New connections are
/// accepted and then hear nothing.
pub struct BlackholeProxy {
    pub addr: std::net::SocketAddr,
    blackholed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackholeProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let blackholed = std::sync::Arc::new(AtomicBool::new(false));
        let flag = blackholed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, flag.clone()),
                        pipe(server_read, client_write, flag),
                    );
                });
            }
        });
        Self {
            addr,
            blackholed,
            task,
        }
    }

    /// `url` (one endpoint) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("an AMQP URL");
        u.set_ip_host(self.addr.ip()).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    /// From now on nothing passes, in either direction; sockets stay open.
    pub fn blackhole(&self) {
        self.blackholed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either side closes, throwing bytes away while `blackholed`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackholed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if blackholed.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    // A black hole forwards no FIN either: keep the other half open until the test ends.
    if blackholed.load(std::sync::atomic::Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}
