//! The journal's writer. The spool writer has it write the ids of each group commit before it
//! writes the group's records, and answers only once both are written. The journal's write is
//! not fsynced there: a second fdatasync in every group commit cost Kafka about a tenth of its
//! throughput (BENCHMARKS.md), and it is not needed then. While a record is in the spool, its id
//! can be read back from it (start-up does, see `spool::open`); the journal entry must be durable
//! only before the segment holding the record is retired. So the journal fdatasyncs when the
//! spool asks, before it retires segments ([`JournalWriter::sync`]), when it moves to a new file
//! (so only the newest file can lack entries after a crash), and when it stops.
//!
//! The active file grows until it reaches [`ROTATE_BYTES`] or its oldest entry is a quarter of
//! `dedup.ttl` old; then the next group starts a new file. Older files are deleted once their
//! newest entry has expired, or once the files after them hold `dedup.max_entries` ids (the
//! memory table would evict theirs anyway): the journal holds about `dedup.ttl` of ids, never
//! much more than `max_entries` of them (36 bytes each).
//!
//! A group that fails, in the journal or in the spool, is cut back from the active file before
//! anything else is written, and the next group starts a new file: after a failed fsync the
//! state of a file cannot be trusted. Until the cut succeeds every group fails, so no entry of a
//! notification answered 503 ever stays in the journal behind entries of later ones.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::entry::{self, Entry, ENTRY_LEN, HEADER_LEN};
use super::files::{self, FileStats};
use super::recovery::Limits;
use crate::metrics::{Metrics, SpoolSync};

/// Size at which the active file is rotated: about 116,000 ids.
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// Least time between two looks for files that may be deleted.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The file being appended to.
struct Active {
    file: File,
    stats: FileStats,
    generation: u64,
    /// Accept time of its first entry (0 while it has none).
    oldest_ms: u64,
}

pub(super) struct JournalWriter {
    dir: PathBuf,
    limits: Limits,
    active: Option<Active>,
    /// Files written before the active one, oldest first.
    older: VecDeque<FileStats>,
    /// Where the active file ended before the last group, and that group's entry count.
    last_group: Option<(u64, u64)>,
    /// Length the active file must be cut back to before anything else is written.
    cut_back_to: Option<u64>,
    must_roll: bool,
    /// Highest sequence number of an entry written (durable or not).
    written_seq: u64,
    /// Entries were written to the active file since its last fdatasync.
    unsynced: bool,
    /// Every entry for a record up to this sequence number is on disk.
    synced_seq: u64,
    /// An fdatasync failed: what it should have made durable may be lost, so the journal never
    /// again says it is durable past that point, and the spool keeps its segments (their records
    /// hold the ids) until a restart rebuilds the journal from them.
    sync_failed: bool,
    /// The active file is still under its staged name (see [`JournalWriter::start_staged_file`]).
    staged: bool,
    /// Name of the newest file: a new file is named after the first sequence number it holds,
    /// or after this one plus one when that is higher, so that the names keep journal order.
    newest_name: u64,
    buffer: Vec<u8>,
    last_drop_check: Option<Instant>,
    metrics: Metrics,
}

impl JournalWriter {
    pub(super) fn new(
        dir: &Path,
        limits: Limits,
        older: Vec<FileStats>,
        newest_name: u64,
        durable_through: u64,
        metrics: Metrics,
    ) -> JournalWriter {
        JournalWriter {
            dir: dir.to_owned(),
            limits,
            active: None,
            older: older.into(),
            last_group: None,
            cut_back_to: None,
            must_roll: true,
            written_seq: durable_through,
            unsynced: false,
            synced_seq: durable_through,
            sync_failed: false,
            staged: false,
            newest_name,
            buffer: Vec::with_capacity(64 * 1024),
            last_drop_check: None,
            metrics,
        }
    }

    /// Starts the file the first group will go to, before any is handed over.
    pub(super) fn start_file(&mut self, first_seq: u64) -> io::Result<()> {
        self.roll(first_seq)
    }

