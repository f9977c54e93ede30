//! The benchmarks of issue 7, measured in one run on this machine, each beside its baseline.
//!
//!   cargo build --release --bins --examples && target/release/examples/bench
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest, `rabbitmqctl` on PATH); every phase runs in
//! a vhost of its own, removed afterwards. The gateway runs as its own process (the release
//! binary next to this one) so its memory can be read from /proc.

#[path = "../tests/common/mod.rs"]
mod common;

use cio_gateway::broker::topology::PROCESSED_EXCHANGE;
use cio_gateway::broker::{self, SharedBroker, Topology};
use cio_gateway::publisher::Publisher;
use cio_gateway::sandbox::{self, RunningSandbox, SandboxConfig};
use clap::Parser;
use common::TestVhost;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use serde_json::{Value, json};
use sha2::Sha256;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: u16 = 8;
const SECRET: &str = "bench-secret";

#[derive(Parser, Debug)]
struct Args {
    /// Envelopes per delivery run.
    #[arg(long, default_value_t = 100_000)]
    envelopes: usize,
    /// Distinct users they are spread over.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Webhook requests per ingestion run.
    #[arg(long, default_value_t = 20_000)]
    webhooks: usize,
    /// Concurrent webhook requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Only the webhook ingestion run, against a gateway started for it (for profiling).
    #[arg(long)]
    webhooks_only: bool,
    /// Another gateway binary (e.g. the previous commit's release build) whose unlimited
    /// delivery is measured in the same run, beside this build's.
    #[arg(long)]
    previous_gateway: Option<std::path::PathBuf>,
    /// Only the backlog drain with each partitioner (`modulus-hash`, `builtin`), side by side.
    #[arg(long)]
    partitioners_only: bool,
    /// Only the backlog drains beside their floor (bare consume + confirmed publish + ack), at
    /// `--envelopes`/`--users` and at ten times both, with the gateway's RSS after each.
    #[arg(long)]
    backlog_only: bool,
    /// Only the backlog drain through the Track API and through the Pipelines API, side by side.
    #[arg(long)]
    apis_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    actix_rt::System::new().block_on(run(args))
}

struct Row {
    what: String,
    figure: String,
    baseline: String,
    ratio: String,
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.webhooks_only {
        let vhost = TestVhost::new("bench-webhooks");
        let sandbox = sandbox::spawn(SandboxConfig::default()).await?;
        let gateway = GatewayProcess::start(&vhost, &sandbox, 1_000_000)?;
        gateway.wait_ready().await?;
        println!("gateway pid {}", gateway.0.id());
        let url = format!("http://127.0.0.1:{}/webhooks/customerio", gateway.1);
        let cpu = CpuMeter::start(gateway.0.id());
        let (rps, p99) = webhook_load(&url, &args).await?;
        println!("webhook ingestion: {rps:.0} req/s, p99 {p99:.1} ms");
        println!("CPU per request: {}", cpu.per_request(args.webhooks));
        return Ok(());
    }
    if args.backlog_only {
        return backlog_scales(&args).await;
    }
    if args.apis_only {
        let track = drain(args.envelopes, args.users, "modulus-hash", "track").await?;
        let pipelines = drain(args.envelopes, args.users, "modulus-hash", "pipelines").await?;
        println!("{}", apis_line(&args, &track, &pipelines));
        return Ok(());
    }
    if args.partitioners_only {
        let modulus = delivery_run(&args, None, false).await?;
        let builtin = drain(args.envelopes, args.users, "builtin", "track").await?;
        let (rate, cpu) = (builtin.rate, builtin.cpu);
        println!(
            "backlog of {} envelopes over {} users: modulus-hash {:.0} env/s ({:.1} µs CPU each), builtin {rate:.0} env/s ({cpu:.1} µs), {:.0}%",
            args.envelopes,
            args.users,
            modulus.rate,
            modulus.cpu_per_event,
            100.0 * rate / modulus.rate
        );
        return Ok(());
    }
    let mut rows = Vec::new();
    println!(
        "machine: {} cores; {} envelopes over {} users",
        num_cpus(),
        args.envelopes,
        args.users
    );

