//! The file sink's files: segments written atomically, the intent file that names segments
//! before they are put in place, and reading them back.

use super::SinkError;
use chrono::NaiveDate;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A temporary file older than this is a leftover of a crash and is removed.
pub(super) const STALE_TEMP: Duration = Duration::from_secs(3600);

/// `dt=YYYY-MM-DD/part-<ulid>.ndjson` -> its day; `None` for anything else.
pub(super) fn day_of_segment(name: &str) -> Option<NaiveDate> {
    let (dir, file) = name.split_once('/')?;
    let day = NaiveDate::parse_from_str(dir.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    let ok = file.starts_with("part-") && file.ends_with(".ndjson") && !file.contains('/');
    ok.then_some(day)
}

/// Replaces the intent file's names, durably (its directory entry was synced when created).
pub(super) fn write_intent(path: &Path, names: &[String]) -> Result<(), SinkError> {
    let created = !path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let mut text = String::new();
    for name in names {
        text.push_str(name);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if created {
        sync_dir(path.parent().expect("the intent file is in _index"))?;
    }
    Ok(())
}

/// The intent file's whole lines (a torn last line was written before any segment it names).
pub(super) fn read_intent(path: &Path) -> Result<Vec<String>, SinkError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Writes one segment atomically: temp file, fsync, rename, fsync the directory.
pub(super) fn write_segment(target: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let dir = target.parent().expect("a segment is in a day directory");
    let temp = temp_path(target);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    Ok(result?)
}

/// `dt=…/.part-<ulid>.ndjson.tmp`: hidden from readers, recognised as a leftover by its name.
pub(super) fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .expect("a segment has a name")
        .to_string_lossy();
    target.with_file_name(format!(".{name}.tmp"))
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn create_dir_synced(dir: &Path) -> Result<(), SinkError> {
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        let parent = dir.parent().expect("_index is in warehouse.path");
        sync_dir(parent)?;
        if let Some(grandparent) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(grandparent)?;
        }
    }
    Ok(())
}

/// The segment file names of a partition directory (none if it does not exist); removes temp
/// files a crash left behind.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<String>, SinkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
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
        } else if name.starts_with("part-") && name.ends_with(".ndjson") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The event ids of one segment; `None` if it does not exist. Holds one segment's ids at most
/// (`warehouse.rotate_bytes` bounds it).
pub(super) fn read_ids(path: &Path) -> Result<Option<Vec<String>>, SinkError> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        event_id: String,
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut ids = Vec::new();
    for line in BufReader::new(file).lines() {
        if let Ok(row) = serde_json::from_str::<IdOnly>(&line?) {
            ids.push(row.event_id);
        }
    }
    Ok(Some(ids))
}
