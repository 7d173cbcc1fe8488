//! The id journal: what lets the memory dedup backend survive a restart. Every id the gateway
//! accepts is written here, with its accept time and its spool sequence number, in the same
//! group commit as its spool record: the spool writer hands a group's ids over before it writes
//! the group, and answers only once both are written. The journal's write is made durable later
//! (see `writer`): until the spool retires the segment holding a record, the record itself holds
//! the id, and the spool has the journal fdatasync before it retires any. So after a graceful
//! stop, a SIGKILL or a power loss, every id answered 200 is in the journal or in a spool record,
//! and at start-up the memory table is rebuilt from both: the ids still within `dedup.ttl`, each
//! for what is left of its TTL.
//!
//! The journal lives beside the spool's segments (`spool.dir/ids/`) but is a file set of its
//! own, in its own format (see `entry`): records are relayed and recycled at the sinks' pace,
//! ids are kept for the TTL. Ids whose records the spool holds but the journal lacks (a crash
//! before the journal's fdatasync) are written again from the spool at start-up, and entries
//! whose records never became durable are cut (see `recovery`). With the Redis backend the
//! journal is not written: Redis remembers.

mod entry;
mod files;
mod recovery;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use entry::Entry;
pub use recovery::{Dropped, Incomplete, Limits};

use crate::dedup::IdKey;
use crate::metrics::Metrics;
use crate::notification::unix_millis;
use writer::JournalWriter;

/// Called with each id the journal remembers and the part of its TTL it has left.
pub type Remember<'a> = &'a mut dyn FnMut(IdKey, Duration);

/// The journal's directory inside the spool directory.
pub const DIR_NAME: &str = "ids";

/// Where the journal of the spool in `spool_dir` lives.
pub fn dir_in(spool_dir: &Path) -> PathBuf {
    spool_dir.join(DIR_NAME)
}

/// The journal after recovery, before it writes: the spool adds the ids it lacks, then starts it.
pub struct RecoveredJournal {
    writer: JournalWriter,
    /// Highest sequence number the journal holds an entry for.
    pub last_seq: u64,
    /// The newest file, when a crash left it without some of its entries.
    pub incomplete: Option<Incomplete>,
    limits: Limits,
    remembered: u64,
    started: Instant,
}