    // Baseline: a bare lapin consumer that only acks the same messages.
    let bare = bare_consumer_rate(args.envelopes, args.users, false).await?;
    let (ceiling, bare_cpu_per_message) = (bare.rate, bare.cpu);
    println!(
        "bare lapin consume+ack: {ceiling:.0} msg/s, {bare_cpu_per_message:.1} µs CPU per message"
    );
    // The floor of what the contract asks of each delivery, Customer.io aside: consume,
    // publish its processed event with a publisher confirm, then ack.
    let relay = bare_consumer_rate(args.envelopes, args.users, true).await?;
    let (relay_rate, relay_cpu) = (relay.rate, relay.cpu);
    println!(
        "bare lapin consume+confirmed publish+ack: {relay_rate:.0} msg/s, {relay_cpu:.1} µs CPU per message"
    );

    if let Some(previous) = &args.previous_gateway {
        GATEWAY_BINARY.with(|b| *b.borrow_mut() = Some(previous.clone()));
        let before = delivery_run(&args, None, false).await;
        GATEWAY_BINARY.with(|b| *b.borrow_mut() = None);
        let before = before?;
        let now = delivery_run(&args, None, false).await?;
        println!(
            "previous gateway unlimited: {:.0} env/s, {:.1} µs CPU/envelope; this build: {:.0} env/s, {:.1} µs",
            before.rate, before.cpu_per_event, now.rate, now.cpu_per_event
        );
        rows.push(Row {
            what: "delivery, unlimited: this build vs the previous one (envelopes/s)".into(),
            figure: format!("{:.0}", now.rate),
            baseline: format!("{:.0} ({})", before.rate, previous.display()),
            ratio: format!("{:.0}%", 100.0 * now.rate / before.rate),
        });
    }

    // The gateway with an unlimited sandbox, then with Customer.io's 100 req/s Track budget.
    let mut modulus_rate = 0.0;
    for (label, budget) in [("unlimited", None), ("100 req/s budget", Some(100))] {
        let run = delivery_run(&args, budget, true).await?;
        if budget.is_none() {
            modulus_rate = run.rate;
        }
        println!(
            "gateway {label}: {:.0} env/s, p50 {} ms, p99 {} ms, {:.1} ops/request",
            run.rate, run.p50, run.p99, run.ops_per_request
        );
        rows.push(Row {
            what: format!("delivery, {label} (envelopes/s)"),
            figure: format!("{:.0}", run.rate),
            baseline: format!("{ceiling:.0} (bare consumer)"),
            ratio: format!("{:.0}%", 100.0 * run.rate / ceiling),
        });
        rows.push(Row {
            what: format!("delivery, {label}: CPU per envelope (µs, user + system)"),
            figure: format!("{:.1}", run.cpu_per_event),
            baseline: format!(
                "{bare_cpu_per_message:.1} (bare consumer); {relay_cpu:.1} (bare consume+confirmed publish+ack)"
            ),
            ratio: format!("{:.1}x", run.cpu_per_event / relay_cpu.max(0.1)),
        });
        rows.push(Row {
            what: format!("latency publish -> Customer.io, {label} (p50 / p99 ms)"),
            figure: format!("{} / {}", run.p50, run.p99),
            baseline: "-".into(),
            ratio: format!("{:.1} ops per request", run.ops_per_request),
        });
        if budget.is_none() {
            rows.push(Row {
                what: "gateway RSS after 10k users (MiB)".into(),
                figure: format!("{:.1}", run.rss_small),
                baseline: "-".into(),
                ratio: "-".into(),
            });
            rows.push(Row {
                what: "gateway RSS after 100k more distinct users (MiB); peak".into(),
                figure: format!("{:.1}; peak {:.1}", run.rss_large, run.rss_peak),
                baseline: format!("{:.1} (10k users)", run.rss_small),
                ratio: format!("{:.2}x", run.rss_large / run.rss_small),
            });
            let (gw_rps, gw_p99) = (run.webhook_rps, run.webhook_p99);
            let cpu = CpuMeter::start(std::process::id());
            let (bare_rps, bare_p99) = bare_webhook_handler(&args).await?;
            let bare_cpu = cpu.per_request(args.webhooks);
            rows.push(Row {
                what: "webhook ingestion, signed + durable publish (req/s; p99 ms)".into(),
                figure: format!("{gw_rps:.0}; p99 {gw_p99:.1}"),
                baseline: format!("{bare_rps:.0}; p99 {bare_p99:.1} (bare actix-web 200)"),
                ratio: format!("{:.0}%", 100.0 * gw_rps / bare_rps),
            });
            rows.push(Row {
                what: "webhook ingestion, CPU per request (µs)".into(),
                figure: run.webhook_cpu.clone(),
                baseline: format!("{bare_cpu} (bare: handler and load generator share a process)"),
                ratio: "-".into(),
            });
        }
    }

