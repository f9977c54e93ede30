//! What the gateway reports as it works: one function per event, which counts it in its metric
//! and writes its log line, so a metric and the log that explains it can never drift apart (a
//! counter bumped on one path and not on its twin, a label spelled two ways). Code that
//! reports calls these; nothing else touches `metrics::` or the metric names.

use super::metric;
use std::fmt::Display;
use std::time::Duration;

// ---- the process ----

/// Once at start: which build this replica runs.
pub fn build_info(version: &'static str, revision: &'static str) {
    metrics::gauge!(metric::BUILD_INFO, "version" => version, "revision" => revision).set(1.0);
}

// ---- delivery (shards) ----

/// An envelope taken from a partition queue; `kind` is its type, or `invalid` when it did not
/// parse.
pub fn envelope_received(kind: &'static str) {
    metrics::counter!(metric::ENVELOPES_RECEIVED, "type" => kind).increment(1);
}

/// A user's lane was opened (`true`) or dropped: the active-users gauge follows the lanes.
pub fn lane(open: bool) {
    let gauge = metrics::gauge!(metric::ACTIVE_USERS);
    if open {
        gauge.increment(1.0)
    } else {
        gauge.decrement(1.0)
    }
}

/// A failed attempt that is tried again after `delay`.
pub fn delivery_retried(
    kind: &'static str,
    user: &impl Display,
    correlation_id: Option<&str>,
    attempts: u32,
    delay: Duration,
    error: &str,
) {
    metrics::counter!(metric::DELIVERY_RETRIES, "type" => kind).increment(1);
    tracing::debug!(%user, ?correlation_id, attempts, ?delay, error, "retrying");
}

/// An envelope delivered; `published_ms` (its timestamp) gives the publish-to-delivered time.
pub fn delivered(kind: &'static str, published_ms: Option<i64>) {
    metrics::counter!(metric::DELIVERIES, "type" => kind, "outcome" => "success").increment(1);
    if let Some(published) = published_ms {
        let now = chrono::Utc::now().timestamp_millis();
        metrics::histogram!(metric::DELIVERY_DURATION, "type" => kind)
            .record((now - published).max(0) as f64 / 1000.0);
    }
}

/// An envelope settled as a dead letter (counted by error kind once it is confirmed:
/// [`dead_lettered`]).
pub fn delivery_dead_lettered(kind: &'static str) {
    metrics::counter!(metric::DELIVERIES, "type" => kind, "outcome" => "dead_letter").increment(1);
}

/// A dead letter confirmed by RabbitMQ.
pub fn dead_lettered(
    error_kind: &'static str,
    correlation_id: Option<&str>,
    routing_key: &str,
    error: &str,
) {
    metrics::counter!(metric::DEAD_LETTERS, "error_kind" => error_kind).increment(1);
    tracing::warn!(
        correlation_id = correlation_id.unwrap_or(""),
        kind = error_kind,
        routing_key,
        error,
        "dead-lettered"
    );
}

/// A delivery attempt panicked (a bug); it is retried as a failed attempt.
pub fn attempt_panicked(what: &str) {
    metrics::counter!(metric::ACTOR_PANICS).increment(1);
    tracing::error!(panic = %what, "delivery attempt panicked; the message is retried");
}

/// A Track v2 batch request of `ops` operations.
pub fn batch_sent(ops: usize) {
    metrics::histogram!(metric::BATCH_SIZE).record(ops as f64);
}

/// A batch refused as a whole, bisected to find the operation at fault.
pub fn batch_split(status: u16, ops: usize) {
    metrics::counter!(metric::BATCH_SPLITS).increment(1);
    tracing::debug!(status, ops, "batch refused as a whole: bisecting");
}

// ---- Customer.io ----

