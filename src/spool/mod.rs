//! The spool: a durable, append-only local log that sits between accepting a notification and
//! relaying it. A notification is answered 200 only once its record is fsynced here, so broker
//! outages, restarts and crashes lose nothing that was acknowledged. Concurrent appends share one
//! fsync (group commit); the relay reads records in order and acknowledges them through a cursor;
//! segments whose records are all acknowledged are recycled as later segments (or deleted when
//! enough spares are kept).

mod cursor;
mod reader;
pub mod record;
mod segment;
mod writer;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::{Metrics, SpoolSync};
use crate::notification::{unix_millis, Notification};

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
    #[error("spool is full")]
    Full,
    #[error("spool I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("spool is closed")]
    Closed,
    #[error("spool directory {0} is in use by another gateway process")]
    Locked(PathBuf),
}

/// Spool limits, from `[spool]`.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Least time between the starts of two group commits under concurrent load.
    pub commit_interval: Duration,
}

/// State shared by the writer thread, the reader and the acknowledging relay.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segments: Mutex<Vec<SegmentInfo>>,
    /// Relayed segment files waiting to be reused by the writer.
    spares: Mutex<Vec<PathBuf>>,
    disk_bytes: AtomicU64,
    acked_seq: AtomicU64,
    durable_seq: watch::Sender<u64>,
    /// False after a write or fsync failed, until the next one succeeds.
    write_ok: AtomicBool,
    /// Receive time of the oldest record the relay has read but not acknowledged.
    oldest_pending_ms: AtomicU64,
    cursor: Mutex<cursor::Cursor>,
    metrics: Metrics,
}

/// Handle to an open spool. Appends are safe from any task; one relay reads.
pub struct Spool {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: File,
}

impl Spool {
    /// Opens (or creates) the spool in `options.dir`, recovering from a crash: torn or corrupt
    /// records are cut off and reported, fully relayed segments are retired (kept as spares or
    /// deleted).
    pub fn open(options: SpoolOptions, metrics: Metrics) -> Result<Spool, SpoolError> {
        fs::create_dir_all(&options.dir)?;
        let lock = File::create(options.dir.join("lock"))?;
        if lock.try_lock().is_err() {
            return Err(SpoolError::Locked(options.dir.clone()));
        }
        let (cursor, acked) = cursor::Cursor::open(&options.dir)?;
        let (segments, spares) = recover(&options.dir, acked, &metrics)?;
        let next_seq = segments
            .iter()
            .map(|s| s.last_seq)
            .max()
            .unwrap_or(0)
            .max(acked)
            + 1;
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
            acked_seq: AtomicU64::new(acked),
            durable_seq,
            write_ok: AtomicBool::new(true),
            oldest_pending_ms: AtomicU64::new(0),
            cursor: Mutex::new(cursor),
            metrics,
        });
        let writer = Writer::start(
            shared.clone(),
            next_seq,
            options.segment_bytes,
            options.commit_interval,
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

    /// A reader positioned after the acknowledged cursor. The relay owns the only one.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(self.shared.clone())
    }

    /// Records that every sink confirmed all records up to `seq`: stores the cursor (durable
    /// within `cursor::SYNC_INTERVAL`, and before any segment goes) and retires segments that
    /// hold nothing newer.
    pub async fn acknowledge(&self, seq: u64) -> Result<(), SpoolError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let outcome = shared.acknowledge(seq);
            shared
                .metrics
                .spool_synced(SpoolSync::Acknowledge, started.elapsed());
            outcome
        })
        .await
        .map_err(|e| SpoolError::Io(io::Error::other(e)))??;
        Ok(())
    }

    /// Whether a new notification can be appended now: the last write succeeded and there is
    /// room for a body of `max_body_bytes`.
    pub fn is_writable(&self, max_body_bytes: u64) -> bool {
        let used = self.shared.disk_bytes.load(Ordering::Relaxed);
        self.shared.write_ok.load(Ordering::Relaxed)
            && used + max_body_bytes + record::HEADER_LEN as u64 + 512 <= self.shared.max_bytes
            && !self.commands.is_closed()
    }

    /// Notifications appended but not yet acknowledged.
    pub fn depth(&self) -> u64 {
        let durable = *self.shared.durable_seq.borrow();
        durable.saturating_sub(self.shared.acked_seq.load(Ordering::Relaxed))
    }

    /// Updates the spool gauges; called before metrics are rendered.
    pub fn refresh_metrics(&self) {
        let metrics = &self.shared.metrics;
        let depth = self.depth();
        metrics.spool_depth.set(depth as i64);
        metrics
            .spool_bytes
            .set(self.shared.disk_bytes.load(Ordering::Relaxed) as i64);
        let oldest = self.shared.oldest_pending_ms.load(Ordering::Relaxed);
        let age_ms = if depth == 0 || oldest == 0 {
            0
        } else {
            unix_millis().saturating_sub(oldest)
        };
        metrics.spool_oldest_age.set(age_ms as f64 / 1000.0);
    }

    /// Stops the writer after the appends already queued; later appends fail with `Closed`.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
        let thread = self.writer.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let shared = self.shared.clone();
        let synced = tokio::task::spawn_blocking(move || shared.cursor.lock().sync()).await;
        if let Ok(Err(e)) = synced {
            tracing::warn!(error = %e, "cannot make the spool cursor durable at shutdown; a machine crash now would relay the last batches again");
        }
    }
}