    let builtin = drain(args.envelopes, args.users, "builtin", "track").await?;
    let (builtin_rate, builtin_cpu) = (builtin.rate, builtin.cpu);
    println!(
        "gateway unlimited, builtin partitioner: {builtin_rate:.0} env/s, {builtin_cpu:.1} µs CPU/envelope"
    );
    rows.push(Row {
        what: "delivery, unlimited, `broker.partitioner = builtin` (envelopes/s; CPU µs each)"
            .into(),
        figure: format!("{builtin_rate:.0}; {builtin_cpu:.1}"),
        baseline: format!("{modulus_rate:.0} (modulus-hash, unlimited)"),
        ratio: format!("{:.0}%", 100.0 * builtin_rate / modulus_rate.max(1.0)),
    });

    let track = drain(args.envelopes, args.users, "modulus-hash", "track").await?;
    let pipelines = drain(args.envelopes, args.users, "modulus-hash", "pipelines").await?;
    println!("{}", apis_line(&args, &track, &pipelines));
    rows.push(Row {
        what: "backlog drain through the Pipelines API (envelopes/s; CPU µs each)".into(),
        figure: format!("{:.0}; {:.1}", pipelines.rate, pipelines.cpu),
        baseline: format!(
            "{:.0}; {:.1} (Track API, same backlog)",
            track.rate, track.cpu
        ),
        ratio: format!("{:.0}%", 100.0 * pipelines.rate / track.rate.max(1.0)),
    });

    let adaptive = adaptive_budget_run(&args).await?;
    println!(
        "gateway at 100 + 100 req/s against a 50 req/s shared budget: {} envelopes in {:.1} s, {:.1} req/s accepted, {} answered 429, {} dead-lettered, {} undelivered",
        adaptive.envelopes,
        adaptive.seconds,
        adaptive.accepted_rps,
        adaptive.rate_limited,
        adaptive.dead_letters,
        adaptive.undelivered
    );
    rows.push(Row {
        what: format!(
            "adaptive budget: {} mixed envelopes, configured 100 + 100 req/s, Customer.io allows {ADAPTIVE_BUDGET} shared (req/s accepted; 429s; dead letters; undelivered)",
            adaptive.envelopes
        ),
        figure: format!(
            "{:.1}; {} 429s of {} requests; {}; {}",
            adaptive.accepted_rps,
            adaptive.rate_limited,
            adaptive.requests,
            adaptive.dead_letters,
            adaptive.undelivered
        ),
        baseline: format!("{ADAPTIVE_BUDGET} (the real budget)"),
        ratio: format!("{:.0}%", 100.0 * adaptive.accepted_rps / ADAPTIVE_BUDGET as f64),
    });

    println!("\n| measure | cio-gateway | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.figure, r.baseline, r.ratio
        );
    }
    Ok(())
}

