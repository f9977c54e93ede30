//! The PostgreSQL sink: table `delivery_events`, partitioned by RANGE on `timestamp`, one
//! partition per UTC day (`delivery_events_YYYYMMDD`), created on demand.
//!
//! The schema is idempotent DDL run in [`Sink::prepare`] rather than `sqlx migrate`: the same
//! database may hold the preferences store's own sqlx migrations, and two migration sets in
//! one `_sqlx_migrations` table refuse each other. Rows are inserted with
//! `ON CONFLICT DO NOTHING` on the primary key `(event_id, timestamp)` (a partitioned table's
//! key must include the partition column; an event's timestamp never changes between
//! Customer.io's retries), all chunks of a batch in one transaction.
//!
//! PostgreSQL's `text` and `jsonb` cannot hold U+0000, and a signed event may carry one (a
//! bounce's SMTP answer). Such characters are stored escaped, as the six characters `\u0000`,
//! and `raw_exact` (`bytea`, NULL otherwise) keeps the event's JSON exactly as received.

use super::{Sink, SinkError};
use crate::domain::Row;
use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use parking_lot::Mutex;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use std::collections::HashSet;
use std::time::Duration;

/// Rows per INSERT statement: 23 binds each, well under PostgreSQL's 65535.
const CHUNK: usize = 1000;

const CREATE_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS delivery_events (
    event_id                 text        NOT NULL,
    object_type              text        NOT NULL,
    metric                   text        NOT NULL,
    "timestamp"              timestamptz NOT NULL,
    customer_id              text,
    recipient                text,
    delivery_id              text,
    campaign_id              text,
    action_id                text,
    broadcast_id             text,
    newsletter_id            text,
    transactional_message_id text,
    identifiers              jsonb,
    raw                      jsonb       NOT NULL,
    received_at              timestamptz NOT NULL,
    raw_exact                bytea,
    journey_id               text,
    trigger_event_id         text,
    failure_message          text,
    href                     text,
    link_id                  text,
    machine                  boolean,
    prefetched               boolean,
    PRIMARY KEY (event_id, "timestamp")
) PARTITION BY RANGE ("timestamp")
"#;

/// Tables created before a column existed get it, in place (a partitioned table's new column
/// reaches every partition; existing rows read null).
const ADD_LATER_COLUMNS: &str = "ALTER TABLE delivery_events \
     ADD COLUMN IF NOT EXISTS raw_exact bytea, \
     ADD COLUMN IF NOT EXISTS journey_id text, \
     ADD COLUMN IF NOT EXISTS trigger_event_id text, \
     ADD COLUMN IF NOT EXISTS failure_message text, \
     ADD COLUMN IF NOT EXISTS href text, \
     ADD COLUMN IF NOT EXISTS link_id text, \
     ADD COLUMN IF NOT EXISTS machine boolean, \
     ADD COLUMN IF NOT EXISTS prefetched boolean";

/// What PostgreSQL text cannot hold, and what is stored instead.
const NUL: char = '\u{0}';
const NUL_ESCAPED: &str = "\\u0000";

fn escape_text(text: &Option<String>) -> Option<String> {
    text.as_ref().map(|t| t.replace(NUL, NUL_ESCAPED))
}

/// `value` with every NUL in its strings and keys escaped; `None` when it has none.
fn escape_json(value: &Value) -> Option<Value> {
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains(NUL),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains(NUL) || has_nul(v)),
            _ => false,
        }
    }
    fn escape(value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(s.replace(NUL, NUL_ESCAPED)),
            Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.replace(NUL, NUL_ESCAPED), escape(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    has_nul(value).then(|| escape(value))
}

pub struct PostgresSink {
    pool: PgPool,
    /// Day partitions known to exist.
    partitions: Mutex<HashSet<NaiveDate>>,
}

impl PostgresSink {
    /// Does not connect yet (see [`Sink::prepare`]); fails only on a malformed URL.
    pub fn new(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            partitions: Mutex::new(HashSet::new()),
        })
    }

    pub fn partition_name(day: NaiveDate) -> String {
        format!("delivery_events_{}", day.format("%Y%m%d"))
    }

    async fn ensure_partition(&self, day: NaiveDate) -> Result<(), sqlx::Error> {
        if self.partitions.lock().contains(&day) {
            return Ok(());
        }
        let name = Self::partition_name(day);
        let next = day.checked_add_days(Days::new(1)).unwrap_or(day);
        // Names and bounds come from a NaiveDate, never from input text.
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF delivery_events \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')"
        );
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await
        {
            // Another replica may have created it at the same moment.
            let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(&name)
                .fetch_one(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(e);
            }
        }
        self.partitions.lock().insert(day);
        Ok(())
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn prepare(&self) -> Result<(), SinkError> {
        sqlx::query(CREATE_TABLE).execute(&self.pool).await?;
        sqlx::query(ADD_LATER_COLUMNS).execute(&self.pool).await?;
        Ok(())
    }

    async fn write(&self, rows: &[Row]) -> Result<usize, SinkError> {
        let days: std::collections::BTreeSet<NaiveDate> = rows.iter().map(Row::day).collect();
        for day in days {
            self.ensure_partition(day).await?;
        }
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in rows.chunks(CHUNK) {
            let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO delivery_events (event_id, object_type, metric, \"timestamp\", \
                 customer_id, recipient, delivery_id, campaign_id, action_id, broadcast_id, \
                 newsletter_id, transactional_message_id, identifiers, raw, received_at, \
                 raw_exact, journey_id, trigger_event_id, failure_message, href, link_id, \
                 machine, prefetched) ",
            );
            insert.push_values(chunk, |mut b, row| {
                let raw_escaped = escape_json(&row.raw);
                let raw_exact = raw_escaped
                    .as_ref()
                    .and_then(|_| serde_json::to_vec(&row.raw).ok());
                let identifiers = row
                    .identifiers
                    .as_ref()
                    .map(|i| escape_json(i).unwrap_or_else(|| i.clone()));
                b.push_bind(escape_text(&Some(row.event_id.clone())))
                    .push_bind(escape_text(&Some(row.object_type.clone())))
                    .push_bind(escape_text(&Some(row.metric.clone())))
                    .push_bind(row.timestamp)
                    .push_bind(escape_text(&row.customer_id))
                    .push_bind(escape_text(&row.recipient))
                    .push_bind(escape_text(&row.delivery_id))
                    .push_bind(escape_text(&row.campaign_id))
                    .push_bind(escape_text(&row.action_id))
                    .push_bind(escape_text(&row.broadcast_id))
                    .push_bind(escape_text(&row.newsletter_id))
                    .push_bind(escape_text(&row.transactional_message_id))
                    .push_bind(identifiers.map(sqlx::types::Json))
                    .push_bind(sqlx::types::Json(
                        raw_escaped.unwrap_or_else(|| row.raw.clone()),
                    ))
                    .push_bind(row.received_at)
                    .push_bind(raw_exact)
                    .push_bind(escape_text(&row.journey_id))
                    .push_bind(escape_text(&row.trigger_event_id))
                    .push_bind(escape_text(&row.failure_message))
                    .push_bind(escape_text(&row.href))
                    .push_bind(escape_text(&row.link_id))
                    .push_bind(row.machine)
                    .push_bind(row.prefetched);
            });
            insert.push(" ON CONFLICT DO NOTHING");
            inserted += insert.build().execute(&mut *tx).await?.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}
