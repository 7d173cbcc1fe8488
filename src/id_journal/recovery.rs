//! Reading the journal back at start-up: what it may remember, and what is cut.
//!
//! An entry counts only if its spool record was made durable too: the journal is written beside
//! the spool, so a crash can leave entries whose records are not in the spool (those
//! notifications were never answered 200, and their retries must be accepted). Such entries
//! have sequence numbers past the spool's last durable one, so they end the journal: they and
//! everything after them are cut off, and the numbers are free for new records.
//!
//! Only the newest file can lack entries after a crash (the journal fsyncs a file before it
//! starts the next, see `writer`), and the records of what it lacks are still in the spool. An
//! invalid end is cut off (the spool writes again the entries after the last valid one). When
//! valid entries follow invalid ones, the file is returned as [`Incomplete`]: the spool writes
//! its valid entries and those it lacks into a new file, then deletes it. In the newest file,
//! invalid bytes count as `torn`.
//!
//! Anything else that is not a valid entry never stops the start: an entry of an older file that
//! fails its checksum is skipped (the ones after it are kept: entries are of one size), a file
//! without a valid header is deleted. Each is logged and counted in
//! `dataloy_gateway_dedup_journal_recovery_dropped_bytes_total{reason}`. Losing an entry only
//! forgets an id, so its retry can be published again; it never loses a notification. Files
//! whose ids have all expired, or that only hold ids older than the newest `dedup.max_entries`,
//! are deleted.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::entry::{self, Entry, ENTRY_LEN, HEADER_LEN};
use super::files::{self, FileStats};
use crate::dedup::IdKey;
use crate::metrics::IdJournalMetrics;

/// Why recovery did not keep some bytes of the journal; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The end of the newest file does not hold whole valid entries: a write a crash interrupted.
    Torn,
    /// Entries failing their checksum anywhere else: damage on disk.
    Corrupt,
    /// Valid entries whose spool records are not durable: cut, never remembered.
    Unconfirmed,
    /// A file without a valid journal header: deleted.
    Unreadable,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::Torn,
        Dropped::Corrupt,
        Dropped::Unconfirmed,
        Dropped::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Torn => "torn",
            Dropped::Corrupt => "corrupt",
            Dropped::Unconfirmed => "unconfirmed",
            Dropped::Unreadable => "unreadable",
        }
    }
}

/// What recovery found and kept.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The files kept, in journal order.
    pub files: Vec<FileStats>,
    /// Highest sequence number of a kept entry (0 when none).
    pub last_seq: u64,
    /// Ids handed to `remember` (within the TTL).
    pub remembered: u64,
    /// Name (first sequence number) of the newest file listed, kept or not; 0 when none.
    pub newest_name: u64,
    /// The newest file, when some of its entries are missing or invalid (not in `files`).
    pub incomplete: Option<Incomplete>,
}

/// The newest journal file when a crash left it without some of its entries: every record from
/// `from_seq` on whose seq is not among `entries` may lack its entry.
#[derive(Debug)]
pub struct Incomplete {
    pub path: std::path::PathBuf,
    pub from_seq: u64,
    /// Its valid entries (within the spool's durable end), in file order.
    pub entries: Vec<Entry>,
}

/// Which entries recovery hands on and which files it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ttl: Duration,
    pub max_entries: usize,
}