/// The backlog drain at two scales, each beside the floor of the same work measured in the same
/// run; the larger one's RSS against the smaller one's.
async fn backlog_scales(args: &Args) -> anyhow::Result<()> {
    let mut small_rss = None;
    for scale in [1, 10] {
        let (envelopes, users) = (args.envelopes * scale, args.users * scale);
        let floor = bare_consumer_rate(envelopes, users, true).await?;
        let gateway = drain(envelopes, users, "modulus-hash", "track").await?;
        let rss_ratio = gateway.rss / *small_rss.get_or_insert(gateway.rss);
        println!(
            "backlog {envelopes} envelopes / {users} users: gateway {:.0} env/s ({:.1} µs CPU each), floor (consume+confirmed publish+ack) {:.0} msg/s ({:.1} µs, RabbitMQ {:.0} µs): {:.2} of the floor; gateway RSS {:.1} MiB ({rss_ratio:.2}x the {}-envelope drain's); CPU µs per envelope: {}",
            gateway.rate,
            gateway.cpu,
            floor.rate,
            floor.cpu,
            floor.rabbitmq,
            gateway.rate / floor.rate,
            gateway.rss,
            args.envelopes,
            gateway.cpu_shares
        );
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The n-th envelope: users in turn, identify and track mixed (transactional sends are one
/// App API request each and would measure the App budget, not the pipeline).
fn envelope(n: usize, users: usize, offset: usize) -> Value {
    let user = format!("user-{}", offset + n % users);
    let now = chrono::Utc::now().timestamp_millis();
    let id = ulid::Ulid::new().to_string();
    if n.is_multiple_of(4) {
        json!({"type": "identify", "userId": user, "timestamp": now, "correlationId": id,
            "payload": {"plan": "pro", "n": n, "sent_ms": now}})
    } else {
        json!({"type": "track", "userId": user, "timestamp": now, "correlationId": id,
            "payload": {"name": "page_viewed", "data": {"n": n, "sent_ms": now}}})
    }
}

async fn publish(broker: &SharedBroker, count: usize, users: usize, offset: usize) {
    let publisher = Publisher::new(broker.clone());
    let mut sent = futures::stream::iter(0..count)
        .map(|n| {
            let publisher = publisher.clone();
            async move { publisher.publish(envelope(n, users, offset)).await }
        })
        .buffer_unordered(512);
    while let Some(result) = sent.next().await {
        result.expect("published");
    }
}

/// A bare consumer's messages/s, and the CPU time (user + system) per message in µs that it
/// and RabbitMQ spent.
struct Floor {
    rate: f64,
    cpu: f64,
    rabbitmq: f64,
}

/// What a bare consumer achieves. With
/// `relay`, each message is first published on to `customerio.processed` and confirmed, and
/// acked only then, as the gateway settles a delivery.
async fn bare_consumer_rate(envelopes: usize, users: usize, relay: bool) -> anyhow::Result<Floor> {
    let vhost = TestVhost::new(if relay {
        "bench-relay"
    } else {
        "bench-baseline"
    });
    let producer = broker::connect(&vhost.url, Topology::new(PARTITIONS)).await?;
    publish(&producer, envelopes, users, 0).await;
    producer.close().await;

    let cpu_before = cpu_seconds(Some(std::process::id()));
    let rabbitmq_before = cpu_seconds(pid_of("beam.smp"));
    let connection = lapin::Connection::connect(&vhost.url, Default::default()).await?;
    let mut tasks = Vec::new();
    for queue in Topology::new(PARTITIONS).partition_queues() {
        let channel = connection.create_channel().await?;
        channel.basic_qos(500, BasicQosOptions::default()).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await?;
        let expected = vhost.queue_depths().get(&queue).copied().unwrap_or(0);
        // Acks are pipelined (many in flight), as the gateway's are: this is the ceiling of
        // consuming these queues on this machine, not of one-at-a-time acking.
        tasks.push(tokio::spawn(async move {
            let mut acks = futures::stream::FuturesUnordered::new();
            let (mut received, mut first, mut last) = (0u64, None, Instant::now());
            while received < expected {
                tokio::select! {
                    Some(_) = acks.next(), if !acks.is_empty() => {}
                    delivery = consumer.next() => {
                        let Some(Ok(delivery)) = delivery else { break };
                        first.get_or_insert_with(Instant::now);
                        received += 1;
                        let publisher = publisher.clone();
                        acks.push(async move {
                            if relay {
                                let properties = BasicProperties::default().with_delivery_mode(2);
                                publisher
                                    .basic_publish(
                                        PROCESSED_EXCHANGE.into(),
                                        delivery.routing_key.as_str().into(),
                                        BasicPublishOptions::default(),
                                        &delivery.data,
                                        properties,
                                    )
                                    .await?
                                    .await?;
                            }
                            delivery.ack(BasicAckOptions::default()).await
                        });
                    }
                }
            }
            while acks.next().await.is_some() {}
            last = last.max(Instant::now());
            drop(channel);
            (received, first, last)
        }));
    }
    let (mut total, mut first, mut last) = (0, None::<Instant>, None::<Instant>);
    for task in tasks {
        let (n, f, l) = task.await?;
        total += n;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = Some(last.map_or(l, |x: Instant| x.max(l)));
    }
    let started = first.unwrap_or_else(Instant::now);
    let finished = last.unwrap_or_else(Instant::now);
    let rate = total as f64 / (finished - started).as_secs_f64().max(1e-3);
    let cpu = (cpu_seconds(Some(std::process::id())) - cpu_before) * 1e6 / total.max(1) as f64;
    let rabbitmq = (cpu_seconds(pid_of("beam.smp")) - rabbitmq_before) * 1e6 / total.max(1) as f64;
    let _ = connection.close(200, "done".into()).await;
    Ok(Floor {
        rate,
        cpu,
        rabbitmq,
    })
}

struct DeliveryRun {
    rate: f64,
    /// The gateway's CPU time (user + system) per delivered envelope, in µs.
    cpu_per_event: f64,
    p50: i64,
    p99: i64,
    ops_per_request: f64,
    rss_small: f64,
    rss_large: f64,
    rss_peak: f64,
    webhook_rps: f64,
    webhook_p99: f64,
    webhook_cpu: String,
}

/// CPU time (user + system, from /proc) that the gateway, RabbitMQ and this process (the load
/// generator and sandbox) spend during one phase: on a shared machine, what bounds a rate.
struct CpuMeter {
    pids: [(&'static str, Option<u32>); 3],
    start: [f64; 3],
}

impl CpuMeter {
    fn start(gateway: u32) -> Self {
        let rabbitmq = pid_of("beam.smp");
        let pids = [
            ("gateway", Some(gateway)),
            ("RabbitMQ", rabbitmq),
            ("load generator", Some(std::process::id())),
        ];
        let start = pids.map(|(_, pid)| cpu_seconds(pid));
        Self { pids, start }
    }

    /// "gateway 123, RabbitMQ 130, load generator 36": microseconds per request.
    fn per_request(&self, requests: usize) -> String {
        let parts: Vec<String> = self
            .pids
            .iter()
            .zip(self.start)
            .filter(|((_, pid), _)| pid.is_some())
            .map(|((name, pid), start)| {
                let micros = (cpu_seconds(*pid) - start) * 1e6 / requests.max(1) as f64;
                format!("{name} {micros:.0}")
            })
            .collect();
        parts.join(", ")
    }
}

/// utime + stime of a process, in seconds (0 if it is gone).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The first process whose command name is `name`.
fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

thread_local! {
    /// The gateway binary to run instead of this build's (`--previous-gateway`).
    static GATEWAY_BINARY: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// Kills the gateway on drop, even when the bench fails.
struct GatewayProcess(Child, u16);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl GatewayProcess {
    fn start(vhost: &TestVhost, sandbox: &RunningSandbox, track_rps: u32) -> anyhow::Result<Self> {
        Self::start_with(vhost, sandbox, track_rps, &[])
    }

    fn start_with(
        vhost: &TestVhost,
        sandbox: &RunningSandbox,
        track_rps: u32,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let binary = match GATEWAY_BINARY.with(|b| b.borrow().clone()) {
            Some(binary) => binary,
            None => std::env::current_exe()?
                .parent()
                .and_then(|p| p.parent())
                .map(|p| p.join("cio-gateway"))
                .filter(|p| p.exists())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "build the gateway first: cargo build --release --bins --examples"
                    )
                })?,
        };
        let data = std::env::temp_dir().join(format!("cio-bench-{}", ulid::Ulid::new()));
        let mut command = Command::new(binary);
        command.envs(extra.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("serve")
            .env("GATEWAY__BROKER__URL", &vhost.url)
            .env("GATEWAY__BROKER__PARTITIONS", PARTITIONS.to_string())
            .env("GATEWAY__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("GATEWAY__CUSTOMERIO__TRACK_URL", sandbox.track_url())
            .env("GATEWAY__CUSTOMERIO__APP_URL", sandbox.app_url())
            .env("GATEWAY__CUSTOMERIO__TRACK_RPS", track_rps.to_string())
            .env("GATEWAY__WEBHOOKS__SIGNING_SECRETS", SECRET)
            .env("GATEWAY__APP__DATA_DIR", data.display().to_string())
            .env(
                "GATEWAY__WAREHOUSE__PATH",
                data.join("warehouse").display().to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self(child, port))
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.1);
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("gateway not ready")
    }

    /// (current RSS, peak RSS) in MiB, from /proc.
    fn memory(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

async fn wait_accepted(
    sandbox: &RunningSandbox,
    count: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while sandbox.sandbox.stats().accepted_ops < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} delivered",
            sandbox.sandbox.stats().accepted_ops
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `extras`: with no budget, also the memory and webhook phases.
async fn delivery_run(
    args: &Args,
    budget: Option<u32>,
    extras: bool,
) -> anyhow::Result<DeliveryRun> {
    let vhost = TestVhost::new("bench-delivery");
    let sandbox = sandbox::spawn(SandboxConfig {
        rps: budget,
        ..SandboxConfig::default()
    })
    .await?;
    let producer = broker::connect(&vhost.url, Topology::new(PARTITIONS)).await?;
    // Throughput: drain a backlog, from the first operation Customer.io accepts to the last.
    publish(&producer, args.envelopes, args.users, 0).await;
    let gateway = GatewayProcess::start(&vhost, &sandbox, budget.unwrap_or(1_000_000))?;
    let cpu_before = cpu_seconds(Some(gateway.0.id()));
    wait_accepted(&sandbox, args.envelopes as u64, Duration::from_secs(600)).await?;
    let cpu_per_event =
        (cpu_seconds(Some(gateway.0.id())) - cpu_before) * 1e6 / args.envelopes as f64;
    let records = sandbox.sandbox.records();
    let first = records.iter().map(|r| r.received_at_ms).min().unwrap_or(0);
    let last = records.iter().map(|r| r.received_at_ms).max().unwrap_or(0);
    let rate = records.len() as f64 / ((last - first).max(1) as f64 / 1000.0);
    let ops_per_request = records.len() as f64 / sandbox.sandbox.stats().requests.max(1) as f64;
    let (rss_small, _) = gateway.memory();

    // Latency: a steady stream at a quarter of that rate, publish to acceptance.
    sandbox.sandbox.reset();
    let paced = (args.envelopes / 5).max(1000);
    let per_second = (rate / 4.0).clamp(100.0, 20_000.0);
    let publisher = Publisher::new(producer.clone());
    let started = Instant::now();
    let mut pending = Vec::new();
    for n in 0..paced {
        let due = started + Duration::from_secs_f64(n as f64 / per_second);
        tokio::time::sleep_until(due.into()).await;
        let publisher = publisher.clone();
        let envelope = envelope(n, args.users, 0);
        pending.push(tokio::spawn(
            async move { publisher.publish(envelope).await },
        ));
    }
    for p in pending {
        p.await??;
    }
    wait_accepted(&sandbox, paced as u64, Duration::from_secs(600)).await?;
    // v2 operations carry identify attributes and event properties under `attributes`.
    let mut latencies: Vec<i64> = sandbox
        .sandbox
        .records()
        .iter()
        .filter_map(|r| {
            let sent = r
                .body
                .pointer("/attributes/sent_ms")
                .and_then(Value::as_i64)?;
            Some(r.received_at_ms - sent)
        })
        .collect();
    let (p50, p99) = percentiles(&mut latencies);

    let mut run = DeliveryRun {
        rate,
        cpu_per_event,
        p50,
        p99,
        ops_per_request,
        rss_small,
        rss_large: 0.0,
        rss_peak: 0.0,
        webhook_rps: 0.0,
        webhook_p99: 0.0,
        webhook_cpu: String::new(),
    };
    if budget.is_none() && extras {
        // Memory: 100k distinct new users, one envelope each; idle users' lanes are evicted.
        sandbox.sandbox.reset();
        publish(&producer, 100_000, 100_000, 1_000_000).await;
        wait_accepted(&sandbox, 100_000, Duration::from_secs(600)).await?;
        let (rss, peak) = gateway.memory();
        run.rss_large = rss;
        run.rss_peak = peak;
        gateway.wait_ready().await?;
        let cpu = CpuMeter::start(gateway.0.id());
        let (rps, p99) = webhook_load(
            &format!("http://127.0.0.1:{}/webhooks/customerio", gateway.1),
            args,
        )
        .await?;
        run.webhook_rps = rps;
        run.webhook_p99 = p99;
        run.webhook_cpu = cpu.per_request(args.webhooks);
    }
    producer.close().await;
    drop(gateway);
    Ok(run)
}

/// What draining a backlog cost: envelopes/s (first to last operation accepted), the gateway's
/// CPU per envelope (µs) and its RSS after the drain (MiB).
struct Drain {
    rate: f64,
    cpu: f64,
    rss: f64,
    /// CPU per envelope of every process on the machine's cores (gateway, RabbitMQ, bench).
    cpu_shares: String,
}

/// A backlog of `envelopes` over `users`, published before the gateway starts, drained with the
/// given `broker.partitioner` (`builtin`: every envelope waits in the intake queue and the
/// gateway forwards it to its partition before delivering it) through `customerio.api`
/// (`track` or `pipelines`). Sandbox unlimited.
async fn drain(
    envelopes: usize,
    users: usize,
    partitioner: &str,
    api: &str,
) -> anyhow::Result<Drain> {
    let vhost = TestVhost::new("bench-drain");
    let sandbox = sandbox::spawn(SandboxConfig::default()).await?;
    let topology = match partitioner {
        "builtin" => Topology::new(PARTITIONS).routed_by_gateway(),
        _ => Topology::new(PARTITIONS),
    };
    let producer = broker::connect(&vhost.url, topology).await?;
    publish(&producer, envelopes, users, 0).await;
    producer.close().await;
    let gateway = GatewayProcess::start_with(
        &vhost,
        &sandbox,
        1_000_000,
        &[
            ("GATEWAY__BROKER__PARTITIONER", partitioner.into()),
            ("GATEWAY__CUSTOMERIO__API", api.into()),
            (
                "GATEWAY__CUSTOMERIO__PIPELINES_URL",
                sandbox.pipelines_url(),
            ),
            ("GATEWAY__CUSTOMERIO__PIPELINES_RPS", "1000000".into()),
        ],
    )?;
    let cpu_before = cpu_seconds(Some(gateway.0.id()));
    let meter = CpuMeter::start(gateway.0.id());
    wait_accepted(&sandbox, envelopes as u64, Duration::from_secs(1200)).await?;
    let cpu = (cpu_seconds(Some(gateway.0.id())) - cpu_before) * 1e6 / envelopes as f64;
    let cpu_shares = meter.per_request(envelopes);
    let (rss, _) = gateway.memory();
    let records = sandbox.sandbox.records();
    let first = records.iter().map(|r| r.received_at_ms).min().unwrap_or(0);
    let last = records.iter().map(|r| r.received_at_ms).max().unwrap_or(0);
    let rate = records.len() as f64 / ((last - first).max(1) as f64 / 1000.0);
    drop(gateway);
    Ok(Drain {
        rate,
        cpu,
        rss,
        cpu_shares,
    })
}

/// The Track and Pipelines drains of one backlog, side by side.
fn apis_line(args: &Args, track: &Drain, pipelines: &Drain) -> String {
    format!(
        "backlog of {} envelopes over {} users: Track API {:.0} env/s ({:.1} µs CPU each), Pipelines API {:.0} env/s ({:.1} µs), {:.0}%",
        args.envelopes,
        args.users,
        track.rate,
        track.cpu,
        pipelines.rate,
        pipelines.cpu,
        100.0 * pipelines.rate / track.rate.max(1.0)
    )
}

/// The request budget Customer.io enforces in the adaptive run: half of what the gateway is
/// configured with, and shared by the Track and App APIs (as a workspace's is).
const ADAPTIVE_BUDGET: u32 = 50;

struct AdaptiveRun {
    envelopes: usize,
    seconds: f64,
    requests: u64,
    accepted_rps: f64,
    rate_limited: u64,
    dead_letters: u64,
    undelivered: u64,
}

/// Mixed envelopes (one in five a transactional send, one App request each) through a gateway
/// configured at 100 req/s per API against a sandbox allowing 50 req/s for both: the rate
/// must settle near 50 with few 429s and nothing dead-lettered.
async fn adaptive_budget_run(args: &Args) -> anyhow::Result<AdaptiveRun> {
    let vhost = TestVhost::new("bench-adaptive");
    let sandbox = sandbox::spawn(SandboxConfig {
        rps: Some(ADAPTIVE_BUDGET),
        ..SandboxConfig::default()
    })
    .await?;
    let producer = broker::connect(&vhost.url, Topology::new(PARTITIONS)).await?;
    let count = (args.envelopes / 20).max(1000);
    let users = args.users.min(count);
    let publisher = Publisher::new(producer.clone());
    let mut sent = futures::stream::iter(0..count)
        .map(|n| {
            let publisher = publisher.clone();
            let mut body = envelope(n, users, 0);
            if n % 5 == 4 {
                body = json!({"type": "transactional", "userId": body["userId"],
                    "correlationId": body["correlationId"], "timestamp": body["timestamp"],
                    "payload": {"template": "welcome", "to": "someone@example.com",
                        "message_data": {"n": n}}});
            }
            async move { publisher.publish(body).await }
        })
        .buffer_unordered(512);
    while let Some(result) = sent.next().await {
        result.expect("published");
    }
    let extra = [
        ("GATEWAY__CUSTOMERIO__APP_RPS", "100".to_string()),
        ("GATEWAY__TEMPLATES__WELCOME", "7".to_string()),
    ];
    let gateway = GatewayProcess::start_with(&vhost, &sandbox, 100, &extra)?;
    let started = Instant::now();
    wait_accepted(&sandbox, count as u64, Duration::from_secs(900)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = sandbox.sandbox.stats();
    let dead_letters = vhost
        .queue_depths()
        .get(cio_gateway::broker::topology::DLQ_QUEUE)
        .copied()
        .unwrap_or(0);
    let delivered = stats.accepted_ops.saturating_sub(stats.duplicates);
    drop(gateway);
    producer.close().await;
    Ok(AdaptiveRun {
        envelopes: count,
        seconds,
        requests: stats.requests,
        accepted_rps: (stats.requests - stats.rate_limited) as f64 / seconds,
        rate_limited: stats.rate_limited,
        dead_letters,
        undelivered: (count as u64).saturating_sub(delivered),
    })
}

fn percentiles(values: &mut [i64]) -> (i64, i64) {
    if values.is_empty() {
        return (0, 0);
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

fn signed_webhook(n: usize) -> (String, String, Vec<u8>) {
    let body = serde_json::to_vec(&json!({"event_id": ulid::Ulid::new().to_string(),
        "object_type": "email", "metric": "delivered", "timestamp": chrono::Utc::now().timestamp(),
        "data": {"customer_id": format!("user-{n}"), "delivery_id": format!("d-{n}"),
            "recipient": "someone@example.com", "identifiers": {"id": format!("user-{n}")}}}))
    .expect("json");
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(&body);
    (timestamp, hex::encode(mac.finalize().into_bytes()), body)
}

/// Requests/s and p99 (ms) of `args.webhooks` signed POSTs, `args.concurrency` at a time.
async fn webhook_load(url: &str, args: &Args) -> anyhow::Result<(f64, f64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let requests: Vec<_> = (0..args.webhooks).map(signed_webhook).collect();
    let started = Instant::now();
    let mut latencies: Vec<i64> = futures::stream::iter(requests)
        .map(|(timestamp, signature, body)| {
            let client = client.clone();
            async move {
                let sent = Instant::now();
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("X-CIO-Timestamp", timestamp)
                    .header("X-CIO-Signature", signature)
                    .body(body)
                    .send()
                    .await
                    .expect("request sent");
                assert!(
                    response.status().is_success(),
                    "webhook answered {}",
                    response.status()
                );
                sent.elapsed().as_micros() as i64
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    let (_, p99) = percentiles(&mut latencies);
    Ok((rate, p99 as f64 / 1000.0))
}

/// The same load against an actix-web handler that reads the body and answers 200.
async fn bare_webhook_handler(args: &Args) -> anyhow::Result<(f64, f64)> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let server = HttpServer::new(|| {
        App::new().route(
            "/webhooks/customerio",
            web::post().to(|_body: web::Bytes| async { HttpResponse::Ok().finish() }),
        )
    })
    .workers(2)
    .bind("127.0.0.1:0")?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    let result = webhook_load(&format!("http://{addr}/webhooks/customerio"), args).await;
    handle.stop(false).await;
    result
}
