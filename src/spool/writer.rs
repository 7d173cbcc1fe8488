//! The spool's single writer thread. It takes every append waiting in its queue, writes them with
//! one `write` and one `fdatasync`, then answers them all: concurrent requests share one fsync
//! (group commit) instead of paying one each. Under concurrent load it also keeps a least
//! interval between commits, so that a group collects more appends: each fsync costs CPU and an
//! I/O operation whatever it carries (see BENCHMARKS.md). A batch (what a WebSocket source read
//! at once) arrives as one command and is written in one group, in order. A new segment reuses a spare file when
//! there is one (see `segment`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record;
use super::segment::{self, SegmentInfo};
use super::{Shared, SpoolError};
use crate::id_journal::Journal;
use crate::metrics::SpoolSync;
use crate::notification::Notification;

/// Most appends written in one group; bounds the latency of the first one in the group.
const MAX_GROUP: usize = 4096;

type Reply = oneshot::Sender<Result<u64, SpoolError>>;

// A single append is the common command (one per webhook request): boxing its notification to
// shrink the enum would cost an allocation per request, more than the moves it saves.
#[allow(clippy::large_enum_variant)]
pub(super) enum Command {
    Append(Notification, Reply),
    /// Appends that go into one group, in this order; once one is refused for want of room,
    /// the rest are refused too, so that what is stored stays in order.
    AppendBatch(Vec<(Notification, Reply)>),
    Close,
}

/// An append waiting in the group being written.
struct Pending {
    notification: Notification,
    reply: Reply,
    /// Part of a batch, after its first append: written only if the one before it was.
    chained: bool,
}

impl Pending {
    fn single(notification: Notification, reply: Reply) -> Self {
        Pending {
            notification,
            reply,
            chained: false,
        }
    }

    fn batch(appends: Vec<(Notification, Reply)>) -> impl Iterator<Item = Pending> {
        appends
            .into_iter()
            .enumerate()
            .map(|(i, (notification, reply))| Pending {
                notification,
                reply,
                chained: i > 0,
            })
    }
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    file: File,
    active_first_seq: u64,
    active_generation: u64,
    /// End of the durable data in the active segment, header included.
    active_len: u64,
    next_seq: u64,
    segment_bytes: u64,
    /// Set after a failed write: the next group starts a fresh segment.
    must_roll: bool,
    buffer: Vec<u8>,
    commit_interval: Duration,
    /// When the last group commit started, and how many appends it held.
    last_commit: Option<(Instant, usize)>,
    /// Where each group's ids go too, written before the group is answered.
    ids: Journal,
}