/// Reads the journal in `dir`, cuts what may not be kept (see the module docs), deletes files
/// that are no longer needed, and calls `remember` with every id accepted less than `ttl`
/// before `now_ms`, and the part of the TTL it has left, in journal order.
pub fn recover(
    dir: &Path,
    last_durable_seq: u64,
    limits: Limits,
    now_ms: u64,
    remember: &mut dyn FnMut(IdKey, Duration),
    metrics: &IdJournalMetrics,
) -> io::Result<Recovered> {
    files::delete_staged(dir)?;
    let listed = files::list(dir)?;
    let ttl_ms = u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX);
    let superseded = superseded_files(&listed, limits.max_entries)?;
    let mut recovered = Recovered::default();
    let mut unconfirmed_from: Option<u64> = None;
    recovered.newest_name = listed.last().map_or(0, |(name, _)| *name);
    for (index, (name, path)) in listed.iter().enumerate() {
        let newest_file = index + 1 == listed.len();
        if unconfirmed_from.is_some() {
            let len = fs::metadata(path)?.len();
            report(metrics, path, Dropped::Unconfirmed, len);
            fs::remove_file(path)?;
            continue;
        }
        if index < superseded {
            // Only ids older than the newest `max_entries`: the table would evict them anyway.
            fs::remove_file(path)?;
            continue;
        }
        let bytes = fs::read(path)?;
        let generation = match entry::parse_header(&bytes) {
            Ok(generation) => generation,
            Err(e) => {
                // A crash right after the file was created leaves it shorter than its header.
                let reason = if newest_file && bytes.len() < HEADER_LEN as usize {
                    Dropped::Torn
                } else {
                    Dropped::Unreadable
                };
                if !bytes.is_empty() {
                    tracing::warn!(file = %path.display(), error = %e, "id journal file without a valid header deleted; the ids in it are forgotten");
                    report(metrics, path, reason, bytes.len() as u64);
                }
                fs::remove_file(path)?;
                if newest_file {
                    recovered.incomplete = Some(Incomplete {
                        path: path.clone(),
                        from_seq: *name,
                        entries: Vec::new(),
                    });
                }
                continue;
            }
        };
        let mut stats = FileStats {
            path: path.clone(),
            entries: 0,
            newest_ms: 0,
            bytes: HEADER_LEN,
        };
        let mut skipped = 0u64;
        // In the newest file, entries a crash kept from the disk (it had not fsynced them yet).
        let gap = if newest_file {
            Dropped::Torn
        } else {
            Dropped::Corrupt
        };
        let mut gaps = false;
        let mut valid = Vec::new();
        let body = &bytes[HEADER_LEN as usize..];
        for (position, chunk) in body.chunks_exact(ENTRY_LEN).enumerate() {
            let Some(entry) = entry::decode(chunk.try_into().unwrap(), generation) else {
                skipped += ENTRY_LEN as u64;
                continue;
            };
            if entry.seq > last_durable_seq {
                unconfirmed_from = Some(entry.seq);
                break;
            }
            if skipped > 0 {
                // Damage between valid entries: skipped, and left where it is.
                report(metrics, path, gap, skipped);
                skipped = 0;
                gaps = true;
            }
            if newest_file {
                valid.push(entry);
            }
            stats.bytes = HEADER_LEN + ((position + 1) * ENTRY_LEN) as u64;
            stats.entries += 1;
            stats.newest_ms = stats.newest_ms.max(entry.accepted_ms);
            recovered.last_seq = recovered.last_seq.max(entry.seq);
            let age = now_ms.saturating_sub(entry.accepted_ms);
            if age < ttl_ms {
                remember(entry.key, Duration::from_millis(ttl_ms - age));
                recovered.remembered += 1;
            }
        }
        let tail = bytes.len() as u64 - stats.bytes;
        if tail > 0 {
            let invalid = if newest_file {
                Dropped::Torn
            } else {
                Dropped::Corrupt
            };
            let unconfirmed = match unconfirmed_from {
                Some(_) => tail - skipped,
                None => 0,
            };
            if tail - unconfirmed > 0 {
                report(metrics, path, invalid, tail - unconfirmed);
            }
            if unconfirmed > 0 {
                report(metrics, path, Dropped::Unconfirmed, unconfirmed);
            }
            if stats.entries > 0 {
                files::truncate(path, stats.bytes)?;
            }
        }
        if newest_file && gaps {
            // Kept as it is until the spool has written its entries into a new file.
            recovered.incomplete = Some(Incomplete {
                path: path.clone(),
                from_seq: *name,
                entries: valid,
            });
            continue;
        }
        let expired = stats.newest_ms.saturating_add(ttl_ms) <= now_ms;
        if stats.entries == 0 || expired {
            fs::remove_file(path)?;
            continue;
        }
        if newest_file {
            // What a killed process wrote may be in the page cache only: make it durable before
            // the spool retires the segments whose records hold the same ids.
            fs::File::open(path)?.sync_data()?;
        }
        recovered.files.push(stats);
    }
    files::sync_dir(dir)?;
    Ok(recovered)
}

/// How many of the oldest files hold only entries older than the newest `max_entries` (counted
/// from file sizes, newest file first).
fn superseded_files(listed: &[(u64, std::path::PathBuf)], max_entries: usize) -> io::Result<usize> {
    let mut newer = 0u64;
    for (index, (_, path)) in listed.iter().enumerate().rev() {
        if newer >= max_entries as u64 {
            return Ok(index + 1);
        }
        newer += files::entries_in(fs::metadata(path)?.len());
    }
    Ok(0)
}

fn report(metrics: &IdJournalMetrics, path: &Path, reason: Dropped, bytes: u64) {
    metrics.recovery_dropped(reason, bytes);
    let message = match reason {
        Dropped::Torn => "torn id journal tail cut off (a write the crash interrupted)",
        Dropped::Corrupt => "damaged id journal entries skipped; those ids are forgotten",
        Dropped::Unconfirmed => {
            "id journal entries whose spool records are not durable cut off (never answered 200)"
        }
        Dropped::Unreadable => "unreadable id journal file deleted",
    };
    match reason {
        Dropped::Corrupt | Dropped::Unreadable => {
            tracing::error!(file = %path.display(), bytes, reason = reason.as_str(), "{message}")
        }
        Dropped::Torn | Dropped::Unconfirmed => {
            tracing::warn!(file = %path.display(), bytes, reason = reason.as_str(), "{message}")
        }
    }
}
