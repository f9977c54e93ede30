//! Shared test scaffolding: a RabbitMQ vhost and a PostgreSQL database per test (removed on
//! drop), settings that point a gateway at them, and waiting on conditions with a deadline.
#![allow(dead_code)]

use cio_gateway::config::Settings;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The broker under test: the host's RabbitMQ, or another node named by `CIO_TEST_AMQP_PORT`
/// and `CIO_TEST_RABBITMQCTL` (e.g. the RabbitMQ 4 node of `scripts/rabbitmq4.sh`).
pub fn amqp_host() -> String {
    let port = std::env::var("CIO_TEST_AMQP_PORT").unwrap_or_else(|_| "5672".into());
    format!("127.0.0.1:{port}")
}

/// `rabbitmqctl` for the broker under test: `CIO_TEST_RABBITMQCTL` is a command prefix.
pub fn rabbitmqctl() -> Command {
    command_of(&rabbitmqctl_prefix())
}

fn rabbitmqctl_prefix() -> String {
    std::env::var("CIO_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into())
}

/// A command from a prefix of whitespace-separated words.
fn command_of(prefix: &str) -> Command {
    let mut words = prefix.split_whitespace();
    let mut command = Command::new(words.next().expect("CIO_TEST_RABBITMQCTL names a command"));
    command.args(words);
    command
}

/// [`rabbitmqctl`] that does not block the async runtime.
pub fn rabbitmqctl_async() -> tokio::process::Command {
    tokio::process::Command::from(rabbitmqctl())
}
pub const PG_HOST: &str = "127.0.0.1";

/// Logs of in-process gateways, shown by the test harness, when `TEST_LOG` holds a filter
/// (e.g. `TEST_LOG=cio_gateway=debug`); silent otherwise.
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new()).to_lowercase()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The HTTP layer's state over the in-process broker, for tests of the routes alone.
pub async fn routes_state(vars: &[(&str, &str)]) -> cio_gateway::http::AppState {
    let broker = cio_gateway::broker::connect("memory://", cio_gateway::broker::Topology::new(2))
        .await
        .expect("the in-process broker starts");
    cio_gateway::http::AppState::new(std::sync::Arc::new(settings(vars)), broker)
}

/// A RabbitMQ vhost of one test's own, deleted (with everything in it) on drop.
pub struct TestVhost {
    pub name: String,
    /// One endpoint, or (on a cluster) every node's, comma-separated.
    pub url: String,
    /// The `rabbitmqctl` command prefix that manages it.
    ctl: String,
}

impl TestVhost {
    /// On the broker under test ([`amqp_host`], [`rabbitmqctl`]).
    pub fn new(prefix: &str) -> Self {
        Self::on(prefix, &rabbitmqctl_prefix(), &[amqp_host()])
    }

    /// On the broker managed by the `ctl` command prefix, reached at `hosts` (`host:port`, the
    /// nodes of one cluster): the URL lists them all, in this order.
    pub fn on(prefix: &str, ctl: &str, hosts: &[String]) -> Self {
        let name = unique(prefix);
        let vhost = Self {
            url: hosts
                .iter()
                .map(|host| format!("amqp://guest:guest@{host}/{name}"))
                .collect::<Vec<_>>()
                .join(","),
            name,
            ctl: ctl.to_string(),
        };
        run(vhost.rabbitmqctl().args(["-q", "add_vhost", &vhost.name]));
        run(&mut vhost.grant_guest());
        vhost
    }

    /// `rabbitmqctl` for the broker this vhost is on.
    pub fn rabbitmqctl(&self) -> Command {
        command_of(&self.ctl)
    }

    /// [`TestVhost::rabbitmqctl`] that does not block the async runtime.
    pub fn rabbitmqctl_async(&self) -> tokio::process::Command {
        tokio::process::Command::from(self.rabbitmqctl())
    }

