//! The spool: a durable, append-only local log that sits between accepting a notification and
//! relaying it. A notification is answered 200 only once its record is fsynced here, so broker
//! outages, restarts and crashes lose nothing that was acknowledged. Concurrent appends share one
//! fsync (group commit). Each sink reads the records in order with its own reader and
//! acknowledges them through its own cursor (see `progress`); segments every sink has passed are
//! recycled as later segments (or deleted when enough spares are kept).

mod acknowledge;
pub(crate) mod cursor;
mod lock;
mod progress;
mod quarantine;
mod reader;
pub mod record;
mod recovery;
pub(crate) mod scan;
pub(crate) mod segment;
pub mod status;
mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dedup::IdKey;
use crate::id_journal;
use crate::metrics::{Metrics, SpoolSync};
use crate::notification::{unix_millis, Notification};

use progress::SinkProgress;
pub use reader::SpoolReader;
pub use record::SpoolRecord;
use segment::SegmentInfo;
pub use segment::HEADER_LEN as SEGMENT_HEADER_LEN;
use writer::{Command, Writer};

/// How many appends may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;
/// Relayed segment files kept for reuse; more are deleted. Two cover the steady state (one
/// segment finishes while the next fills) with one to spare; the disk they take is on top of
/// `spool.max_bytes`.
const MAX_SPARES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool directory {dir} holds notifications up to sequence number {last_seq} but its \
         cursor {cursor} is missing: starting from the beginning would relay all of them again. \
         Restore the cursor file, or set spool.missing_cursor = \"start_from_end\" (environment: \
         DATALOY_GATEWAY__SPOOL__MISSING_CURSOR=start_from_end) to relay only what arrives from \
         now on"
    )]
    MissingCursor {
        dir: PathBuf,
        cursor: PathBuf,
        last_seq: u64,
    },
    #[error("spool is full")]
    Full,
    #[error("spool I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("spool is closed")]
    Closed,
    #[error("the spool keeps no cursor for a sink named `{0}`")]
    UnknownSink(String),
    #[error("spool sinks: {0}")]
    InvalidSinks(String),
    #[error(
        "spool directory {0} is in use by another gateway process (it holds a lock on the \
         directory); stop that process, or give this one its own spool.dir"
    )]
    Locked(PathBuf),
    #[error("notification cannot be stored: {0}")]
    Unrepresentable(#[from] record::EncodeError),
}

/// Spool limits, from `[spool]`.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Least time between the starts of two group commits under concurrent load.
    pub commit_interval: Duration,
    pub missing_cursor: MissingCursor,
}

/// What opening the spool does when a cursor is missing although the spool holds records (the
/// cursor was deleted: from the beginning would relay them all again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingCursor {
    /// Refuse to start, naming the cursor and this setting.
    #[default]
    Refuse,
    /// Start after the newest record in the spool: what it holds is not relayed (again).
    StartFromEnd,
}

/// State shared by the writer thread, the reader and the acknowledging relay.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segments: Mutex<Vec<SegmentInfo>>,
    /// Relayed segment files waiting to be reused by the writer.
    spares: Mutex<Vec<PathBuf>>,
    disk_bytes: AtomicU64,
    /// The lowest position among the sinks: every record up to it was confirmed by every sink.
    acked_seq: AtomicU64,
    durable_seq: watch::Sender<u64>,
    /// False after a write or fsync failed, until the next one succeeds.
    write_ok: AtomicBool,
    sinks: Vec<SinkProgress>,
    /// The id journal, when ids are journaled: asked to be durable before a segment is retired.
    journal: OnceLock<id_journal::Syncer>,
    metrics: Metrics,
}

/// One sink's backlog, for metrics and `spool status`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkBacklog {
    pub sink: String,
    /// Highest sequence number the sink confirmed.
    pub acked_seq: u64,
    /// Durable notifications the sink has not confirmed yet.
    pub records: u64,
    /// Age of the oldest of them the sink has read (zero when it has none).
    pub oldest_age: Duration,
}

/// Handle to an open spool. Appends are safe from any task; each sink's relay reads with its own
/// reader.
pub struct Spool {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: lock::DirectoryLock,
}

impl Spool {
    /// Opens (or creates) the spool in `options.dir` for `sinks` (each gets its own cursor; see
    /// `progress` for where each resumes), recovering from a crash: a torn tail is cut off,
    /// damaged ranges are quarantined and stepped over (see `scan`), segments every sink has
    /// relayed are retired (kept as spares or deleted). Nothing is changed on disk when it
    /// refuses to open.
    pub fn open(
        options: SpoolOptions,
        sinks: &[&str],
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        Self::open_with_ids(options, sinks, metrics, None)
    }

