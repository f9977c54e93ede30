//! The PostgreSQL sink: table `delivery_events`, partitioned by RANGE on `timestamp`, one
//! partition per UTC day (`delivery_events_YYYYMMDD`), created on demand.
//!
//! The schema is idempotent DDL run in [`Sink::prepare`] rather than `sqlx migrate`: the same
//! database may hold the preferences store's own sqlx migrations, and two migration sets in
//! one `_sqlx_migrations` table refuse each other. Rows are inserted with
//! `ON CONFLICT DO NOTHING` on the primary key `(event_id, timestamp)` (a partitioned table's
//! key must include the partition column; an event's timestamp never changes between
//! Customer.io's retries), all chunks of a batch in one transaction.

use super::{Sink, SinkError};
use crate::domain::Row;
use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use parking_lot::Mutex;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use std::collections::HashSet;
use std::time::Duration;

/// Rows per INSERT statement: 15 binds each, well under PostgreSQL's 65535.
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
    PRIMARY KEY (event_id, "timestamp")
) PARTITION BY RANGE ("timestamp")
"#;

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
                 newsletter_id, transactional_message_id, identifiers, raw, received_at) ",
            );
            insert.push_values(chunk, |mut b, row| {
                b.push_bind(&row.event_id)
                    .push_bind(&row.object_type)
                    .push_bind(&row.metric)
                    .push_bind(row.timestamp)
                    .push_bind(&row.customer_id)
                    .push_bind(&row.recipient)
                    .push_bind(&row.delivery_id)
                    .push_bind(&row.campaign_id)
                    .push_bind(&row.action_id)
                    .push_bind(&row.broadcast_id)
                    .push_bind(&row.newsletter_id)
                    .push_bind(&row.transactional_message_id)
                    .push_bind(row.identifiers.clone().map(sqlx::types::Json))
                    .push_bind(sqlx::types::Json(row.raw.clone()))
                    .push_bind(row.received_at);
            });
            insert.push(" ON CONFLICT DO NOTHING");
            inserted += insert.build().execute(&mut *tx).await?.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}