    /// The command giving the guest user full permissions on this vhost.
    fn grant_guest(&self) -> Command {
        let mut command = self.rabbitmqctl();
        command.args([
            "-q",
            "set_permissions",
            "-p",
            &self.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        command
    }

    /// Makes this vhost unusable for the guest user (not the whole RabbitMQ: other tests run
    /// beside this one) and drops its connections, until the returned guard is dropped.
    pub fn outage(&self) -> Outage<'_> {
        run(self
            .rabbitmqctl()
            .args(["-q", "clear_permissions", "-p", &self.name, "guest"]));
        self.close_connections();
        Outage(self)
    }

    /// `rabbitmqctl list_queues` for this vhost: name -> ready messages.
    pub fn queue_depths(&self) -> BTreeMap<String, u64> {
        self.list_queues("messages")
    }

    /// `rabbitmqctl list_queues` for this vhost: name -> consumers.
    pub fn consumer_counts(&self) -> BTreeMap<String, u64> {
        self.list_queues("consumers")
    }

    fn list_queues(&self, column: &str) -> BTreeMap<String, u64> {
        let out = self
            .rabbitmqctl()
            .args([
                "-q",
                "list_queues",
                "-p",
                &self.name,
                "--no-table-headers",
                "name",
                column,
            ])
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Closes every client connection to this vhost, as a network fault would.
    pub fn close_connections(&self) {
        run(self.rabbitmqctl().args([
            "-q",
            "close_all_connections",
            "--vhost",
            &self.name,
            "test: forced close",
        ]));
    }
}

/// A vhost made unusable by [`TestVhost::outage`]; the guest user's permissions come back
/// when it is dropped, however the test ends.
pub struct Outage<'a>(&'a TestVhost);

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        // Not `run`: a panic while the test is already panicking would abort.
        let _ = self.0.grant_guest().output();
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = self
            .rabbitmqctl()
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// A PostgreSQL database of one test's own, dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix).replace('-', "_");
        run(Command::new("psql").args([
            "-h",
            PG_HOST,
            "-U",
            "postgres",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ]));
        let url = format!("postgres://postgres@{PG_HOST}:5432/{name}");
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                PG_HOST,
                "-U",
                "postgres",
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Settings built through the real config layers from `GATEWAY__...` variables.
pub fn settings(vars: &[(&str, &str)]) -> Settings {
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_from(Path::new("/nonexistent"), None, &env).expect("test settings are valid")
}

/// `GATEWAY__...` settings of a webhook test's gateway: `vhost`, a sandbox as Customer.io,
/// warehouse files and local data under `dir`, short backoffs; `extra` overrides.
pub fn webhook_gateway_env(
    vhost: &TestVhost,
    sandbox: &cio_gateway::sandbox::RunningSandbox,
    dir: &Path,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("GATEWAY__BROKER__URL", vhost.url.clone()),
        ("GATEWAY__BROKER__PARTITIONS", "2".into()),
        ("GATEWAY__HTTP__ADDR", "127.0.0.1:0".into()),
        ("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url()),
        ("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url()),
        ("GATEWAY__CUSTOMERIO__TRACK_RPS", "1000".into()),
        ("GATEWAY__CUSTOMERIO__APP_RPS", "1000".into()),
        ("GATEWAY__DELIVERY__BACKOFF_BASE_MS", "5".into()),
        ("GATEWAY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
        ("GATEWAY__WEBHOOKS__SIGNING_SECRETS", "s1,s2".into()),
        (
            "GATEWAY__WAREHOUSE__PATH",
            dir.join("warehouse").display().to_string(),
        ),
        ("GATEWAY__WAREHOUSE__FLUSH_MS", "50".into()),
        (
            "GATEWAY__APP__DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        ("GATEWAY__SHUTDOWN__DRAIN_SECS", "3".into()),
    ];
    for (key, value) in extra {
        vars.retain(|(k, _)| k != key);
        vars.push((key, value.clone()));
    }
    vars
}

/// An in-process gateway (inside the test's actix `System`) from `GATEWAY__...` settings.
pub async fn start_gateway(vars: &[(&'static str, String)]) -> cio_gateway::app::Gateway {
    init_test_logging();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cio_gateway::app::Gateway::start(settings(&pairs))
        .await
        .expect("gateway starts")
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async condition until it holds or `timeout` passes; returns whether it held.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a [`HookedBroker`] runs before each publish: `Err` fails the publish, and a future that
/// waits holds it back (as a refusing or slow RabbitMQ would).
pub type PublishHook = Box<
    dyn Fn(
            &cio_gateway::broker::Publish,
        )
            -> futures::future::BoxFuture<'static, Result<(), cio_gateway::broker::BrokerError>>
        + Send
        + Sync,
>;

/// A broker that runs its hook on every publish, then passes it on; every other call goes
/// straight to `inner`.
pub struct HookedBroker {
    inner: cio_gateway::broker::SharedBroker,
    hook: PublishHook,
}

impl HookedBroker {
    pub fn new(
        inner: cio_gateway::broker::SharedBroker,
        hook: PublishHook,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { inner, hook })
    }
}

#[async_trait::async_trait]
impl cio_gateway::broker::Broker for HookedBroker {
    async fn declare(
        &self,
        topology: &cio_gateway::broker::Topology,
    ) -> Result<(), cio_gateway::broker::BrokerError> {
        self.inner.declare(topology).await
    }

    async fn publish(
        &self,
        message: cio_gateway::broker::Publish,
    ) -> Result<(), cio_gateway::broker::BrokerError> {
        (self.hook)(&message).await?;
        self.inner.publish(message).await
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<cio_gateway::broker::DeliveryStream, cio_gateway::broker::BrokerError> {
        self.inner.consume(queue, prefetch).await
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, cio_gateway::broker::BrokerError> {
        self.inner.queue_len(queue).await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// The envelopes queued for `user` in the partition queues, in queue order (what Customer.io
/// would receive, in order). Read without acking: they return to their queues.
pub async fn queued_envelopes(
    broker: &cio_gateway::broker::SharedBroker,
    topology: &cio_gateway::broker::Topology,
    user: &str,
) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let mut found = Vec::new();
    for queue in topology.partition_queues() {
        let n = broker.queue_len(&queue).await.unwrap();
        if n == 0 {
            continue;
        }
        let mut stream = broker.consume(&queue, n as u16).await.unwrap();
        for _ in 0..n {
            let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a queued message is delivered")
                .expect("the stream is open");
            let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
            if body["userId"] == user {
                found.push(body);
            }
        }
        stream.close().await;
    }
    found
}

/// The `webhooks.rules` of the webhook-action tests: a bounce suppresses, a
/// `customer.subscribed` lifts the suppression.
pub const ACTION_PATTERNS: [&str; 2] = ["email.bounced", "customer.subscribed"];

pub fn action_rules() -> cio_gateway::domain::webhook::Rules {
    let config: BTreeMap<String, String> = [
        ("email.bounced".to_string(), "suppress".to_string()),
        ("customer.subscribed".to_string(), "unsuppress".to_string()),
    ]
    .into();
    cio_gateway::domain::webhook::Rules::parse(&config).unwrap()
}