impl Shared {
    fn acknowledge(&self, seq: u64) -> io::Result<()> {
        let mut cursor = self.cursor.lock();
        if seq <= self.acked_seq.load(Ordering::Relaxed) {
            return Ok(());
        }
        cursor.store(seq, false)?;
        let finished: Vec<SegmentInfo> = {
            let mut segments = self.segments.lock();
            let (done, keep) = segments
                .drain(..)
                .partition(|s| s.closed && s.last_seq <= seq);
            *segments = keep;
            done
        };
        // A segment is deleted or reused only once the cursor past it is durable.
        if !finished.is_empty() {
            if let Err(e) = cursor.sync() {
                self.segments.lock().splice(0..0, finished);
                return Err(e);
            }
        }
        self.acked_seq.store(seq, Ordering::Relaxed);
        for segment in &finished {
            self.disk_bytes
                .fetch_sub(segment.durable_len, Ordering::Relaxed);
            // The cursor is stored, so this is housekeeping: a file left behind is retired by
            // the next recovery, and the other finished segments are still retired now.
            if let Err(e) = retire(&self.dir, segment, &mut self.spares.lock()) {
                tracing::warn!(segment = %segment.path.display(), error = %e, "cannot retire a relayed spool segment; recovery will");
            }
        }
        // No directory fsync: if a crash loses these renames or deletions, recovery finds the
        // files again under their segment names, all acknowledged, and retires them again.
        Ok(())
    }
}

/// A relayed segment becomes a spare, or is deleted when there are enough spares.
fn retire(dir: &Path, segment: &SegmentInfo, spares: &mut Vec<PathBuf>) -> io::Result<()> {
    if spares.len() < MAX_SPARES {
        let spare = segment::spare_path_for(dir, segment.first_seq);
        fs::rename(&segment.path, &spare)?;
        spares.push(spare);
        Ok(())
    } else {
        fs::remove_file(&segment.path)
    }
}

/// Validates every segment left by the previous run and takes stock of the spares; see
/// [`Spool::open`].
fn recover(
    dir: &Path,
    acked: u64,
    metrics: &Metrics,
) -> Result<(Vec<SegmentInfo>, Vec<PathBuf>), SpoolError> {
    let mut spares = Vec::new();
    for spare in segment::list_spares(dir)? {
        if spares.len() < MAX_SPARES {
            spares.push(spare);
        } else {
            fs::remove_file(&spare)?;
        }
    }
    let mut kept = Vec::new();
    let mut previous_seq = 0;
    for (first_seq, path) in segment::list(dir)? {
        let report = segment::scan(&path, previous_seq)?;
        if let Some(problem) = report.problem {
            tracing::error!(
                segment = %path.display(),
                problem,
                dropped_bytes = report.dropped_bytes,
                kept_records = report.records,
                "spool segment damaged; cutting it back to its last valid record"
            );
            metrics
                .spool_recovered_bytes_dropped
                .inc_by(report.dropped_bytes);
            segment::truncate(&path, report.valid_len)?;
        }
        let info = SegmentInfo {
            first_seq,
            path,
            generation: report.generation,
            durable_len: report.valid_len,
            last_seq: report.last_seq,
            closed: true,
        };
        if report.records == 0 || report.last_seq <= acked {
            retire(dir, &info, &mut spares)?;
            continue;
        }
        previous_seq = report.last_seq;
        kept.push(info);
    }
    segment::sync_dir(dir)?;
    Ok((kept, spares))
}
