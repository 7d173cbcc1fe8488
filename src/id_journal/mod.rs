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
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use entry::Entry;
pub use recovery::{Dropped, Incomplete, Limits};
pub use writer::Durability;

use crate::dedup::IdKey;
use crate::metrics::Metrics;
use crate::notification::unix_millis;
use writer::{Job, JournalWriter};

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
        self.writer.start_file(first_seq)?;
        for group in entries.chunks(4096) {
            self.writer.commit(group)?;
        }
        self.writer.sync();
        if let Some(incomplete) = incomplete {
            std::fs::remove_file(&incomplete.path)?;
            files::sync_dir(&dir_of(&incomplete.path))?;
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
        let (jobs, queue) = mpsc::channel();
        let (done, results) = mpsc::sync_channel(1);
        let durability = self.writer.durability();
        let writer = self.writer;
        let thread = std::thread::Builder::new()
            .name("id-journal".into())
            .spawn(move || writer.run(queue, done))?;
        Ok(Journal {
            running: Some(Running {
                durability,
                jobs,
                results,
                staged: Vec::new(),
                in_flight: false,
                stopped: false,
                thread: Some(thread),
            }),
        })
    }
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Asks the journal's thread to make what it wrote durable: the spool does before it retires
/// segments (see `writer`). Usable from any thread.
pub struct Syncer {
    jobs: mpsc::Sender<Job>,
    durability: Arc<Durability>,
}

impl Syncer {
    /// fdatasyncs the journal and returns the sequence number it is durable through: every
    /// entry for a record up to it is on disk. When the journal cannot sync (its thread has
    /// stopped, an fdatasync failed), the number stays where it was.
    pub fn make_durable(&self) -> u64 {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Sync(reply)).is_ok() {
            if let Ok(synced) = answer.recv() {
                return synced;
            }
        }
        self.durability.synced_seq()
    }
}

/// The spool writer's handle on the journal: it stages the ids of a group commit as it encodes
/// their records, starts the journal's write before its own, and waits for both. A disabled
/// journal does nothing.
pub struct Journal {
    running: Option<Running>,
}

struct Running {
    durability: Arc<Durability>,
    jobs: mpsc::Sender<Job>,
    results: mpsc::Receiver<(io::Result<()>, Vec<Entry>)>,
    /// Entries of the group being assembled; the buffer comes back with each result.
    staged: Vec<Entry>,
    in_flight: bool,
    /// The thread could not be reached: every group fails from now on.
    stopped: bool,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// No journal: every call does nothing.
    pub fn disabled() -> Journal {
        Journal { running: None }
    }

    /// A handle for making the journal durable from another thread (none when disabled).
    pub fn syncer(&self) -> Option<Syncer> {
        self.running.as_ref().map(|running| Syncer {
            jobs: running.jobs.clone(),
            durability: running.durability.clone(),
        })
    }

    /// Adds the id of the record `seq` to the group being assembled.
    pub fn stage(&mut self, seq: u64, id: &str) {
        if let Some(running) = &mut self.running {
            running.staged.push(Entry {
                seq,
                accepted_ms: 0,
                key: IdKey::of(id),
            });
        }
    }

    /// Hands the staged group to the journal's thread, which writes and fsyncs it meanwhile.
    pub fn commit_staged(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        if running.staged.is_empty() {
            return;
        }
        let accepted_ms = unix_millis();
        let mut group = std::mem::take(&mut running.staged);
        for entry in &mut group {
            entry.accepted_ms = accepted_ms;
        }
        running.in_flight = running.jobs.send(Job::Commit(group)).is_ok();
        running.stopped |= !running.in_flight;
    }

    /// Waits until the group handed over last is durable (or failed).
    pub fn wait_committed(&mut self) -> io::Result<()> {
        let Some(running) = &mut self.running else {
            return Ok(());
        };
        let stopped = || io::Error::other("the id journal's thread has stopped");
        if !std::mem::take(&mut running.in_flight) {
            return if running.stopped {
                Err(stopped())
            } else {
                Ok(())
            };
        }
        match running.results.recv() {
            Ok((outcome, mut buffer)) => {
                buffer.clear();
                running.staged = buffer;
                outcome
            }
            Err(_) => {
                running.stopped = true;
                Err(stopped())
            }
        }
    }

    /// The group handed over last was not stored by the spool: its ids are taken out again.
    pub fn abandon(&mut self) {
        if let Some(running) = &mut self.running {
            running.staged.clear();
            let _ = running.jobs.send(Job::Abandon);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Ends the thread after the jobs queued before (it syncs before it ends); `Syncer`s
        // elsewhere keep the queue open, so closing it would not.
        let _ = self.jobs.send(Job::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