    /// [`JournalWriter::start_file`], under a name recovery does not list until
    /// [`JournalWriter::publish`]: for the entries start-up writes again from the spool. It is
    /// not rotated meanwhile, whatever it grows to.
    pub(super) fn start_staged_file(&mut self, first_seq: u64) -> io::Result<()> {
        let name = first_seq.max(self.newest_name.saturating_add(1));
        let (file, path, generation) = files::create_staged(&self.dir, name)?;
        self.newest_name = name;
        self.start_active(file, path, generation);
        self.staged = true;
        Ok(())
    }

    /// Makes the staged file durable and gives it its name.
    pub(super) fn publish(&mut self) -> io::Result<()> {
        self.sync();
        if self.sync_failed {
            return Err(io::Error::other("the id journal could not be fsynced"));
        }
        if let (true, Some(active)) = (self.staged, &self.active) {
            files::publish(&active.stats.path)?;
        }
        self.staged = false;
        Ok(())
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every entry for a record up to this sequence number is on disk.
    #[cfg(test)]
    pub(super) fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// fdatasyncs the active file (older ones were synced when it was started) and returns the
    /// sequence number the journal is durable through.
    pub(super) fn sync(&mut self) -> u64 {
        if self.sync_failed {
            return self.synced_seq;
        }
        if let (true, Some(active)) = (self.unsynced, &self.active) {
            let started = Instant::now();
            if let Err(e) = active.file.sync_data() {
                self.metrics.id_journal.write_errors.inc();
                self.sync_failed = true;
                tracing::error!(error = %e, file = %active.stats.path.display(), "id journal fdatasync failed; spool segments are kept until a restart writes their ids again");
                return self.synced_seq;
            }
            self.metrics
                .spool_synced(SpoolSync::IdJournal, started.elapsed());
            self.unsynced = false;
        }
        self.synced_seq = self.synced_seq.max(self.written_seq);
        self.synced_seq
    }

    /// Appends a group's entries (not fsynced: see the module docs).
    pub(super) fn commit(&mut self, group: &[Entry]) -> io::Result<()> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return Ok(());
        };
        // What an abandon takes out again: this group once it is written, nothing before (a
        // group that fails before its write must not cut the one before it, answered 200).
        self.last_group = None;
        if let Some(len) = self.cut_back_to {
            self.cut_back(len)?;
        }
        self.drop_old_files(last.accepted_ms);
        if self.needs_new_file(group.len(), last.accepted_ms) {
            self.roll(first.seq)?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("the id journal has no file to write to"));
        };
        self.buffer.clear();
        for entry in group {
            entry::encode(entry, active.generation, &mut self.buffer);
        }
        let start = active.stats.bytes;
        // Not fsynced here: see the module docs.
        match active.file.write_all_at(&self.buffer, start) {
            Ok(()) => {
                let count = group.len() as u64;
                active.stats.bytes += self.buffer.len() as u64;
                active.stats.entries += count;
                for entry in group {
                    active.stats.newest_ms = active.stats.newest_ms.max(entry.accepted_ms);
                    if active.oldest_ms == 0 {
                        active.oldest_ms = entry.accepted_ms;
                    }
                }
                self.last_group = Some((start, count));
                self.written_seq = self.written_seq.max(last.seq);
                self.unsynced = true;
                self.update_bytes();
                Ok(())
            }
            Err(e) => {
                self.metrics.id_journal.write_errors.inc();
                tracing::error!(error = %e, ids = group.len(), "id journal write failed; the group is refused");
                self.fail_back_to(start);
                Err(e)
            }
        }
    }

    /// The spool could not store the last group: its ids must not be remembered.
    pub(super) fn abandon(&mut self) {
        let Some((start, count)) = self.last_group.take() else {
            return;
        };
        if let Some(active) = self.active.as_mut() {
            active.stats.entries -= count;
        }
        self.fail_back_to(start);
    }

    fn fail_back_to(&mut self, len: u64) {
        self.last_group = None;
        self.must_roll = true;
        self.cut_back_to = Some(len);
        if let Err(e) = self.cut_back(len) {
            tracing::error!(error = %e, "cannot cut a failed group off the id journal; refusing new groups until it can");
        }
    }

    fn cut_back(&mut self, len: u64) -> io::Result<()> {
        let Some(active) = self.active.as_mut() else {
            self.cut_back_to = None;
            return Ok(());
        };
        active
            .file
            .set_len(len)
            .and_then(|()| active.file.sync_data())?;
        active.stats.bytes = len;
        self.cut_back_to = None;
        self.update_bytes();
        Ok(())
    }

    fn needs_new_file(&self, entries: usize, accepted_ms: u64) -> bool {
        let Some(active) = &self.active else {
            return true;
        };
        if self.staged {
            return false;
        }
        if self.must_roll {
            return true;
        }
        if active.stats.entries == 0 {
            return false;
        }
        let grows_to = active.stats.bytes + (entries * ENTRY_LEN) as u64;
        let quarter_ttl_ms = u64::try_from(self.limits.ttl.as_millis() / 4).unwrap_or(u64::MAX);
        grows_to > ROTATE_BYTES || accepted_ms.saturating_sub(active.oldest_ms) >= quarter_ttl_ms
    }

    /// Starts a new active file for entries from `first_seq` on, once the current one is durable.
    fn roll(&mut self, first_seq: u64) -> io::Result<()> {
        self.sync();
        let name = first_seq.max(self.newest_name.saturating_add(1));
        let (file, path, generation) = files::create(&self.dir, name)?;
        self.newest_name = name;
        self.start_active(file, path, generation);
        Ok(())
    }

    fn start_active(&mut self, file: File, path: PathBuf, generation: u64) {
        if let Some(previous) = self.active.take() {
            self.older.push_back(previous.stats);
        }
        self.active = Some(Active {
            file,
            stats: FileStats {
                path,
                entries: 0,
                newest_ms: 0,
                bytes: HEADER_LEN,
            },
            generation,
            oldest_ms: 0,
        });
        self.must_roll = false;
        self.update_bytes();
    }

    /// [`JournalWriter::delete_old_files`], at most every [`DROP_CHECK_INTERVAL`].
    fn drop_old_files(&mut self, now_ms: u64) {
        if self
            .last_drop_check
            .is_some_and(|last| last.elapsed() < DROP_CHECK_INTERVAL)
        {
            return;
        }
        self.last_drop_check = Some(Instant::now());
        self.delete_old_files(now_ms);
    }

    /// Deletes older files whose ids have all expired at `now_ms`, or that the newer files
    /// supersede.
    pub(super) fn delete_old_files(&mut self, now_ms: u64) {
        let ttl_ms = u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut newer = self.active.as_ref().map_or(0, |a| a.stats.entries);
        let mut keep = VecDeque::with_capacity(self.older.len());
        // Newest first, so that each file knows how many ids the files after it hold.
        while let Some(stats) = self.older.pop_back() {
            let expired = stats.newest_ms.saturating_add(ttl_ms) <= now_ms;
            let superseded = newer >= self.limits.max_entries as u64;
            newer += stats.entries;
            if !(expired || superseded || stats.entries == 0) {
                keep.push_front(stats);
                continue;
            }
            if let Err(e) = fs::remove_file(&stats.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %stats.path.display(), error = %e, "cannot delete an expired id journal file; trying again later");
                    keep.push_front(stats);
                }
            }
        }
        self.older = keep;
        self.update_bytes();
    }

    fn update_bytes(&self) {
        let older: u64 = self.older.iter().map(|s| s.bytes).sum();
        let active = self.active.as_ref().map_or(0, |a| a.stats.bytes);
        self.metrics
            .id_journal
            .bytes
            .set(i64::try_from(older + active).unwrap_or(i64::MAX));
    }
}
