//! Every metric the gateway exports, in one place: its name, kind and help text. Code refers to
//! the constants; [`describe`] gives Prometheus the help text; `deploy/check.sh` reads this file
//! to check that each one is documented in docs/operations.md.

/// What a metric is, for its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

macro_rules! catalogue {
    ($($kind:ident $name:ident = $value:literal: $help:literal;)*) => {
        $(#[doc = $help] pub const $name: &str = $value;)*
        /// Kind, name and help text of every metric.
        pub const ALL: &[(Kind, &str, &str)] = &[$((Kind::$kind, $value, $help)),*];
    };
}

catalogue! {
    Counter ENVELOPES_RECEIVED = "cio_gateway_envelopes_received_total":
        "Envelopes taken from the partition queues, by type.";
    Counter DELIVERIES = "cio_gateway_deliveries_total":
        "Envelopes settled, by type and outcome (success, dead_letter).";
    Histogram DELIVERY_DURATION = "cio_gateway_delivery_duration_seconds":
        "Publish-to-delivered time of an envelope, retries included.";
    Counter DELIVERY_RETRIES = "cio_gateway_delivery_retries_total":
        "Delivery attempts retried, by type.";
    Counter CUSTOMERIO_REQUESTS = "cio_gateway_customerio_requests_total":
        "Calls to Customer.io, by api and HTTP status (or error).";
    Histogram CUSTOMERIO_REQUEST_DURATION = "cio_gateway_customerio_request_duration_seconds":
        "Customer.io call latency, by api.";
    Counter DEAD_LETTERS = "cio_gateway_dead_letters_total":
        "Envelopes dead-lettered, by error_kind (invalid, rejected, exhausted).";
    Gauge BROKER_CONNECTED = "cio_gateway_broker_connected":
        "1 while connected to RabbitMQ.";
    Counter BROKER_PUBLISHER_REOPENED = "cio_gateway_broker_publisher_reopened_total":
        "Publishing channels replaced after 3 nacks in a row (a cluster node lost).";
    Counter BROKER_CONNECTIONS_ABANDONED = "cio_gateway_broker_connections_abandoned_total":
        "RabbitMQ connections given up because a confirm or answer was overdue (a silent partition).";
    Gauge ACTIVE_USERS = "cio_gateway_active_users":
        "Users with a message in flight or waiting on a retry.";
    Counter WEBHOOKS_RECEIVED = "cio_gateway_webhooks_received_total":
        "Verified reporting events, by object_type and metric.";
    Counter WEBHOOKS_REJECTED = "cio_gateway_webhooks_rejected_total":
        "Refused webhook requests, by reason (signature, stale, malformed, too_large).";
    Counter WEBHOOKS_UNPARSABLE = "cio_gateway_webhooks_unparsable_total":
        "Authentic webhook events that could not be parsed: answered 200 and dead-lettered (webhook_unparsable).";
    Counter PREFERENCES_REMOTE_CHANGES = "cio_gateway_preferences_remote_changes_total":
        "Subscription changes reported by Customer.io's webhooks, by outcome (applied, superseded: the local row is newer).";
    Counter WEBHOOKS_LATE = "cio_gateway_webhooks_late_total":
        "Authentic webhooks accepted with an old timestamp (Customer.io retries).";
    Counter WEBHOOKS_UNAVAILABLE = "cio_gateway_webhooks_unavailable_total":
        "Webhook requests answered 503 because RabbitMQ did not confirm them.";
    Counter WEBHOOK_ACTIONS = "cio_gateway_webhook_actions_total":
        "Actions taken on reporting events, by action and outcome.";
    Counter WAREHOUSE_ROWS = "cio_gateway_warehouse_rows_total":
        "Rows written to the warehouse, by sink.";
    Counter WAREHOUSE_WRITE_ERRORS = "cio_gateway_warehouse_write_errors_total":
        "Failed warehouse writes (retried), by sink.";
    Counter WAREHOUSE_ROWS_DEAD_LETTERED = "cio_gateway_warehouse_rows_dead_lettered_total":
        "Warehouse rows the sink refused for good, dead-lettered.";
    Gauge PREFERENCES_SYNC_PENDING = "cio_gateway_preferences_sync_pending":
        "Preference changes not yet synced to Customer.io (the whole store: take the max across pods).";
    Counter PREFERENCES_RESYNC_FAILURES = "cio_gateway_preferences_resync_failures_total":
        "Preference re-sync rounds that failed (retried with backoff).";
    Histogram BATCH_SIZE = "cio_gateway_batch_size":
        "Operations per Track v2 batch request.";
    Counter BATCH_SPLITS = "cio_gateway_batch_splits_total":
        "Whole-batch 4xx answers resolved by splitting the batch.";
    Gauge RATE_LIMIT_RPS = "cio_gateway_customerio_rate_limit_rps":
        "Request rate the adaptive budget allows now, by api.";
    Gauge BUILD_INFO = "cio_gateway_build_info":
        "1, labelled with the gateway's version and the source revision it was built from.";
    Gauge PARTITION_MESSAGES_READY = "cio_gateway_partition_messages_ready":
        "Messages ready in a partition queue, as RabbitMQ reports it (every replica reports the same queue).";
    Gauge PARTITION_MESSAGES_UNACKED = "cio_gateway_partition_messages_unacked":
        "Messages this replica holds unacked from a partition (in flight, retrying, or behind a user's earlier one).";
    Gauge CIRCUIT_OPEN = "cio_gateway_circuit_open":
        "1 while the api's circuit is open: the workspace fails, delivery is paused.";
    Counter DEAD_LETTERS_REPLAYED = "cio_gateway_dead_letters_replayed_total":
        "Dead letters replayed.";
    Counter DEAD_LETTERS_REPLAY_REFUSED = "cio_gateway_dead_letters_replay_refused_total":
        "Dead letters not replayed: their original exchange is not a replay target.";
    Counter INGEST_ACCEPTED = "cio_gateway_ingest_accepted_total":
        "Envelopes accepted by POST /v1/events.";
    Counter INGEST_REJECTED = "cio_gateway_ingest_rejected_total":
        "Envelopes refused by POST /v1/events.";
    Counter BIGQUERY_TOKEN_ERRORS = "cio_gateway_bigquery_token_errors_total":
        "Failures to obtain a BigQuery access token (retried; nothing is dead-lettered).";
    Counter BIGQUERY_UNAUTHORIZED = "cio_gateway_bigquery_unauthorized_total":
        "BigQuery insertAll answers 401 (the batch is retried with a fresh token).";
    Counter ACTOR_PANICS = "cio_gateway_actor_panics_total":
        "Delivery attempts that panicked (a bug); each is retried as a failed attempt.";
}

/// Registers every metric's help text with the installed recorder.
pub fn describe() {
    for &(kind, name, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram if name.ends_with("_seconds") => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_prefixed_and_follow_prometheus_conventions() {
        let names: BTreeSet<&str> = ALL.iter().map(|(_, name, _)| *name).collect();
        assert_eq!(names.len(), ALL.len(), "a name is listed twice");
        for (kind, name, help) in ALL {
            assert!(name.starts_with("cio_gateway_"), "{name}");
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.is_empty(), "{name} has no help text");
        }
    }
}
