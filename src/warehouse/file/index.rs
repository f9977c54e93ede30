//! The file sink's de-duplication index: SQLite on disk (see the parent module's doc).

use super::segments::{
    day_of_segment, list_segments, read_ids, read_intent, temp_path, write_intent,
};
use super::{DEDUP_DAYS, SinkError, blocking, day_dir};
use chrono::NaiveDate;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a writer waits for another one (a replica) holding the index's write lock.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Ids per insert statement when indexing existing segments (bounds that statement's memory).
pub(super) const INSERT_CHUNK: usize = 10_000;

pub(super) const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY, day TEXT NOT NULL) \
     WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS event_ids_day ON event_ids (day)",
    "CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, day TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS days (day TEXT PRIMARY KEY, last_written INTEGER NOT NULL) \
     WITHOUT ROWID",
];

pub(super) struct Index {
    pub(super) pool: SqlitePool,
    pub(super) intent: PathBuf,
}

pub(super) fn day_key(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// The index's errors are the file sink's, and transient (a busy lock, a full disk).
pub(super) fn index_err(e: sqlx::Error) -> SinkError {
    SinkError::Io(std::io::Error::other(format!("index: {e}")))
}

/// Indexes the segments a crashed writer named in the intent file and did not record; returns
/// those this transaction indexed.
pub(super) async fn recover(
    tx: &mut Transaction<'static, Sqlite>,
    intent_path: &Path,
    root: &Path,
) -> Result<Vec<String>, SinkError> {
    let names = blocking({
        let path = intent_path.to_path_buf();
        move || read_intent(&path)
    })
    .await?;
    if names.is_empty() {
        return Ok(names);
    }
    let json = serde_json::to_string(&names).map_err(std::io::Error::other)?;
    let recorded: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT name FROM segments WHERE name IN (SELECT value FROM json_each(?1))",
    )
    .bind(json)
    .fetch_all(&mut **tx)
    .await
    .map_err(index_err)?
    .into_iter()
    .collect();
    let mut indexed = Vec::new();
    for name in names {
        if recorded.contains(&name) {
            continue;
        }
        let Some(day) = day_of_segment(&name) else {
            continue;
        };
        let path = root.join(&name);
        match blocking(move || read_ids(&path)).await? {
            Some(ids) => {
                tracing::warn!(segment = %name, rows = ids.len(),
                    "file sink: indexing a segment a crashed writer left unrecorded");
                record_segment(tx, &name, day, &ids).await?;
                indexed.push(name);
            }
            None => {
                // Never renamed into place: its writer is gone (we hold the lock), and so is
                // any use of its temporary file.
                let temp = temp_path(&root.join(&name));
                let _ = blocking(move || Ok(fs::remove_file(temp))).await;
            }
        }
    }
    Ok(indexed)
}

/// Indexes every segment of `day` if the index does not know the day.
pub(super) async fn ensure_day_indexed(
    tx: &mut Transaction<'static, Sqlite>,
    root: &Path,
    day: NaiveDate,
) -> Result<(), SinkError> {
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM days WHERE day = ?1")
        .bind(day_key(day))
        .fetch_optional(&mut **tx)
        .await
        .map_err(index_err)?;
    if known.is_some() {
        return Ok(());
    }
    let dir = root.join(day_dir(day));
    let names = blocking(move || list_segments(&dir)).await?;
    for name in names {
        let name = format!("{}/{name}", day_dir(day));
        let path = root.join(&name);
        if let Some(ids) = blocking(move || read_ids(&path)).await? {
            record_segment(tx, &name, day, &ids).await?;
        }
    }
    Ok(())
}

pub(super) async fn touch_day(
    tx: &mut Transaction<'static, Sqlite>,
    day: NaiveDate,
    now: i64,
) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO days (day, last_written) VALUES (?1, ?2) \
         ON CONFLICT (day) DO UPDATE SET last_written = max(last_written, excluded.last_written)",
    )
    .bind(day_key(day))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(index_err)?;
    Ok(())
}

/// Which of `ids` are stored already: one query.
pub(super) async fn lookup(
    tx: &mut Transaction<'static, Sqlite>,
    ids: &[&str],
) -> Result<HashSet<String>, SinkError> {
    let json = serde_json::to_string(ids).map_err(std::io::Error::other)?;
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM event_ids WHERE event_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json)
    .fetch_all(&mut **tx)
    .await
    .map_err(index_err)?;
    Ok(found.into_iter().collect())
}

/// Records a segment and its ids (ids stored already are kept as they are).
pub(super) async fn record_segment(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
    day: NaiveDate,
    ids: &[String],
) -> Result<(), SinkError> {
    for chunk in ids.chunks(INSERT_CHUNK) {
        let json = serde_json::to_string(chunk).map_err(std::io::Error::other)?;
        sqlx::query(
            "INSERT OR IGNORE INTO event_ids (event_id, day) SELECT value, ?2 FROM json_each(?1)",
        )
        .bind(json)
        .bind(day_key(day))
        .execute(&mut **tx)
        .await
        .map_err(index_err)?;
    }
    sqlx::query("INSERT OR IGNORE INTO segments (name, day) VALUES (?1, ?2)")
        .bind(name)
        .bind(day_key(day))
        .execute(&mut **tx)
        .await
        .map_err(index_err)?;
    Ok(())
}

/// Drops from the index the days not written since `now - DEDUP_DAYS`; returns how many ids
/// went.
pub(super) async fn prune(index: &Index, root: &Path, now: i64) -> Result<u64, SinkError> {
    let before = now - DEDUP_DAYS * 86_400;
    let mut tx = index
        .pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(index_err)?;
    // Settle the intent file first, so that the names it keeps cannot bring pruned ids back.
    let recovered = recover(&mut tx, &index.intent, root).await?;
    let mut deleted = Vec::new();
    for statement in [
        "DELETE FROM event_ids WHERE day IN (SELECT day FROM days WHERE last_written < ?1)",
        "DELETE FROM segments WHERE day IN (SELECT day FROM days WHERE last_written < ?1)",
        "DELETE FROM days WHERE last_written < ?1",
    ] {
        let done = sqlx::query(statement)
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(index_err)?;
        deleted.push(done.rows_affected());
    }
    let intent = index.intent.clone();
    blocking(move || write_intent(&intent, &recovered)).await?;
    tx.commit().await.map_err(index_err)?;
    Ok(deleted[0])
}
