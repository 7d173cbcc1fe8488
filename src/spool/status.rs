//! What `dataloy-gateway spool status` shows, read from a spool directory without opening the
//! spool: nothing is written, nothing is recovered, and the directory lock is only probed (taken
//! and released at once) to tell whether a gateway runs on it. So it works beside a running
//! gateway; what the gateway is writing at that moment may be seen half-done (a record being
//! appended is not counted yet).

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::progress::{check_names, cursor_path, CURSOR_PREFIX};
use super::quarantine::quarantine_dir;
use super::record;
use super::segment::{self, HEADER_LEN};
use crate::notification::unix_millis;

/// A spool directory's state.
#[derive(Debug, Serialize)]
pub struct SpoolStatus {
    pub dir: PathBuf,
    /// Whether a gateway process holds the directory's lock.
    pub gateway_running: bool,
    /// Highest sequence number written (0 for a spool that never held a record).
    pub last_seq: u64,
    pub segments: Vec<SegmentStatus>,
    pub segment_bytes: u64,
    /// Relayed segment files kept for reuse.
    pub spares: usize,
    pub spare_bytes: u64,
    pub sinks: Vec<SinkStatus>,
    pub quarantine_files: usize,
    pub quarantine_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SegmentStatus {
    pub first_seq: u64,
    pub bytes: u64,
}

/// One sink's progress: configured sinks, and sinks that left a cursor behind.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    pub sink: String,
    pub configured: bool,
    /// Highest sequence number the sink confirmed; `None` when it has no cursor file yet.
    pub cursor: Option<u64>,
    /// Notifications written after its cursor.
    pub backlog: u64,
    /// Receive time of the oldest of them (milliseconds since the Unix epoch), when it could be
    /// read.
    pub oldest_received_ms: Option<u64>,
    pub oldest_age_seconds: Option<f64>,
}

/// Reads the state of the spool in `dir`; `configured` names the sinks of the configuration.
pub fn inspect(dir: &Path, configured: &[&str]) -> io::Result<SpoolStatus> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the directory does not exist (no gateway has used this spool.dir yet)",
        ));
    }
    let gateway_running = is_locked(dir)?;
    let files = segment::list(dir)?;
    let mut segments = Vec::with_capacity(files.len());
    for (first_seq, path) in &files {
        segments.push(SegmentStatus {
            first_seq: *first_seq,
            bytes: len_of(path),
        });
    }
    let spare_files = segment::list_spares(dir)?;
    let (quarantine_files, quarantine_bytes) = files_and_bytes(&quarantine_dir(dir));

    let mut names: Vec<(String, bool)> = configured.iter().map(|s| (s.to_string(), true)).collect();
    for entry in fs::read_dir(dir)? {
        let file_name = entry?.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(CURSOR_PREFIX))
        else {
            continue;
        };
        if check_names(&[name]).is_ok() && !names.iter().any(|(n, _)| n == name) {
            names.push((name.to_owned(), false));
        }
    }
    let mut cursors = Vec::with_capacity(names.len());
    for (name, configured) in names {
        let path = cursor_path(dir, &name);
        let cursor = super::cursor::read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cursor {}: {e}", path.display())))?;
        cursors.push((name, configured, cursor));
    }

    let written = newest_seq(&files)?;
    let last_seq = cursors
        .iter()
        .filter_map(|(_, _, c)| *c)
        .fold(written, u64::max);
    let now = unix_millis();
    let sinks = cursors
        .into_iter()
        .map(|(sink, configured, cursor)| {
            let after = cursor.unwrap_or(0);
            let backlog = last_seq.saturating_sub(after);
            let oldest_received_ms = if backlog == 0 {
                None
            } else {
                first_received_after(&files, after)
            };
            SinkStatus {
                sink,
                configured,
                cursor,
                backlog,
                oldest_received_ms,
                oldest_age_seconds: oldest_received_ms
                    .map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
            }
        })
        .collect();
    Ok(SpoolStatus {
        dir: dir.to_owned(),
        gateway_running,
        last_seq,
        segment_bytes: segments.iter().map(|s| s.bytes).sum(),
        segments,
        spares: spare_files.len(),
        spare_bytes: spare_files.iter().map(|p| len_of(p)).sum(),
        sinks,
        quarantine_files,
        quarantine_bytes,
    })
}

/// Whether a gateway runs on the spool in `dir` (false when there is no such directory).
pub fn gateway_holds(dir: &Path) -> bool {
    is_locked(dir).unwrap_or(false)
}

/// Whether another process holds the spool's directory lock. The probe holds the lock for an
/// instant: a gateway starting in that instant refuses to start, naming the lock.
fn is_locked(dir: &Path) -> io::Result<bool> {
    let directory = File::open(dir)?;
    match directory.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

fn len_of(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn files_and_bytes(dir: &Path) -> (usize, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

/// Highest sequence number in the segments: the last record of the newest one, or the one
/// before its first when it holds none yet.
fn newest_seq(files: &[(u64, PathBuf)]) -> io::Result<u64> {
    let Some((first_seq, path)) = files.last() else {
        return Ok(0);
    };
    let mut last = first_seq.saturating_sub(1);
    walk(path, |seq, _| {
        last = last.max(seq);
        true
    })?;
    Ok(last)
}

/// Receive time of the first record after sequence number `after`.
fn first_received_after(files: &[(u64, PathBuf)], after: u64) -> Option<u64> {
    let start = files
        .iter()
        .rposition(|(first, _)| *first <= after.saturating_add(1))
        .unwrap_or(0);
    for (_, path) in &files[start..] {
        let mut found = None;
        walk(path, |seq, received_ms| {
            if seq > after {
                found = Some(received_ms);
                return false;
            }
            true
        })
        .ok()?;
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Calls `visit(seq, received_ms)` for the current records of a segment, in order, until it
/// returns false or a record does not decode (damage, a torn or unfinished tail, the end).
fn walk(path: &Path, mut visit: impl FnMut(u64, u64) -> bool) -> io::Result<()> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        // Retired by the gateway meanwhile.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let header = HEADER_LEN as usize;
    if bytes.len() < header || &bytes[..8] != segment::MAGIC {
        return Ok(());
    }
    let generation = u64::from_le_bytes(bytes[8..header].try_into().expect("8 bytes"));
    let mut offset = header;
    while let Ok((record, len)) = record::decode(&bytes[offset..], generation) {
        if !visit(record.seq, record.notification.received_at_ms) {
            break;
        }
        offset += len;
    }
    Ok(())
}