    /// [`Spool::open`], also keeping the id journal (see `id_journal`) in `ids/`: every group
    /// commit writes its ids there too, and before it returns, every id the journal remembers
    /// within `limits.ttl` is handed to `remember` with the part of the TTL it has left.
    pub fn open_remembering_ids(
        options: SpoolOptions,
        sinks: &[&str],
        metrics: Metrics,
        limits: id_journal::Limits,
        remember: id_journal::Remember<'_>,
    ) -> Result<Spool, SpoolError> {
        Self::open_with_ids(options, sinks, metrics, Some((limits, remember)))
    }

    fn open_with_ids(
        options: SpoolOptions,
        sinks: &[&str],
        metrics: Metrics,
        ids: Option<(id_journal::Limits, id_journal::Remember<'_>)>,
    ) -> Result<Spool, SpoolError> {
        progress::check_names(sinks)?;
        fs::create_dir_all(&options.dir)?;
        let lock = lock::lock(&options.dir)?;
        let stored = progress::Stored::read(&options.dir, sinks)?;
        // With the id journal, a segment whose ids may be missing from it (those of records from
        // its newest file on, see `id_journal`) is scanned and kept until they are written again.
        let journaled_before = match &ids {
            Some(_) => id_journal::newest_file_name(&options.dir)?,
            None => None,
        };
        let retire_through = |relayed_by_all: u64| match journaled_before {
            Some(name) => relayed_by_all.min(name.saturating_sub(1)),
            None => relayed_by_all,
        };
        let found = recovery::scan_all(&options.dir, retire_through(stored.relayed_by_all()))?;
        let last_seq = recovery::last_seq(&found);
        let settled = stored.settle(
            options.missing_cursor,
            last_seq,
            recovery::holds_records(&found),
        )?;
        let relayed_by_all = settled.relayed_by_all();
        let sinks = settled.persist()?;
        // A cursor or record at u64::MAX (only damage can put it there) would wrap the next
        // sequence number to 0, and new records would hide behind the cursor: refuse instead.
        let largest = || {
            SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "a spool cursor, record or segment holds the largest sequence number; the spool is damaged",
            ))
        };
        // Every record up to here is durable: found valid, or confirmed by a sink.
        let last_durable_seq = sinks
            .iter()
            .map(|s| s.acked.load(Ordering::Relaxed))
            .fold(last_seq, u64::max);
        let next_seq = last_durable_seq.checked_add(1).ok_or_else(largest)?;
        let (segments, spares) = recovery::apply(
            &options.dir,
            found,
            retire_through(relayed_by_all),
            &metrics,
        )?;
        // A segment kept without a valid record (all of it damaged, pinned because the damage
        // could not be quarantined) still sorts by its first sequence number: the next segment
        // must start above it, or the reader, already past it, never hands out what is appended
        // (the fuzzer's spool_recovery finding). An empty segment left by a crash right after a
        // rotation is retired by recovery, so the usual restart leaves no gap in the numbering.
        let next_seq = match segments.iter().map(|s| s.first_seq).max() {
            Some(first) if first >= next_seq => first.checked_add(1).ok_or_else(largest)?,
            _ => next_seq,
        };
        warn_of_retired_gaps(&sinks, &segments, next_seq);
        let disk_bytes = segments.iter().map(|s| s.durable_len).sum();
        metrics
            .spool_max_bytes
            .set(i64::try_from(options.max_bytes).unwrap_or(i64::MAX));
        let (durable_seq, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            dir: options.dir.clone(),
            max_bytes: options.max_bytes,
            segments: Mutex::new(segments),
            spares: Mutex::new(spares),
            disk_bytes: AtomicU64::new(disk_bytes),
            acked_seq: AtomicU64::new(relayed_by_all),
            durable_seq,
            write_ok: AtomicBool::new(true),
            sinks,
            journal: OnceLock::new(),
            metrics,
        });
        let journal = match ids {
            Some((limits, remember)) => {
                let recovered = id_journal::recover(
                    &options.dir,
                    last_durable_seq,
                    limits,
                    remember,
                    &shared.metrics,
                )?;
                let missing = unjournaled(
                    &shared,
                    recovered.last_seq,
                    recovered.incomplete.as_ref(),
                    last_durable_seq,
                )?;
                recovered.start(next_seq, missing, remember)?
            }
            None => {
                id_journal::cut_unconfirmed(&options.dir, last_durable_seq, &shared.metrics)?;
                id_journal::Journal::disabled()
            }
        };
        if let Some(syncer) = journal.syncer() {
            let _ = shared.journal.set(syncer);
            // The segments kept for their ids above can go now that the journal holds them.
            shared.retire_relayed()?;
        }
        let writer = Writer::start(
            shared.clone(),
            next_seq,
            options.segment_bytes,
            options.commit_interval,
            journal,
        )?;
        let (commands, queue) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(queue))?;
        let spool = Spool {
            shared,
            commands,
            writer: Mutex::new(Some(thread)),
            _lock: lock,
        };
        spool.refresh_metrics();
        Ok(spool)
    }

    /// Appends a notification and returns its sequence number once it is on disk.
    pub async fn append(&self, notification: Notification) -> Result<u64, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append(notification, reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Appends `notifications` in one group commit, in order, and answers each once the group is
    /// on disk. The records stored are always a prefix of the batch plus any that follow one
    /// refused as unrepresentable: once one does not fit (`Full`), the rest are refused too.
    pub async fn append_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Vec<Result<u64, SpoolError>> {
        let (appends, answers): (Vec<_>, Vec<_>) = notifications
            .into_iter()
            .map(|notification| {
                let (reply, answer) = oneshot::channel();
                ((notification, reply), answer)
            })
            .unzip();
        if appends.is_empty() {
            return Vec::new();
        }
        if self
            .commands
            .send(Command::AppendBatch(appends))
            .await
            .is_err()
        {
            return answers.iter().map(|_| Err(SpoolError::Closed)).collect();
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(answer.await.unwrap_or(Err(SpoolError::Closed)));
        }
        results
    }

    /// A reader of the records `sink` has not acknowledged yet, in order. One per sink.
    pub fn reader_for(&self, sink: &str) -> Result<SpoolReader, SpoolError> {
        let index = self.sink_index(sink)?;
        Ok(SpoolReader::new(self.shared.clone(), Some(index)))
    }

    /// Records that `sink` confirmed every record up to `seq`: stores its cursor (durable within
    /// `cursor::SYNC_INTERVAL`, and before any segment goes) and retires the segments every sink
    /// has passed.
    pub async fn acknowledge_for(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        let index = self.sink_index(sink)?;
        self.acknowledge_sinks(Some(index), seq).await
    }

    /// A reader of the records not every sink has acknowledged, for a relay that delivers each
    /// batch to every sink before it acknowledges it with [`Spool::acknowledge`].
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(self.shared.clone(), None)
    }

    /// Records that every sink confirmed all records up to `seq` (see [`Spool::acknowledge_for`]).
    pub async fn acknowledge(&self, seq: u64) -> Result<(), SpoolError> {
        self.acknowledge_sinks(None, seq).await
    }

    async fn acknowledge_sinks(&self, sink: Option<usize>, seq: u64) -> Result<(), SpoolError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let outcome = shared.acknowledge(sink, seq);
            shared
                .metrics
                .spool_synced(SpoolSync::Acknowledge, started.elapsed());
            outcome
        })
        .await
        .map_err(|e| SpoolError::Io(io::Error::other(e)))??;
        Ok(())
    }

    fn sink_index(&self, sink: &str) -> Result<usize, SpoolError> {
        self.shared
            .sinks
            .iter()
            .position(|s| s.name == sink)
            .ok_or_else(|| SpoolError::UnknownSink(sink.to_owned()))
    }

    /// Each sink's backlog, in the order the sinks were given to [`Spool::open`].
    pub fn sink_backlogs(&self) -> Vec<SinkBacklog> {
        let durable = *self.shared.durable_seq.borrow();
        let now = unix_millis();
        self.shared
            .sinks
            .iter()
            .map(|sink| {
                let acked_seq = sink.acked.load(Ordering::Relaxed);
                let records = durable.saturating_sub(acked_seq);
                let oldest = sink.oldest_pending_ms.load(Ordering::Relaxed);
                let oldest_age = if records == 0 || oldest == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(now.saturating_sub(oldest))
                };
                SinkBacklog {
                    sink: sink.name.clone(),
                    acked_seq,
                    records,
                    oldest_age,
                }
            })
            .collect()
    }

    /// Whether a new notification can be appended now: the last write succeeded and there is
    /// room for a body of `max_body_bytes`.
    pub fn is_writable(&self, max_body_bytes: u64) -> bool {
        let used = self.shared.disk_bytes.load(Ordering::Relaxed);
        self.shared.write_ok.load(Ordering::Relaxed)
            && used + max_body_bytes + record::HEADER_LEN as u64 + 512 <= self.shared.max_bytes
            && !self.commands.is_closed()
    }

    /// Notifications appended but not yet acknowledged by every sink.
    pub fn depth(&self) -> u64 {
        let durable = *self.shared.durable_seq.borrow();
        durable.saturating_sub(self.shared.acked_seq.load(Ordering::Relaxed))
    }

    /// Updates the spool and per-sink gauges; called before metrics are rendered.
    pub fn refresh_metrics(&self) {
        let metrics = &self.shared.metrics;
        metrics.spool_depth.set(self.depth() as i64);
        metrics
            .spool_bytes
            .set(self.shared.disk_bytes.load(Ordering::Relaxed) as i64);
        let backlogs = self.sink_backlogs();
        let oldest = backlogs.iter().map(|b| b.oldest_age).max();
        metrics
            .spool_oldest_age
            .set(oldest.unwrap_or_default().as_secs_f64());
        for backlog in &backlogs {
            metrics.set_sink_backlog(
                &backlog.sink,
                backlog.records,
                backlog.oldest_age.as_secs_f64(),
            );
        }
    }

    /// Stops the writer after the appends already queued; later appends fail with `Closed`.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
        let thread = self.writer.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let shared = self.shared.clone();
        let synced = tokio::task::spawn_blocking(move || {
            shared
                .sinks
                .iter()
                .try_for_each(|sink| sink.cursor.lock().sync())
        })
        .await;
        if let Ok(Err(e)) = synced {
            tracing::warn!(error = %e, "cannot make the spool cursors durable at shutdown; a machine crash now would relay the last batches again");
        }
    }
}

