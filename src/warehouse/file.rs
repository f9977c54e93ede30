//! The file sink: NDJSON under `<warehouse.path>/delivery_events/dt=YYYY-MM-DD/`.
//!
//! Each batch becomes new segment files, never an append: the lines are written to a hidden
//! temporary file in the partition directory, fsynced, renamed to `part-<ulid>.ndjson` and the
//! directory fsynced. A crash leaves either a whole segment or none, so no reader ever sees a
//! torn line. A segment holds at most `warehouse.rotate_bytes` (a larger batch is split), so
//! "rotation by size" is a property of how segments are cut; segment names sort by time.
//!
//! De-duplication: the event ids of a day partition are loaded from its segments the first time
//! the partition is written to (so a restart rebuilds them), and kept for the most recently
//! written [`MAX_DAYS_IN_MEMORY`] days. Lines whose event id is already stored are skipped.
//! Replicas sharing one directory only see each other's ids when they load a partition.

use super::{Sink, SinkError};
use crate::domain::Row;
use async_trait::async_trait;
use chrono::NaiveDate;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Day partitions whose event ids stay in memory.
pub const MAX_DAYS_IN_MEMORY: usize = 8;
/// A temporary file older than this is a leftover of a crash and is removed.
const STALE_TEMP: Duration = Duration::from_secs(3600);

pub struct FileSink {
    root: PathBuf,
    rotate_bytes: u64,
    days: Arc<Mutex<LruCache<NaiveDate, HashSet<String>>>>,
}

impl FileSink {
    /// `path` is `warehouse.path`; the table lives in `path/delivery_events`.
    pub fn new(path: &Path, rotate_bytes: u64) -> Self {
        Self {
            root: path.join("delivery_events"),
            rotate_bytes: rotate_bytes.max(1),
            days: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_DAYS_IN_MEMORY).expect("not zero"),
            ))),
        }
    }

    /// The directory of one day partition.
    pub fn partition_dir(root: &Path, day: NaiveDate) -> PathBuf {
        root.join("delivery_events")
            .join(format!("dt={}", day.format("%Y-%m-%d")))
    }

    fn write_blocking(&self, rows: &[Row]) -> Result<usize, SinkError> {
        let mut by_day: std::collections::BTreeMap<NaiveDate, Vec<&Row>> = Default::default();
        for row in rows {
            by_day.entry(row.day()).or_default().push(row);
        }
        let mut written = 0;
        for (day, rows) in by_day {
            match self.write_day(day, &rows) {
                Ok(n) => written += n,
                Err(e) => {
                    // What is on disk is the truth: reload the ids on the next attempt.
                    self.days.lock().pop(&day);
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    fn write_day(&self, day: NaiveDate, rows: &[&Row]) -> Result<usize, SinkError> {
        let dir = self.root.join(format!("dt={}", day.format("%Y-%m-%d")));
        // Directories appear with the first row, so an unused sink leaves no trace.
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            sync_dir(&self.root)?;
            if let Some(parent) = self.root.parent() {
                sync_dir(parent)?;
            }
        }
        let mut known = match self.days.lock().pop(&day) {
            Some(known) => known,
            None => load_ids(&dir)?,
        };
        let mut segments: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        let mut batch_ids = HashSet::new();
        for row in rows {
            if known.contains(&row.event_id) || !batch_ids.insert(row.event_id.as_str()) {
                continue;
            }
            let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let fits = segments
                .last()
                .is_some_and(|(bytes, _)| (bytes.len() + line.len()) as u64 <= self.rotate_bytes);
            if !fits {
                segments.push((Vec::new(), Vec::new()));
            }
            let (bytes, ids) = segments.last_mut().expect("just pushed");
            bytes.extend_from_slice(&line);
            ids.push(row.event_id.clone());
        }
        let mut written = 0;
        let result = segments.into_iter().try_for_each(|(bytes, ids)| {
            write_segment(&dir, &bytes)?;
            written += ids.len();
            known.extend(ids);
            Ok::<_, SinkError>(())
        });
        self.days.lock().put(day, known);
        result.map(|()| written)
    }
}

/// Writes one segment atomically: temp file, fsync, rename, fsync the directory.
fn write_segment(dir: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let id = ulid::Ulid::new();
    let temp = dir.join(format!(".part-{id}.ndjson.tmp"));
    let target = dir.join(format!("part-{id}.ndjson"));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    Ok(result?)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The event ids already stored in a partition; removes temp files a crash left behind.
fn load_ids(dir: &Path) -> Result<HashSet<String>, SinkError> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        event_id: String,
    }
    let mut ids = HashSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".part-") && name.ends_with(".tmp") {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > STALE_TEMP);
            if old {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if !(name.starts_with("part-") && name.ends_with(".ndjson")) {
            continue;
        }
        for line in BufReader::new(File::open(entry.path())?).lines() {
            if let Ok(row) = serde_json::from_str::<IdOnly>(&line?) {
                ids.insert(row.event_id);
            }
        }
    }
    Ok(ids)
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn write(&self, rows: &[Row]) -> Result<usize, SinkError> {
        let rows = rows.to_vec();
        let this = Self {
            root: self.root.clone(),
            rotate_bytes: self.rotate_bytes,
            days: self.days.clone(),
        };
        tokio::task::spawn_blocking(move || this.write_blocking(&rows))
            .await
            .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReportingEvent;
    use serde_json::json;

    fn row(id: &str, ts: i64) -> Row {
        let e = ReportingEvent::from_value(json!({"event_id": id, "object_type": "email",
            "metric": "sent", "timestamp": ts, "data": {"customer_id": "1"}}))
        .unwrap();
        Row::new(&e, chrono::Utc::now())
    }

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

    #[tokio::test]
    async fn partitions_by_utc_day_and_skips_duplicates_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        let day1 = 1_700_000_000; // 2023-11-14
        let day2 = day1 + 86_400;
        let n = sink
            .write(&[row("a", day1), row("b", day2), row("a", day1)])
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(sink.write(&[row("a", day1)]).await.unwrap(), 0);
        // A new sink (a restart) rebuilds the ids from the files.
        let again = FileSink::new(dir.path(), 1 << 20);
        assert_eq!(
            again
                .write(&[row("b", day2), row("c", day2)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            stored(dir.path()),
            vec![
                ("dt=2023-11-14".to_string(), "a".to_string()),
                ("dt=2023-11-15".to_string(), "b".to_string()),
                ("dt=2023-11-15".to_string(), "c".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn large_batches_are_cut_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 300);
        let rows: Vec<Row> = (0..10)
            .map(|i| row(&format!("e{i}"), 1_700_000_000))
            .collect();
        assert_eq!(sink.write(&rows).await.unwrap(), 10);
        let part = FileSink::partition_dir(dir.path(), rows[0].day());
        let segments = fs::read_dir(part).unwrap().count();
        assert_eq!(
            segments, 10,
            "each ~290-byte line gets its own segment at 300 bytes"
        );
        assert_eq!(stored(dir.path()).len(), 10);
    }
}
