//! The file sink: NDJSON under `<warehouse.path>/delivery_events/dt=YYYY-MM-DD/`.
//!
//! Each batch becomes new segment files, never an append: the lines are written to a hidden
//! temporary file in the partition directory, fsynced, renamed to `part-<ulid>.ndjson` and the
//! directory fsynced. A crash leaves either a whole segment or none, so no reader ever sees a
//! torn line. A segment holds at most `warehouse.rotate_bytes` (a larger batch is split), so
//! "rotation by size" is a property of how segments are cut; segment names sort by time.
//!
//! De-duplication on `event_id` uses an index on disk, not memory:
//! `<warehouse.path>/_index/delivery_events.sqlite` (SQLite, WAL, `synchronous=FULL`), kept
//! out of the table directory so whatever lists its `dt=` partitions sees only data. It holds
//! every stored event id with its day, the segments already indexed, and when each day was
//! last written. Memory is SQLite's page cache ([`INDEX_CACHE_KIB`]) and one batch, however
//! many ids are stored.
//!
//! A batch is one `BEGIN IMMEDIATE` transaction: look the batch's ids up (one query per day),
//! write the segments, record their ids and names, commit. The write lock is held while the
//! segments are written, so replicas sharing the directory take turns and see each other's
//! ids.
//!
//! Crashes: before a segment is renamed into place its name is written, fsynced, to the intent
//! file `_index/delivery_events.pending`. Whoever takes the lock next (this process after a
//! restart, or another replica) first indexes any segment named there that exists but is not
//! indexed; so a crash between writing a segment and committing its ids can neither duplicate
//! a row (the ids are found) nor lose one (the message was not acked and is skipped only
//! because its row is on disk).
//!
//! A day the index does not know (the first write after upgrading from the in-memory index, a
//! day pruned, a deleted index) is indexed from its segments before it is written. Days not
//! written for [`DEDUP_DAYS`] are pruned from the index; writing one again re-indexes it, so
//! pruning costs a scan, never a duplicate.

mod index;
mod segments;

use super::{Sink, SinkError};
use crate::domain::Row;
use async_trait::async_trait;
use chrono::NaiveDate;
use index::{
    BUSY_TIMEOUT, Index, SCHEMA, ensure_day_indexed, index_err, lookup, prune, record_segment,
    recover, touch_day,
};
use segments::{create_dir_synced, sync_dir, write_intent, write_segment};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A day not written for this many days leaves the index (see the module doc).
pub const DEDUP_DAYS: i64 = 8;
/// SQLite's page cache for the index, in KiB: the memory the de-duplication uses.
pub const INDEX_CACHE_KIB: i64 = 8 * 1024;
/// How often a sink prunes the index.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct FileSink {
    /// `warehouse.path`.
    path: PathBuf,
    /// `warehouse.path/delivery_events`.
    root: PathBuf,
    rotate_bytes: u64,
    /// Opened with the first row, so an unused sink leaves no trace.
    index: tokio::sync::OnceCell<Index>,
    last_prune: parking_lot::Mutex<Option<Instant>>,
    /// Test hook: fail a write after its segments are in place and before its ids are
    /// committed, as a crash there would.
    #[cfg(test)]
    crash_before_commit: std::sync::atomic::AtomicBool,
}

/// One segment about to be written: its name relative to the table directory, its lines and
/// their ids.
struct Segment {
    name: String,
    day: NaiveDate,
    bytes: Vec<u8>,
    ids: Vec<String>,
}