/// Entries for the durable records the journal lacks: those after `journaled` (its last entry)
/// up to `last_durable_seq`, and, when its newest file is `incomplete`, those from that file's
/// first sequence number on that it does not hold. A crash before the journal's fdatasync lost
/// them (or the journal is new beside an old spool): their notifications were answered 200, or
/// will be relayed, so their retries must be duplicates. Every segment that may hold such a
/// record was kept (see [`Spool::open_remembering_ids`]).
fn unjournaled(
    shared: &Arc<Shared>,
    journaled: u64,
    incomplete: Option<&id_journal::Incomplete>,
    last_durable_seq: u64,
) -> Result<Vec<id_journal::Entry>, SpoolError> {
    let mut missing = Vec::new();
    let (from, mut held) = match incomplete {
        Some(file) => {
            let mut held: Vec<u64> = file.entries.iter().map(|e| e.seq).collect();
            held.sort_unstable();
            (file.from_seq.saturating_sub(1).min(journaled), held)
        }
        None => (journaled, Vec::new()),
    };
    if from >= last_durable_seq {
        return Ok(missing);
    }
    held.dedup();
    let mut reader = SpoolReader::after(shared.clone(), from);
    loop {
        let records = reader.read_available(1024)?;
        if records.is_empty() {
            return Ok(missing);
        }
        missing.extend(
            records
                .iter()
                .filter(|record| record.seq > journaled || held.binary_search(&record.seq).is_err())
                .map(|record| id_journal::Entry {
                    seq: record.seq,
                    accepted_ms: record.notification.received_at_ms,
                    key: IdKey::of(record.notification.envelope.id.as_str()),
                }),
        );
    }
}

