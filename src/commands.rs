//! The one-shot subcommands: sandbox, publish, dlq, topology, demo.

use crate::broker::{self, Topology};
use crate::cli::DlqAction;
use crate::config::Settings;
use crate::publisher::Publisher;
use crate::sandbox::{self, SandboxConfig};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::ExitCode;

pub async fn sandbox(addr: SocketAddr) -> anyhow::Result<ExitCode> {
    sandbox::serve(addr, SandboxConfig::default()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Commands that talk to a broker other processes share: the in-process one would vanish.
fn require_shared_broker(settings: &Settings, what: &str) -> anyhow::Result<()> {
    if settings.is_memory_broker() {
        bail!(
            "`{what}` needs RabbitMQ: set AMQP_URL or broker.url (in local mode, use POST /v1/events on the running service)"
        );
    }
    Ok(())
}

/// Whom `cio-gateway publish` names: `--user`, `--anonymous-id`, `--object TYPE:ID`.
pub struct Who {
    pub user: Option<String>,
    pub anonymous_id: Option<String>,
    pub object: Option<String>,
}

/// The envelope `cio-gateway publish` sends, as given (the publisher validates it).
pub fn envelope(
    kind: &str,
    who: Who,
    payload: &str,
    correlation_id: Option<String>,
) -> anyhow::Result<Value> {
    let payload: Value = serde_json::from_str(payload).context("--payload is not JSON")?;
    let mut envelope = json!({"type": kind, "payload": payload});
    if let Some(user) = who.user {
        envelope["userId"] = user.into();
    }
    if let Some(anonymous) = who.anonymous_id {
        envelope["anonymousId"] = anonymous.into();
    }
    if let Some(object) = who.object {
        let (type_id, id) = object
            .split_once(':')
            .context("--object is OBJECT_TYPE_ID:OBJECT_ID, e.g. 1:acme")?;
        envelope["objectTypeId"] = type_id.into();
        envelope["objectId"] = id.into();
    }
    if let Some(id) = correlation_id {
        envelope["correlationId"] = id.into();
    }
    Ok(envelope)
}

pub async fn publish(settings: Settings, envelope: Value) -> anyhow::Result<ExitCode> {
    require_shared_broker(&settings, "publish")?;
    let broker = broker::connect(
        settings.broker.url.expose(),
        Topology::for_settings(&settings),
    )
    .await?;
    let id = Publisher::new(broker.clone()).publish(envelope).await?;
    broker.close().await;
    println!("{}", json!({"published": true, "correlationId": id}));
    Ok(ExitCode::SUCCESS)
}

pub async fn topology(settings: Settings) -> anyhow::Result<ExitCode> {
    let topology = Topology::for_settings(&settings);
    if settings.is_memory_broker() {
        println!("# broker.url is memory://: nothing declared; this is the topology for RabbitMQ");
    } else {
        let broker = broker::connect(settings.broker.url.expose(), topology.clone()).await?;
        broker.close().await;
        println!("# declared on {}", redact_url(settings.broker.url.expose()));
    }
    print!("{}", topology.describe());
    Ok(ExitCode::SUCCESS)
}

/// `cio-gateway dlq list|show|replay|purge` (the logic is `crate::dlq_admin`, shared with the admin
/// routes). `list` prints a table (or JSON with `--json`); the others print JSON. Exit 1 when a
/// dead letter was not found or a replay stopped early, 2 for a refused or malformed request.
pub async fn dlq(settings: Settings, action: DlqAction) -> anyhow::Result<ExitCode> {
    use crate::dlq_admin::Selection;
    require_shared_broker(&settings, "dlq")?;
    let selection = match &action {
        DlqAction::Replay { count, filter } => {
            let selection = Selection {
                filter: filter.clone().into_filter(),
                limit: count.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            };
            // Replaying everything at once is a purge's cousin: ask for it by name.
            if selection.filter.is_empty() && selection.limit.is_none_or(|n| n == 0) {
                eprintln!(
                    "replay needs --count N (N >= 1) or a filter (--correlation-id, --error-kind, --type, --user, --since, --until)"
                );
                return Ok(ExitCode::from(2));
            }
            Some(selection)
        }
        DlqAction::Purge { filter, limit, .. } => Some(Selection {
            filter: filter.clone().into_filter(),
            limit: limit.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        }),
        _ => None,
    };
    let broker = broker::connect(
        settings.broker.url.expose(),
        Topology::for_settings(&settings),
    )
    .await?;
    let outcome = dlq_action(&broker, action, selection).await;
    broker.close().await;
    outcome
}

async fn dlq_action(
    broker: &crate::broker::SharedBroker,
    action: DlqAction,
    selection: Option<crate::dlq_admin::Selection>,
) -> anyhow::Result<ExitCode> {
    use crate::dlq_admin::{self as dlq, DlqError};
    match action {
        DlqAction::List {
            limit,
            json,
            filter,
        } => {
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            let listing = dlq::list(broker, &filter.into_filter(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", dlq_table(&listing));
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { correlation_id } => match dlq::show(broker, &correlation_id).await {
            Ok(letter) => {
                println!("{}", serde_json::to_string_pretty(&letter)?);
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ DlqError::NotFound(_)) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
        DlqAction::Replay { .. } => {
            let selection = selection.expect("checked above");
            let mut progress = ProgressLine::new("replay");
            match dlq::replay_with_progress(broker, &selection, &mut |p| progress.show(p)).await {
                Ok(report) => {
                    eprintln!(
                        "replay: {} replayed, {} skipped (not replayable){}; {} dead letter(s) left in customerio.dlq",
                        report.replayed.len(),
                        report.skipped.len(),
                        report
                            .error
                            .as_ref()
                            .map(|e| format!(", stopped early: {e}"))
                            .unwrap_or_default(),
                        report.remaining
                    );
                    if let Some(warning) = report.timestamp_warning() {
                        eprintln!("warning: {warning}");
                    }
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(if report.error.is_some() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    })
                }
                Err(e @ DlqError::NotFound(_)) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        DlqAction::Purge { yes, .. } => {
            let selection = selection.expect("checked above");
            if !yes {
                let n = broker.queue_len(crate::broker::topology::DLQ_QUEUE).await?;
                let which = if selection.filter.is_empty() && selection.limit.is_none() {
                    "all"
                } else {
                    "the selected ones of"
                };
                eprintln!("refusing to delete {which} {n} dead letter(s) without --yes");
                return Ok(ExitCode::from(2));
            }
            let mut progress = ProgressLine::new("purge");
            let purged =
                dlq::purge_with_progress(broker, &selection, &mut |p| progress.show(p)).await?;
            eprintln!("purge: {purged} dead letter(s) deleted");
            println!("{}", json!({"purged": purged}));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Progress of a long `dlq replay` / `purge` on stderr: a line every [`ProgressLine::EVERY`]
/// dead letters or every second, whichever comes first, and one at the end.
struct ProgressLine {
    verb: &'static str,
    last: std::time::Instant,
}

impl ProgressLine {
    const EVERY: u64 = 1000;

    fn new(verb: &'static str) -> Self {
        Self {
            verb,
            last: std::time::Instant::now(),
        }
    }

    fn show(&mut self, progress: crate::dlq_admin::Progress) {
        let due = progress.done.is_multiple_of(Self::EVERY)
            || progress.done == progress.of
            || self.last.elapsed() >= std::time::Duration::from_secs(1);
        if due {
            self.last = std::time::Instant::now();
            eprintln!("{}: {} of {}", self.verb, progress.done, progress.of);
        }
    }
}

/// The `dlq list` table: one line per dead letter, then a count.
fn dlq_table(listing: &crate::dlq_admin::Listing) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:<28} {:<14} {:<20} {:<10} {:>8}  ERROR\n",
        "CORRELATION ID", "TYPE", "USER", "KIND", "ATTEMPTS"
    );
    for d in &listing.dead_letters {
        let error: String = cell(&d.error).chars().take(60).collect();
        out += &format!(
            "{:<28} {:<14} {:<20} {:<10} {:>8}  {}\n",
            cell(&d.correlation_id),
            cell(&d.kind),
            cell(&d.user_id),
            cell(&d.error_kind),
            d.attempts
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            error.replace('\n', " "),
        );
    }
    out += &format!(
        "{} shown of {} matching, among {} looked at of {} dead letter(s) in customerio.dlq; none was removed\n",
        listing.dead_letters.len(),
        listing.matched,
        listing.scanned,
        listing.total
    );
    let counts = |by: &std::collections::BTreeMap<String, u64>| {
        let parts: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
        parts.join(", ")
    };
    out += &format!(
        "by errorKind: {}\nby type: {}\n",
        counts(&listing.summary.by_error_kind),
        counts(&listing.summary.by_type)
    );
    out
}

/// `cio-gateway status`: `GET /admin/status` of a running gateway, with `admin.token`, as a
/// table (or the JSON as served).
pub async fn status(
    settings: Settings,
    url: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let token = settings
        .admin
        .token
        .as_ref()
        .map(|t| t.expose().to_string())
        .filter(|t| !t.is_empty())
        .context("status needs admin.token (GATEWAY__ADMIN__TOKEN), as the gateway's")?;
    let base = url.unwrap_or_else(|| {
        format!(
            "http://{}",
            settings.http.admin_addr.unwrap_or(settings.http.addr)
        )
    });
    let response = reqwest::Client::new()
        .get(format!("{}/admin/status", base.trim_end_matches('/')))
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("asking {base}"))?;
    let code = response.status();
    let body: Value = response.json().await.context("the answer is not JSON")?;
    if !code.is_success() {
        eprintln!("{base} answered {code}: {body}");
        return Ok(ExitCode::FAILURE);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", status_table(&body));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `status` table: the build, one line per partition, one per API, then the backlogs.
fn status_table(status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    };
    let mut out = format!(
        "cio-gateway {} ({})\n\n{:<26} {:>9} {:>7} {:>7} {:>6} {:>5} {:>12}  OLDEST HELD ERROR\n",
        text(&status["version"]),
        text(&status["revision"]),
        "PARTITION",
        "RECEIVING",
        "READY",
        "UNACKED",
        "LANES",
        "HELD",
        "OLDEST (ms)"
    );
    for p in status["partitions"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<26} {:>9} {:>7} {:>7} {:>6} {:>5} {:>12}  {}\n",
            text(&p["partition"]),
            text(&p["receiving"]),
            text(&p["ready"]),
            text(&p["unacked"]),
            text(&p["lanes"]),
            text(&p["heldLanes"]),
            text(&p["oldestHeldAgeMs"]),
            text(&p["oldestHeldError"]),
        );
    }
    out += &format!(
        "\n{:<6} {:<7} {:<26} {:>15}  LAST ERROR\n",
        "API", "CIRCUIT", "OPEN SINCE", "RATE / CEILING"
    );
    for api in status["apis"].as_array().into_iter().flatten() {
        let circuit = &api["circuit"];
        let state = if circuit["open"] == Value::Bool(true) {
            "open"
        } else {
            "closed"
        };
        let rate = format!(
            "{:.1} / {:.0}",
            api["rateRps"].as_f64().unwrap_or(0.0),
            api["ceilingRps"].as_f64().unwrap_or(0.0)
        );
        out += &format!(
            "{:<6} {:<7} {:<26} {:>15}  {}\n",
            text(&api["api"]),
            state,
            text(&circuit["openSince"]),
            rate,
            text(&circuit["lastError"]),
        );
    }
    out += &format!(
        "\nwarehouse ({}): {} ready; preferences: {} change(s) to sync\n",
        text(&status["warehouse"]["queue"]),
        text(&status["warehouse"]["ready"]),
        text(&status["preferences"]["syncPending"]),
    );
    out
}

pub async fn demo(api: crate::config::DeliveryApi) -> anyhow::Result<ExitCode> {
    crate::demo::run(api).await
}

/// `amqp://user:pass@host/vhost` -> `amqp://user:***@host/vhost`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