/// A request to Customer.io answered `status` (`error`: no answer) after `elapsed`.
pub fn customerio_request(
    api: &'static str,
    method: &impl Display,
    path: &str,
    status: &str,
    elapsed: Duration,
) {
    metrics::counter!(metric::CUSTOMERIO_REQUESTS, "api" => api, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(metric::CUSTOMERIO_REQUEST_DURATION, "api" => api)
        .record(elapsed.as_secs_f64());
    tracing::debug!(
        api,
        method = %method,
        path,
        status,
        elapsed_ms = elapsed.as_millis() as u64,
        "customer.io request"
    );
}

/// The request rate an API's budget allows now (set at start and on every change).
pub fn request_rate(api: &'static str, rps: f64) {
    metrics::gauge!(metric::RATE_LIMIT_RPS, "api" => api).set(rps);
}

/// Customer.io answered 429 and the budget lowered its rate to `rps`.
pub fn request_rate_lowered(api: &'static str, rps: f64, pause: Duration) {
    request_rate(api, rps);
    tracing::info!(
        api,
        rps,
        pause_ms = pause.as_millis() as u64,
        "Customer.io answered 429: request rate lowered"
    );
}

/// An API's circuit at start: closed.
pub fn circuit_created(api: &'static str) {
    metrics::gauge!(metric::CIRCUIT_OPEN, "api" => api).set(0.0);
}

/// An API's circuit opened: the workspace fails, delivery is paused.
pub fn circuit_opened(api: &'static str, reason: &str) {
    metrics::gauge!(metric::CIRCUIT_OPEN, "api" => api).set(1.0);
    tracing::warn!(api, reason, "Customer.io circuit opened: delivery paused");
}

/// An API's circuit closed after `open_for`: delivery resumes.
pub fn circuit_closed(api: &'static str, open_for: Duration) {
    metrics::gauge!(metric::CIRCUIT_OPEN, "api" => api).set(0.0);
    tracing::info!(
        api,
        open_for_ms = open_for.as_millis() as u64,
        "Customer.io circuit closed: delivery resumes"
    );
}

// ---- RabbitMQ ----

/// Messages ready in `partition`'s queue, read by a passive declare.
pub fn partition_ready(partition: &str, messages: u32) {
    metrics::gauge!(metric::PARTITION_MESSAGES_READY, "partition" => partition.to_string())
        .set(f64::from(messages));
}

/// Messages of `partition` this replica holds unacked (0 where it is not the active consumer).
pub fn partition_unacked(partition: &str, messages: usize) {
    metrics::gauge!(metric::PARTITION_MESSAGES_UNACKED, "partition" => partition.to_string())
        .set(messages as f64);
}

/// The connection to RabbitMQ is up (`true`) or down.
pub fn broker_connected(up: bool) {
    metrics::gauge!(metric::BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// The connection was given up as dead (heartbeats or confirms overdue): reconnecting.
pub fn broker_connection_abandoned(why: &str) {
    metrics::counter!(metric::BROKER_CONNECTIONS_ABANDONED).increment(1);
    tracing::warn!(why, "RabbitMQ connection considered dead; reconnecting");
}

/// The publishing channel was replaced after `nacks` nacks in a row.
pub fn publisher_reopened(nacks: u32) {
    metrics::counter!(metric::BROKER_PUBLISHER_REOPENED).increment(1);
    tracing::warn!(
        nacks,
        "publishes nacked in a row; reopened the publishing channel"
    );
}

// ---- ingestion ----

/// Envelopes accepted by `POST /v1/events`.
pub fn ingest_accepted(n: usize) {
    metrics::counter!(metric::INGEST_ACCEPTED).increment(n as u64);
}

/// Envelopes refused by `POST /v1/events`.
pub fn ingest_rejected(n: usize) {
    metrics::counter!(metric::INGEST_REJECTED).increment(n as u64);
}

// ---- reporting webhooks ----

/// A reporting event received; labels outside the known set are `other` (they come from
/// Customer.io's data, and must not grow the label space).
pub fn webhook_received(object_type: Option<&str>, metric_name: Option<&str>) {
    let label = |known: Option<&str>| known.unwrap_or("other").to_string();
    metrics::counter!(metric::WEBHOOKS_RECEIVED,
        "object_type" => label(object_type), "metric" => label(metric_name))
    .increment(1);
}

/// A webhook request refused (`reason`: the label; `error`: what the log says).
pub fn webhook_rejected(reason: &'static str, error: &impl Display) {
    metrics::counter!(metric::WEBHOOKS_REJECTED, "reason" => reason).increment(1);
    tracing::warn!(reason, error = %error, "webhook refused");
}

/// An authentic webhook signed long ago (a retry of Customer.io's), accepted.
pub fn webhook_late(age_secs: u64) {
    metrics::counter!(metric::WEBHOOKS_LATE).increment(1);
    tracing::info!(age_secs, "authentic webhook with an old timestamp accepted");
}

/// A signed event that did not parse, kept as a dead letter.
pub fn webhook_unparsable_kept() {
    metrics::counter!(metric::WEBHOOKS_UNPARSABLE).increment(1);
}

/// Webhook events the broker did not confirm: answered 503.
pub fn webhook_unavailable(error: &impl Display) {
    metrics::counter!(metric::WEBHOOKS_UNAVAILABLE).increment(1);
    tracing::error!(error = %error, "webhook events not confirmed by the broker; answering 503");
}

/// A reporting event the actions consumer could not parse (the warehouse dead-letters its
/// copy).
pub fn webhook_action_unparsable(error: &impl Display) {
    metrics::counter!(metric::WEBHOOK_ACTIONS, "action" => "none", "outcome" => "invalid")
        .increment(1);
    tracing::error!(error = %error, "unparseable webhook event; no action taken");
}

/// A reporting event acted on (or skipped, or to retry).
pub fn webhook_action(
    event_id: &impl Display,
    action: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    metrics::counter!(metric::WEBHOOK_ACTIONS, "action" => action, "outcome" => outcome)
        .increment(1);
    tracing::debug!(%event_id, action, outcome, ?took, "webhook event handled");
}

// ---- warehouse ----

/// `new` of `rows` written by the sink (the others it had already).
pub fn warehouse_written(sink: &'static str, rows: usize, new: usize) {
    metrics::counter!(metric::WAREHOUSE_ROWS, "sink" => sink).increment(new as u64);
    tracing::debug!(sink, rows, new, "warehouse batch committed");
}

/// A warehouse write failed; the batch is retried after `delay`. Logged as a warning when the
/// error is new (`repeated: false`), else at debug.
pub fn warehouse_write_failed(
    sink: &'static str,
    rows: usize,
    error: &str,
    delay: Duration,
    repeated: bool,
) {
    metrics::counter!(metric::WAREHOUSE_WRITE_ERRORS, "sink" => sink).increment(1);
    if repeated {
        tracing::debug!(
            sink,
            rows,
            error,
            ?delay,
            "warehouse write failed again; will retry the batch"
        );
    } else {
        tracing::warn!(
            sink,
            rows,
            error,
            ?delay,
            "warehouse write failed; will retry the batch (logged again when the error changes)"
        );
    }
}

/// A row the sink refused for good, sent to the dead letters.
pub fn warehouse_row_dead_lettered() {
    metrics::counter!(metric::WAREHOUSE_ROWS_DEAD_LETTERED).increment(1);
}

/// BigQuery answered 401: the next token is a fresh one.
pub fn bigquery_unauthorized() {
    metrics::counter!(metric::BIGQUERY_UNAUTHORIZED).increment(1);
}

/// No BigQuery access token could be had (retried; nothing is dead-lettered).
pub fn bigquery_token_failed() {
    metrics::counter!(metric::BIGQUERY_TOKEN_ERRORS).increment(1);
}

// ---- dead-letter tooling ----

/// A dead letter replayed to its original exchange.
pub fn dead_letter_replayed() {
    metrics::counter!(metric::DEAD_LETTERS_REPLAYED).increment(1);
}

/// A dead letter left in place: its original exchange is not a replay target.
pub fn dead_letter_replay_refused(correlation_id: Option<&str>, original_exchange: Option<&str>) {
    metrics::counter!(metric::DEAD_LETTERS_REPLAY_REFUSED).increment(1);
    tracing::warn!(
        ?correlation_id,
        ?original_exchange,
        "dead letter not replayed: its original exchange is not a replay target"
    );
}

// ---- preferences ----

/// Preference changes not yet synced to Customer.io (the whole store).
pub fn preferences_pending(count: u64) {
    metrics::gauge!(metric::PREFERENCES_SYNC_PENDING).set(count as f64);
}

/// A re-sync round failed; the next one is in `delay`.
pub fn preferences_resync_failed(error: &impl Display, delay: Duration) {
    metrics::counter!(metric::PREFERENCES_RESYNC_FAILURES).increment(1);
    tracing::warn!(error = %error, retry_in = ?delay, "preference re-sync failed");
}

/// A subscription change Customer.io reported, `applied` or `superseded` by a newer local one.
pub fn preferences_remote_change(
    event_id: &impl Display,
    user: &impl Display,
    outcome: &'static str,
) {
    metrics::counter!(metric::PREFERENCES_REMOTE_CHANGES, "outcome" => outcome).increment(1);
    tracing::info!(%event_id, %user, outcome, "subscription change from Customer.io");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every metric is reported here: a `metrics::` macro elsewhere is a second emit point.
    #[test]
    fn no_metric_is_reported_outside_this_module() {
        fn visit(dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("telemetry") {
                        visit(&path, found);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for macro_name in ["counter!", "gauge!", "histogram!"] {
                        if text.contains(&format!("metrics::{macro_name}")) {
                            found.push(format!("{} uses metrics::{macro_name}", path.display()));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        visit(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(found.is_empty(), "{found:#?}");
    }
}