/// A sink whose cursor is behind the oldest record the spool holds was not configured while
/// those records were relayed to the others and retired: it resumes with the oldest held.
fn warn_of_retired_gaps(sinks: &[SinkProgress], segments: &[SegmentInfo], next_seq: u64) {
    let oldest_held = segments.first().map_or(next_seq, |s| s.first_seq);
    for sink in sinks {
        let acked = sink.acked.load(Ordering::Relaxed);
        if acked + 1 < oldest_held {
            tracing::warn!(
                sink = sink.name,
                cursor = acked,
                oldest_held,
                "records after this sink's cursor were retired while it was not configured; it \
                 resumes with the oldest record the spool holds"
            );
        }
    }
}

/// A relayed segment becomes a spare, or is deleted when there are enough spares.
fn retire(dir: &Path, path: &Path, first_seq: u64, spares: &mut Vec<PathBuf>) -> io::Result<()> {
    let spare = segment::spare_path_for(dir, first_seq);
    // A spare may already be named so: a crash left an empty segment numbered like this one,
    // and recovery made it a spare. Renaming over it would take a file the writer may be
    // recycling under that name (its records then went to a file no name leads to: found by an
    // outside attacker, notifications lost); this segment goes instead.
    if spares.len() < MAX_SPARES && !spares.contains(&spare) {
        fs::rename(path, &spare)?;
        spares.push(spare);
        Ok(())
    } else {
        fs::remove_file(path)
    }
}