impl FileSink {
    /// `path` is `warehouse.path`; the table lives in `path/delivery_events`.
    pub fn new(path: &Path, rotate_bytes: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            root: path.join("delivery_events"),
            rotate_bytes: rotate_bytes.max(1),
            index: tokio::sync::OnceCell::new(),
            last_prune: parking_lot::Mutex::new(None),
            #[cfg(test)]
            crash_before_commit: Default::default(),
        }
    }

    /// The directory of one day partition.
    pub fn partition_dir(root: &Path, day: NaiveDate) -> PathBuf {
        root.join("delivery_events").join(day_dir(day))
    }

    async fn open(&self) -> Result<&Index, SinkError> {
        self.index
            .get_or_try_init(|| async {
                // Two first connections to a new file race to switch it to WAL and create the
                // schema, and the loser gets SQLITE_BUSY at once (no busy wait for that). Sinks
                // of one process (tests, several sinks on one directory) open one at a time; a
                // replica racing us from another process gets a transient error, retried by
                // the warehouse writer like any other.
                static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
                let _opening = OPENING.lock().await;
                let dir = self.path.join("_index");
                blocking({
                    let dir = dir.clone();
                    move || create_dir_synced(&dir)
                })
                .await?;
                let options = SqliteConnectOptions::new()
                    .filename(dir.join("delivery_events.sqlite"))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // The intent file covers segments only while the index keeps its commits.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(BUSY_TIMEOUT)
                    .pragma("cache_size", format!("-{INDEX_CACHE_KIB}"));
                // One connection: writes take the index's write lock one at a time anyway.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .map_err(index_err)?;
                for statement in SCHEMA {
                    sqlx::query(statement)
                        .execute(&pool)
                        .await
                        .map_err(index_err)?;
                }
                Ok(Index {
                    pool,
                    intent: dir.join("delivery_events.pending"),
                })
            })
            .await
    }

    async fn write_rows(&self, rows: &[Row]) -> Result<usize, SinkError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let index = self.open().await?;
        let mut by_day: BTreeMap<NaiveDate, Vec<&Row>> = BTreeMap::new();
        for row in rows {
            by_day.entry(row.day()).or_default().push(row);
        }
        let now = chrono::Utc::now().timestamp();
        let mut tx = index
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(index_err)?;
        // Indexed in this transaction: still named in the next intent, in case it rolls back.
        let mut intent = recover(&mut tx, &index.intent, &self.root).await?;
        let mut segments = Vec::new();
        let mut batch_ids = HashSet::new();
        for (day, rows) in by_day {
            ensure_day_indexed(&mut tx, &self.root, day).await?;
            touch_day(&mut tx, day, now).await?;
            let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
            let known = lookup(&mut tx, &ids).await?;
            let first = segments.len();
            for row in rows {
                if known.contains(&row.event_id) || !batch_ids.insert(row.event_id.as_str()) {
                    continue;
                }
                let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
                line.push(b'\n');
                let fits = segments.len() > first
                    && segments.last().is_some_and(|s: &Segment| {
                        (s.bytes.len() + line.len()) as u64 <= self.rotate_bytes
                    });
                if !fits {
                    segments.push(Segment {
                        name: format!("{}/part-{}.ndjson", day_dir(day), ulid::Ulid::new()),
                        day,
                        bytes: Vec::new(),
                        ids: Vec::new(),
                    });
                }
                let segment = segments.last_mut().expect("just pushed");
                segment.bytes.extend_from_slice(&line);
                segment.ids.push(row.event_id.clone());
            }
        }
        if segments.is_empty() {
            tx.commit().await.map_err(index_err)?;
            return Ok(0);
        }
        intent.extend(segments.iter().map(|s| s.name.clone()));
        let written = match self.write_segments(&index.intent, intent, segments).await {
            Ok(segments) => segments,
            Err(e) => {
                // Segments already in place are named in the intent file: the next writer
                // indexes them.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        if self.crashes_before_commit() {
            let _ = tx.rollback().await;
            return Err(std::io::Error::other("test: crash before the index commit").into());
        }
        let mut count = 0;
        for segment in &written {
            record_segment(&mut tx, &segment.name, segment.day, &segment.ids).await?;
            count += segment.ids.len();
        }
        tx.commit().await.map_err(index_err)?;
        self.prune_now_and_then(index).await;
        Ok(count)
    }

    /// Names the segments in the intent file, then puts them in place; returns them without
    /// their bytes.
    async fn write_segments(
        &self,
        intent_path: &Path,
        intent: Vec<String>,
        segments: Vec<Segment>,
    ) -> Result<Vec<Segment>, SinkError> {
        let root = self.root.clone();
        let intent_path = intent_path.to_path_buf();
        blocking(move || {
            write_intent(&intent_path, &intent)?;
            let mut written = Vec::with_capacity(segments.len());
            for mut segment in segments {
                let target = root.join(&segment.name);
                let dir = target.parent().expect("a segment is in a day directory");
                // Directories appear with the first row of their day.
                if !dir.is_dir() {
                    fs::create_dir_all(dir)?;
                    sync_dir(&root)?;
                    if let Some(parent) = root.parent() {
                        sync_dir(parent)?;
                    }
                }
                write_segment(&target, &segment.bytes)?;
                segment.bytes = Vec::new();
                written.push(segment);
            }
            Ok(written)
        })
        .await
    }

    #[cfg(test)]
    fn crashes_before_commit(&self) -> bool {
        self.crash_before_commit
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn crashes_before_commit(&self) -> bool {
        false
    }

    async fn prune_now_and_then(&self, index: &Index) {
        {
            let mut last = self.last_prune.lock();
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = prune(index, &self.root, chrono::Utc::now().timestamp()).await {
            tracing::warn!(error = %e, "pruning the file sink's index failed; retried later");
        }
    }
}

pub(super) fn day_dir(day: NaiveDate) -> String {
    format!("dt={}", day.format("%Y-%m-%d"))
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn write(&self, rows: &[Row]) -> Result<usize, SinkError> {
        self.write_rows(rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReportingEvent;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    const DAY1: i64 = 1_700_000_000; // 2023-11-14
    const DAY2: i64 = DAY1 + 86_400;

    fn row(id: &str, ts: i64) -> Row {
        let e = ReportingEvent::from_value(json!({"event_id": id, "object_type": "email",
            "metric": "sent", "timestamp": ts, "data": {"customer_id": "1"}}))
        .unwrap();
        Row::new(&e, chrono::Utc::now())
    }

    /// (partition, event id) of every stored row, sorted; duplicates stay visible.
    fn stored(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for day in fs::read_dir(root.join("delivery_events")).unwrap() {
            let day = day.unwrap();
            for file in fs::read_dir(day.path()).unwrap() {
                let path = file.unwrap().path();
                assert!(path.extension().is_some_and(|e| e == "ndjson"), "{path:?}");
                for line in fs::read_to_string(&path).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    out.push((
                        day.file_name().to_string_lossy().into_owned(),
                        v["event_id"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    async fn indexed_ids(sink: &FileSink) -> i64 {
        let index = sink.open().await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM event_ids")
            .fetch_one(&index.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn partitions_by_utc_day_and_skips_duplicates_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        let n = sink
            .write(&[row("a", DAY1), row("b", DAY2), row("a", DAY1)])
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(sink.write(&[row("a", DAY1)]).await.unwrap(), 0);
        // A new sink (a restart) finds the ids in the index.
        let again = FileSink::new(dir.path(), 1 << 20);
        assert_eq!(
            again
                .write(&[row("b", DAY2), row("c", DAY2), row("a", DAY1)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            stored(dir.path()),
            pairs(&[
                ("dt=2023-11-14", "a"),
                ("dt=2023-11-15", "b"),
                ("dt=2023-11-15", "c")
            ])
        );
    }

    #[tokio::test]
    async fn an_unused_sink_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        assert_eq!(sink.write(&[]).await.unwrap(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn large_batches_are_cut_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 300);
        let rows: Vec<Row> = (0..10).map(|i| row(&format!("e{i}"), DAY1)).collect();
        assert_eq!(sink.write(&rows).await.unwrap(), 10);
        let part = FileSink::partition_dir(dir.path(), rows[0].day());
        let segments = fs::read_dir(part).unwrap().count();
        assert_eq!(
            segments, 10,
            "each ~290-byte line gets its own segment at 300 bytes"
        );
        assert_eq!(stored(dir.path()).len(), 10);
    }

    /// A crash after the segments are in place and before their ids are committed: the
    /// rows are on disk, the index does not have them, the messages are redelivered.
    #[tokio::test]
    async fn a_segment_written_but_not_indexed_is_honoured_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        sink.write(&[row("a", DAY1)]).await.unwrap();
        sink.crash_before_commit.store(true, Ordering::SeqCst);
        let batch = [row("b", DAY1), row("c", DAY2)];
        sink.write(&batch).await.unwrap_err();
        assert_eq!(
            indexed_ids(&sink).await,
            1,
            "the crash left b and c unrecorded"
        );
        drop(sink);

        let restarted = FileSink::new(dir.path(), 1 << 20);
        assert_eq!(restarted.write(&batch).await.unwrap(), 0);
        assert_eq!(
            restarted
                .write(&[row("c", DAY2), row("d", DAY2)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            stored(dir.path()),
            pairs(&[
                ("dt=2023-11-14", "a"),
                ("dt=2023-11-14", "b"),
                ("dt=2023-11-15", "c"),
                ("dt=2023-11-15", "d")
            ])
        );
    }

    /// The same crash seen by a replica that already uses the day: it does not rescan the
    /// day, the intent file tells it.
    #[tokio::test]
    async fn a_replica_honours_the_segments_of_a_crashed_one() {
        let dir = tempfile::tempdir().unwrap();
        let crashing = FileSink::new(dir.path(), 1 << 20);
        let replica = FileSink::new(dir.path(), 1 << 20);
        crashing.write(&[row("a", DAY1)]).await.unwrap();
        replica.write(&[row("b", DAY1)]).await.unwrap();
        crashing.crash_before_commit.store(true, Ordering::SeqCst);
        crashing.write(&[row("c", DAY1)]).await.unwrap_err();
        assert_eq!(
            replica
                .write(&[row("c", DAY1), row("a", DAY1)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            stored(dir.path()),
            pairs(&[
                ("dt=2023-11-14", "a"),
                ("dt=2023-11-14", "b"),
                ("dt=2023-11-14", "c")
            ])
        );
    }

    /// Segments the index never saw (written by the in-memory version before an upgrade, or
    /// by hand): the first write of their day indexes them.
    #[tokio::test]
    async fn segments_of_a_day_the_index_does_not_know_are_indexed_first() {
        let dir = tempfile::tempdir().unwrap();
        let part = FileSink::partition_dir(dir.path(), row("x", DAY1).day());
        fs::create_dir_all(&part).unwrap();
        let lines: String = ["old1", "old2"]
            .iter()
            .map(|id| serde_json::to_string(&row(id, DAY1)).unwrap() + "\n")
            .collect();
        fs::write(part.join("part-01AAAAAAAAAAAAAAAAAAAAAAAA.ndjson"), lines).unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        assert_eq!(
            sink.write(&[row("old2", DAY1), row("new", DAY1)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            stored(dir.path()),
            pairs(&[
                ("dt=2023-11-14", "new"),
                ("dt=2023-11-14", "old1"),
                ("dt=2023-11-14", "old2")
            ])
        );
    }

    #[tokio::test]
    async fn pruned_days_leave_the_index_and_are_reindexed_when_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        sink.write(&[row("a", DAY1), row("b", DAY2)]).await.unwrap();
        let index = sink.open().await.unwrap();
        let root = dir.path().join("delivery_events");
        let now = chrono::Utc::now().timestamp();
        let prune = |now| prune(index, &root, now);
        assert_eq!(prune(now).await.unwrap(), 0, "both days are recent");
        assert_eq!(prune(now + (DEDUP_DAYS + 1) * 86_400).await.unwrap(), 2);
        assert_eq!(indexed_ids(&sink).await, 0);
        // Writing day 1 again scans its segments: no duplicate.
        assert_eq!(
            sink.write(&[row("a", DAY1), row("c", DAY1)]).await.unwrap(),
            1
        );
        assert_eq!(indexed_ids(&sink).await, 2);
        assert_eq!(
            stored(dir.path()),
            pairs(&[
                ("dt=2023-11-14", "a"),
                ("dt=2023-11-14", "c"),
                ("dt=2023-11-15", "b")
            ])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_sharing_a_directory_store_each_id_once() {
        let dir = tempfile::tempdir().unwrap();
        let sinks: Vec<Arc<FileSink>> = (0..3)
            .map(|_| Arc::new(FileSink::new(dir.path(), 1 << 20)))
            .collect();
        // Every replica gets every id, in overlapping batches, at once.
        let tasks: Vec<_> = sinks
            .iter()
            .map(|sink| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut new = 0;
                    for batch in 0..10 {
                        let rows: Vec<Row> = (batch * 5..batch * 5 + 10)
                            .map(|i| row(&format!("r{i}"), DAY1 + i * 3_600))
                            .collect();
                        new += sink.write(&rows).await.unwrap();
                    }
                    new
                })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            new += task.await.unwrap();
        }
        assert_eq!(new, 55, "ids r0..r54, each counted by one replica");
        let rows = stored(dir.path());
        let ids: HashSet<_> = rows.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!((rows.len(), ids.len()), (55, 55));
    }

    /// Memory does not grow with the ids stored: the sink keeps no per-id structure (its
    /// fields are paths, the pool and a timestamp), and SQLite's memory stays within its page
    /// cache bound while the index on disk outgrows it.
    #[tokio::test]
    async fn two_hundred_thousand_ids_live_on_disk_not_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 64 << 20);
        let batch = 5_000;
        let mut peak_sqlite = 0i64;
        for b in 0..40 {
            let rows: Vec<Row> = (0..batch)
                .map(|i| row(&format!("event-{b:03}-{i:05}-padding-to-a-ulid"), DAY1 + i))
                .collect();
            assert_eq!(sink.write(&rows).await.unwrap(), batch as usize);
            // SAFETY: reads a counter; SQLite is thread-safe (SQLITE_THREADSAFE=1).
            peak_sqlite = peak_sqlite.max(unsafe { libsqlite3_sys::sqlite3_memory_used() });
        }
        assert_eq!(indexed_ids(&sink).await, 200_000);
        let db = dir.path().join("_index/delivery_events.sqlite");
        let on_disk = fs::metadata(&db).unwrap().len()
            + fs::metadata(db.with_extension("sqlite-wal")).map_or(0, |m| m.len());
        let bound = INDEX_CACHE_KIB * 1024;
        assert!(
            on_disk as i64 > bound,
            "the index ({on_disk} bytes) outgrows the page cache ({bound})"
        );
        // Other tests of this binary use SQLite too: allow them a few MiB besides the cache.
        assert!(
            peak_sqlite < bound + (8 << 20),
            "SQLite held {peak_sqlite} bytes for an index of {on_disk}"
        );
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&sink.open().await.unwrap().pool)
            .await
            .unwrap();
        assert_eq!(cache, -INDEX_CACHE_KIB);
        // And every id is still found: a restarted sink writes none of a sample again.
        let restarted = FileSink::new(dir.path(), 64 << 20);
        let again: Vec<Row> = (0..40)
            .map(|b| {
                row(
                    &format!("event-{b:03}-{:05}-padding-to-a-ulid", b * 97),
                    DAY1 + b * 97,
                )
            })
            .collect();
        assert_eq!(restarted.write(&again).await.unwrap(), 0);
    }
}