impl Writer {
    pub(super) fn start(
        shared: Arc<Shared>,
        next_seq: u64,
        segment_bytes: u64,
        commit_interval: Duration,
        ids: Journal,
    ) -> io::Result<Writer> {
        let (file, generation) = create_segment(&shared, next_seq)?;
        Ok(Writer {
            shared,
            file,
            active_first_seq: next_seq,
            active_generation: generation,
            active_len: segment::HEADER_LEN,
            next_seq,
            segment_bytes,
            must_roll: false,
            buffer: Vec::with_capacity(1 << 20),
            commit_interval,
            last_commit: None,
            ids,
        })
    }

    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut group = Vec::new();
        'serve: while let Some(first) = queue.blocking_recv() {
            let mut closing = false;
            match first {
                Command::Append(n, reply) => {
                    self.wait_for_company();
                    group.push(Pending::single(n, reply));
                }
                Command::AppendBatch(appends) => {
                    self.wait_for_company();
                    group.extend(Pending::batch(appends));
                }
                Command::Close => closing = true,
            }
            while !closing && group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(Command::Append(n, reply)) => group.push(Pending::single(n, reply)),
                    Ok(Command::AppendBatch(appends)) => group.extend(Pending::batch(appends)),
                    Ok(Command::Close) => closing = true,
                    Err(_) => break,
                }
            }
            self.write_group(&mut group);
            if closing {
                break 'serve;
            }
        }
        queue.close();
        // Appends that raced with Close are refused rather than left hanging.
        while let Ok(command) = queue.try_recv() {
            let replies = match command {
                Command::Append(_, reply) => vec![reply],
                Command::AppendBatch(appends) => appends.into_iter().map(|(_, r)| r).collect(),
                Command::Close => continue,
            };
            for reply in replies {
                let _ = reply.send(Err(SpoolError::Closed));
            }
        }
    }

    /// When the previous group held more than one append (requests arrive concurrently), waits
    /// until `commit_interval` after that group's commit started, so this group collects the
    /// appends that arrive meanwhile. A sender that waits for each answer before sending the next
    /// makes groups of one and is never held back.
    fn wait_for_company(&self) {
        let Some((started, appends)) = self.last_commit else {
            return;
        };
        if appends < 2 {
            return;
        }
        if let Some(wait) = self.commit_interval.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    fn write_group(&mut self, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        self.last_commit = Some((Instant::now(), group.len()));
        if let Err(e) = self.roll_if_needed() {
            tracing::error!(error = %e, "cannot start a new spool segment");
            self.shared.write_ok.store(false, Ordering::Relaxed);
            for pending in group.drain(..) {
                let error = SpoolError::Io(io::Error::new(e.kind(), e.to_string()));
                let _ = pending.reply.send(Err(error));
            }
            return;
        }
        self.buffer.clear();
        let mut written = Vec::with_capacity(group.len());
        let used = self.shared.disk_bytes.load(Ordering::Relaxed);
        let mut full = false;
        for pending in group.drain(..) {
            let reply = pending.reply;
            // A batch keeps its order: what follows an append refused for room is refused too.
            if pending.chained && full {
                let _ = reply.send(Err(SpoolError::Full));
                continue;
            }
            full = false;
            let before = self.buffer.len();
            if let Err(e) = record::encode(
                self.next_seq,
                self.active_generation,
                &pending.notification,
                &mut self.buffer,
            ) {
                let _ = reply.send(Err(SpoolError::Unrepresentable(e)));
                continue;
            }
            if used + self.buffer.len() as u64 > self.shared.max_bytes {
                self.buffer.truncate(before);
                full = true;
                let _ = reply.send(Err(SpoolError::Full));
                continue;
            }
            self.ids
                .stage(self.next_seq, pending.notification.envelope.id.as_str());
            written.push((self.next_seq, reply));
            self.next_seq += 1;
        }
        let Some(&(last_seq, _)) = written.last() else {
            return;
        };
        let started = Instant::now();
        // The group's ids go to the journal first (written, fsynced later: see `id_journal`);
        // the group is answered only once both are written and the records are durable.
        self.ids.commit_staged();
        let outcome = self
            .file
            .write_all_at(&self.buffer, self.active_len)
            .and_then(|()| self.file.sync_data());
        let journaled = self.ids.wait_committed();
        match outcome.and(journaled) {
            Ok(()) => {
                let len = self.buffer.len() as u64;
                self.active_len += len;
                self.shared.disk_bytes.fetch_add(len, Ordering::Relaxed);
                self.update_active(|s| {
                    s.durable_len += len;
                    s.last_seq = last_seq;
                });
                self.shared.write_ok.store(true, Ordering::Relaxed);
                self.shared.metrics.spool_fsyncs.inc();
                self.shared
                    .metrics
                    .spool_synced(SpoolSync::Append, started.elapsed());
                self.shared
                    .metrics
                    .spool_appends
                    .inc_by(written.len() as u64);
                self.shared.durable_seq.send_replace(last_seq);
                for (seq, reply) in written {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = written.len(), "spool write failed");
                self.shared.write_ok.store(false, Ordering::Relaxed);
                self.ids.abandon();
                // Cut off whatever part of the group reached the file, and continue in a fresh
                // segment: after a failed fsync the state of the old file cannot be trusted.
                if let Err(e) = self.file.set_len(self.active_len) {
                    tracing::error!(error = %e, "cannot cut back a failed spool write");
                }
                self.must_roll = true;
                for (_, reply) in written {
                    let _ =
                        reply.send(Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))));
                }
            }
        }
    }

    fn roll_if_needed(&mut self) -> io::Result<()> {
        let full = self.active_len >= self.segment_bytes;
        if !(full || self.must_roll) || self.next_seq == self.active_first_seq {
            return Ok(());
        }
        let (file, generation) = create_segment(&self.shared, self.next_seq)?;
        self.update_active(|s| s.closed = true);
        self.file = file;
        self.active_first_seq = self.next_seq;
        self.active_generation = generation;
        self.active_len = segment::HEADER_LEN;
        self.must_roll = false;
        Ok(())
    }

    fn update_active(&self, change: impl FnOnce(&mut SegmentInfo)) {
        let mut segments = self.shared.segments.lock();
        if let Some(active) = segments
            .iter_mut()
            .rev()
            .find(|s| s.first_seq == self.active_first_seq)
        {
            change(active);
        }
    }
}

/// Starts the segment whose first record will be `first_seq`, in a spare file if there is one.
fn create_segment(shared: &Shared, first_seq: u64) -> io::Result<(File, u64)> {
    let path = segment::path_for(&shared.dir, first_seq);
    // The spares stay locked until the spare has its new name, so that no segment is retired
    // under the name meanwhile (see `retire`).
    let recycled = {
        let mut spares = shared.spares.lock();
        spares.pop().and_then(|spare| match recycle(&spare, &path) {
            Ok(started) => Some(started),
            Err(e) => {
                tracing::warn!(spare = %spare.display(), error = %e, "cannot reuse a spare spool segment; deleting it");
                let _ = fs::remove_file(&spare);
                None
            }
        })
    };
    let (file, generation) = match recycled {
        Some(started) => started,
        None => {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            let generation = segment::start_generation(&file)?;
            (file, generation)
        }
    };
    segment::sync_dir(&shared.dir)?;
    shared.segments.lock().push(SegmentInfo {
        first_seq,
        path,
        generation,
        durable_len: segment::HEADER_LEN,
        last_seq: 0,
        closed: false,
        damaged: Vec::new(),
        pinned: false,
    });
    shared
        .disk_bytes
        .fetch_add(segment::HEADER_LEN, Ordering::Relaxed);
    Ok((file, generation))
}

/// Gives a spare file a fresh generation, then its segment name (in that order: see
/// `segment::start_generation`).
fn recycle(spare: &Path, path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().write(true).open(spare)?;
    let generation = segment::start_generation(&file)?;
    fs::rename(spare, path)?;
    Ok((file, generation))
}
