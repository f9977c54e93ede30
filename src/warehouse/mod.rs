//! Where reporting events end up (docs/reference.md §7): one [`Sink`] behind a trait, picked by
//! `warehouse.sink`. Every sink de-duplicates on `event_id`, so writing a batch again (after a
//! crash between the write and the ack) changes nothing.

mod bigquery;
mod bigquery_auth;
mod file;
mod postgres;

pub use bigquery::BigQuerySink;
pub use file::FileSink;
pub use postgres::PostgresSink;

use crate::config::{SinkKind, WarehouseSettings};
use crate::domain::Row;
use anyhow::Context as _;
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("file sink: {0}")]
    Io(#[from] std::io::Error),
    #[error("postgres sink: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("bigquery sink: {0}")]
    BigQuery(String),
    /// No access token could be had (metadata server down, key file unreadable): transient.
    #[error("bigquery sink: no access token: {0}")]
    Credentials(String),
    /// The sink stored nothing and named the rows it will never take (by index in the batch,
    /// with its reason); the others may be written again as they are.
    #[error("{sink} sink refused {} rows", rows.len())]
    RowsRejected {
        sink: &'static str,
        rows: Vec<(usize, String)>,
    },
}

impl SinkError {
    /// Whether writing the same rows again can never succeed (bad data, not a bad moment).
    /// Such a batch is split to find the rows at fault, which are dead-lettered.
    pub fn is_permanent(&self) -> bool {
        match self {
            SinkError::Postgres(sqlx::Error::Database(e)) => {
                // SQLSTATE classes 22 (data exception: a NUL in text, a value out of range)
                // and 23 (integrity constraint violation) are about the row, not the server.
                let code = e.code();
                let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
                matches!(class, Some("22" | "23"))
            }
            SinkError::Postgres(sqlx::Error::Encode(_)) => true,
            SinkError::RowsRejected { .. } => true,
            _ => false,
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The `sink` label of the metrics.
    fn name(&self) -> &'static str;

    /// Gets ready to write (migrations, connections); called before consuming, retried on error.
    async fn prepare(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Durably writes `rows`, skipping event ids already stored; returns how many were new
    /// (as far as the sink can tell). Returns only once the rows are committed.
    async fn write(&self, rows: &[Row]) -> Result<usize, SinkError>;
}

pub type SharedSink = Arc<dyn Sink>;

/// The sink `warehouse.sink` names. Does no I/O: connecting happens in [`Sink::prepare`].
pub fn from_settings(settings: &WarehouseSettings) -> anyhow::Result<SharedSink> {
    Ok(match settings.sink {
        SinkKind::File => Arc::new(FileSink::new(&settings.path, settings.rotate_bytes)),
        SinkKind::Postgres => {
            let url = settings
                .database_url
                .as_ref()
                .map(|u| u.expose().to_string())
                // DATABASE_URL reaches it through the configuration's conventional names.
                .context(
                    "configuration key `warehouse.database_url`: required for the postgres sink \
                     (or set DATABASE_URL)",
                )?;
            Arc::new(PostgresSink::new(&url).context("configuration key `warehouse.database_url`")?)
        }
        SinkKind::Bigquery => Arc::new(BigQuerySink::new(&settings.bigquery)?),
    })
}