/// The first sequence number in the name of the newest journal file of the spool in
/// `spool_dir`, if there is one. Entries of records before it are durable (the journal fsyncs a
/// file before it starts the next); the newest file may lack some after a crash.
pub fn newest_file_name(spool_dir: &Path) -> io::Result<Option<u64>> {
    match files::list(&dir_in(spool_dir)) {
        Ok(listed) => Ok(listed.last().map(|(name, _)| *name)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// About how many ids the journal of the spool in `spool_dir` holds (from its files' sizes,
/// before they are read), for the table to make room for them at once.
pub fn estimated_ids(spool_dir: &Path) -> u64 {
    let Ok(listed) = files::list(&dir_in(spool_dir)) else {
        return 0;
    };
    listed
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|m| files::entries_in(m.len()))
        .sum()
}

/// Reads the journal of the spool in `spool_dir`, whose last durable record is
/// `last_durable_seq`, and calls `remember` with each id still within `limits.ttl` and the part
/// of it left (see `recovery`).
pub fn recover(
    spool_dir: &Path,
    last_durable_seq: u64,
    limits: Limits,
    remember: &mut dyn FnMut(IdKey, Duration),
    metrics: &Metrics,
) -> io::Result<RecoveredJournal> {
    let started = Instant::now();
    let dir = dir_in(spool_dir);
    std::fs::create_dir_all(&dir)?;
    let recovered = recovery::recover(
        &dir,
        last_durable_seq,
        limits,
        unix_millis(),
        remember,
        &metrics.id_journal,
    )?;
    Ok(RecoveredJournal {
        writer: JournalWriter::new(
            &dir,
            limits,
            recovered.files,
            recovered.newest_name,
            recovered.last_seq,
            metrics.clone(),
        ),
        last_seq: recovered.last_seq,
        incomplete: recovered.incomplete,
        limits,
        remembered: recovered.remembered,
        started,
    })
}

/// For a gateway that runs without the journal (Redis dedup, or `dedup.journal = false`): cuts
/// the entries of a journal left by an earlier run whose records are not durable, so that a
/// later start with the journal does not take them for ids of the records that will reuse their
/// sequence numbers. Keeps everything else.
pub fn cut_unconfirmed(
    spool_dir: &Path,
    last_durable_seq: u64,
    metrics: &Metrics,
) -> io::Result<()> {
    let dir = dir_in(spool_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    let keep_all = Limits {
        ttl: Duration::MAX,
        max_entries: usize::MAX,
    };
    recovery::recover(
        &dir,
        last_durable_seq,
        keep_all,
        unix_millis(),
        &mut |_, _| {},
        &metrics.id_journal,
    )?;
    Ok(())
}

impl RecoveredJournal {
    /// Starts writing, in a new file named after `first_seq`: first the entries of the
    /// incomplete newest file and `missing` (entries for durable records the journal lacked; each
    /// still within the TTL goes to `remember` too), merged in sequence order and made durable,
    /// after which the incomplete file is deleted; then the groups the spool writer hands over.
    pub fn start(
        mut self,
        first_seq: u64,
        missing: Vec<Entry>,
        remember: &mut dyn FnMut(IdKey, Duration),
    ) -> io::Result<Journal> {
        let ttl_ms = u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX);
        let now = unix_millis();
        for entry in &missing {
            let age = now.saturating_sub(entry.accepted_ms);
            if age < ttl_ms {
                remember(entry.key, Duration::from_millis(ttl_ms - age));
                self.remembered += 1;
            }
        }
        let rewritten = missing.len();
        let mut entries = missing;
        let incomplete = self.incomplete.take();
        if let Some(incomplete) = &incomplete {
            entries.extend_from_slice(&incomplete.entries);
            entries.sort_unstable_by_key(|e| e.seq);
            entries.dedup_by_key(|e| e.seq);
        }
        if entries.is_empty() {
            self.writer.start_file(first_seq)?;
        } else {
            // Under a staged name until it holds them all, durably: a crash before leaves the
            // incomplete file the newest, to be repaired by the next start.
            self.writer.start_staged_file(first_seq)?;
            for group in entries.chunks(4096) {
                self.writer.commit(group)?;
            }
            self.writer.publish()?;
        }
        if let Some(incomplete) = incomplete {
            match std::fs::remove_file(&incomplete.path) {
                // Recovery deletes a newest file without a valid header itself.
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => files::sync_dir(&files::parent_of(&incomplete.path))?,
            }
        }
        self.writer
            .metrics()
            .id_journal
            .remembered_ids
            .set(i64::try_from(self.remembered).unwrap_or(i64::MAX));
        tracing::info!(
            remembered = self.remembered,
            rewritten_from_spool = rewritten,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "dedup table rebuilt from the id journal"
        );
        Ok(Journal {
            writer: Some(Arc::new(Mutex::new(self.writer))),
            staged: Vec::new(),
            outcome: None,
        })
    }
}

/// Makes what the journal wrote durable, from any thread: the spool asks before it retires
/// segments (see `writer`).
pub struct Syncer {
    writer: Arc<Mutex<JournalWriter>>,
}

impl Syncer {
    /// fdatasyncs the journal and returns the sequence number it is durable through: every
    /// entry for a record up to it is on disk. After a failed fdatasync the number stays where
    /// it was.
    pub fn make_durable(&self) -> u64 {
        self.writer.lock().sync()
    }
}

/// The spool writer's handle on the journal: it stages the ids of a group commit as it encodes
/// their records and has them written before it writes the group. A disabled journal does
/// nothing.
pub struct Journal {
    writer: Option<Arc<Mutex<JournalWriter>>>,
    /// Entries of the group being assembled.
    staged: Vec<Entry>,
    /// What writing the last group gave, until the spool writer asks.
    outcome: Option<io::Result<()>>,
}

impl Journal {
    /// No journal: every call does nothing.
    pub fn disabled() -> Journal {
        Journal {
            writer: None,
            staged: Vec::new(),
            outcome: None,
        }
    }

    /// A handle for making the journal durable from another thread (none when disabled).
    pub fn syncer(&self) -> Option<Syncer> {
        self.writer.as_ref().map(|writer| Syncer {
            writer: writer.clone(),
        })
    }

    /// Adds the id of the record `seq` to the group being assembled.
    pub fn stage(&mut self, seq: u64, id: &str) {
        if self.writer.is_some() {
            self.staged.push(Entry {
                seq,
                accepted_ms: 0,
                key: IdKey::of(id),
            });
        }
    }

    /// Writes the staged group (not fsynced: see `writer`); [`Journal::wait_committed`] says
    /// how it went.
    pub fn commit_staged(&mut self) {
        let Some(writer) = &self.writer else {
            return;
        };
        if self.staged.is_empty() {
            return;
        }
        let accepted_ms = unix_millis();
        for entry in &mut self.staged {
            entry.accepted_ms = accepted_ms;
        }
        self.outcome = Some(writer.lock().commit(&self.staged));
        self.staged.clear();
    }

    /// Whether the group written last is in the journal.
    pub fn wait_committed(&mut self) -> io::Result<()> {
        self.outcome.take().unwrap_or(Ok(()))
    }

    /// The group written last was not stored by the spool: its ids are taken out again.
    pub fn abandon(&mut self) {
        self.staged.clear();
        if let Some(writer) = &self.writer {
            writer.lock().abandon();
        }
    }
}

impl Drop for Journal {
    /// A graceful stop leaves the journal durable.
    fn drop(&mut self) {
        if let Some(writer) = &self.writer {
            writer.lock().sync();
        }
    }
}

#[cfg(test)]
mod tests;
