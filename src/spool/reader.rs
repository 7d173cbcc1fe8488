//! Reads the spool in log order for one sink (or for all of them at once). It reads only the
//! durable part of each segment (never bytes a concurrent write has not fsynced yet) and skips
//! what its sink acknowledged before.
//! The file reads run on tokio's blocking pool, never on the async workers that serve requests.
//! Bytes that do not decode are damage: the reader steps over a range recovery already
//! quarantined, and quarantines a new one the same way (see `scan`), then goes on with the next
//! valid record instead of giving up on the rest of the segment.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::quarantine::{self, DamagedSegment};
use super::record::{self, DecodeError, SpoolRecord};
use super::scan::{self, Damage};
use super::segment::{self, HEADER_LEN};
use super::Shared;

/// Bytes read from a segment at a time (grown for a larger record).
const READ_CHUNK: usize = 4 * 1024 * 1024;

pub struct SpoolReader {
    /// Shared with the blocking task that reads; only one of them holds it at a time.
    core: Arc<Mutex<ReaderCore>>,
    durable: watch::Receiver<u64>,
}

struct ReaderCore {
    shared: Arc<Shared>,
    /// The sink whose acknowledgements count (its index in `Shared::sinks`); `None` for all.
    sink: Option<usize>,
    /// First sequence number of the segment being read (its name).
    segment_first_seq: u64,
    /// Generation of the segment being read; its records carry it.
    generation: u64,
    file: Option<File>,
    offset: u64,
    /// Sequence number of the last record decoded in this segment.
    segment_previous: u64,
    /// Highest sequence number handed out so far.
    last_seq: u64,
    /// Hands out acknowledged records too (recovery's reader).
    acknowledged_too: bool,
    chunk: Vec<u8>,
    /// Records read for a caller that went away before taking them: handed out next.
    ready: Vec<SpoolRecord>,
}

impl SpoolReader {
    pub(super) fn new(shared: Arc<Shared>, sink: Option<usize>) -> Self {
        let durable = shared.durable_seq.subscribe();
        let segment_first_seq = shared.segments.lock().first().map_or(0, |s| s.first_seq);
        let core = ReaderCore {
            last_seq: acked(&shared, sink),
            acknowledged_too: false,
            shared,
            sink,
            segment_first_seq,
            generation: 0,
            file: None,
            offset: HEADER_LEN,
            segment_previous: segment_first_seq.saturating_sub(1),
            chunk: Vec::new(),
            ready: Vec::new(),
        };
        Self {
            core: Arc::new(Mutex::new(core)),
            durable,
        }
    }

    /// A reader of the records after `seq` that the spool holds, acknowledged or not, starting
    /// in the segment that holds `seq + 1` (for recovery, before the writer starts).
    pub(super) fn after(shared: Arc<Shared>, seq: u64) -> Self {
        let start = {
            let segments = shared.segments.lock();
            segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= seq.saturating_add(1))
                .or(segments.first())
                .map(|s| s.first_seq)
        };
        let reader = Self::new(shared, None);
        {
            let mut core = reader.core.lock();
            core.last_seq = seq;
            core.acknowledged_too = true;
            if let Some(first_seq) = start {
                core.move_to(first_seq);
            }
        }
        reader
    }

    /// Waits until at least one unread record is durable, then returns up to `max` of them.
    /// Cancel-safe: records read for a call that was dropped are returned by the next one.
    pub async fn next_batch(&mut self, max: usize) -> io::Result<Vec<SpoolRecord>> {
        loop {
            self.durable.borrow_and_update();
            let core = self.core.clone();
            tokio::task::spawn_blocking(move || core.lock().fill(max))
                .await
                .map_err(io::Error::other)??;
            let batch = {
                let mut core = self.core.lock();
                let batch = std::mem::take(&mut core.ready);
                if let Some(first) = batch.first() {
                    let sinks = match core.sink {
                        Some(index) => &core.shared.sinks[index..=index],
                        None => &core.shared.sinks[..],
                    };
                    for sink in sinks {
                        sink.oldest_pending_ms
                            .store(first.notification.received_at_ms, Ordering::Relaxed);
                    }
                }
                batch
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            if self.durable.changed().await.is_err() {
                // The writer is gone: nothing new will arrive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Returns up to `max` durable records that were not read yet, without waiting; reads on
    /// the calling thread.
    pub fn read_available(&mut self, max: usize) -> io::Result<Vec<SpoolRecord>> {
        let mut core = self.core.lock();
        core.fill(max)?;
        Ok(std::mem::take(&mut core.ready))
    }
}

impl ReaderCore {
    /// Reads up to `max` records into `ready`, unless records are waiting there already.
    fn fill(&mut self, max: usize) -> io::Result<()> {
        if self.ready.is_empty() {
            self.ready = self.read(max)?;
        }
        Ok(())
    }

    fn read(&mut self, max: usize) -> io::Result<Vec<SpoolRecord>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(position) = self.position() else {
                break;
            };
            if self.offset >= position.durable_len {
                match (position.closed, position.next_first_seq) {
                    (true, Some(next)) => {
                        self.move_to(next);
                        continue;
                    }
                    _ => break,
                }
            }
            if let Some(damaged_at) = self.read_records(position.durable_len, max, &mut out)? {
                self.step_over_damage(damaged_at, &position)?;
            }
        }
        Ok(out)
    }

    /// Decodes records from the current segment up to `limit`; returns the offset of bytes
    /// that do not decode, if it met some.
    fn read_records(
        &mut self,
        limit: u64,
        max: usize,
        out: &mut Vec<SpoolRecord>,
    ) -> io::Result<Option<u64>> {
        if self.file.is_none() {
            let path = segment::path_for(&self.shared.dir, self.segment_first_seq);
            self.file = Some(File::open(path)?);
        }
        let file = self.file.as_ref().expect("opened above");
        let mut want = READ_CHUNK.min((limit - self.offset) as usize);
        loop {
            self.chunk.resize(want, 0);
            file.read_exact_at(&mut self.chunk, self.offset)?;
            let mut used = 0;
            let mut damaged = false;
            while out.len() < max && used < self.chunk.len() {
                match record::decode(&self.chunk[used..], self.generation) {
                    Ok((rec, len)) if rec.seq > self.segment_previous => {
                        used += len;
                        self.segment_previous = rec.seq;
                        let unacked =
                            self.acknowledged_too || rec.seq > acked(&self.shared, self.sink);
                        if rec.seq > self.last_seq && unacked {
                            self.last_seq = rec.seq;
                            out.push(rec);
                        }
                    }
                    Err(DecodeError::Incomplete { .. }) if used > 0 => {
                        break; // the rest of this record is read with the next chunk
                    }
                    Err(DecodeError::Incomplete { needed })
                        if self.offset + needed as u64 <= limit =>
                    {
                        want = needed;
                        break;
                    }
                    // Corrupt, of another generation, out of order, or running past the
                    // durable end: inside the durable part every record is current, so damage.
                    _ => {
                        damaged = true;
                        break;
                    }
                }
            }
            if used == 0 && !damaged && out.len() < max {
                continue; // read again with room for the whole record
            }
            self.offset += used as u64;
            return Ok(damaged.then_some(self.offset));
        }
    }

    /// Moves past the damaged bytes at `at`: to the end of a range already quarantined, or to
    /// the next valid record after quarantining the range up to it.
    fn step_over_damage(&mut self, at: u64, position: &Position) -> io::Result<()> {
        // A known range moves the reader forward only if it ends past `at` (recorded damage
        // never holds the reader in place).
        if let Some(end) = self.known_damage_end(at).filter(|&end| end > at) {
            self.offset = end;
            return Ok(());
        }
        let file = self.file.as_ref().expect("opened by read_records");
        let limit = position.durable_len;
        let previous = self.segment_previous;
        let (end, missing_records) =
            match scan::find_next_record(file, at + 1, limit, self.generation, previous)? {
                Some((next, seq)) => (next, seq - previous - 1),
                None => (limit, position.last_seq.saturating_sub(previous)),
            };
        let damage = Damage {
            offset: at,
            len: end - at,
            missing_records,
        };
        if self.claim(&damage) {
            let path = segment::path_for(&self.shared.dir, self.segment_first_seq);
            let damaged = DamagedSegment {
                dir: &self.shared.dir,
                path: &path,
                generation: self.generation,
            };
            if !quarantine::quarantine(&damaged, file, &damage, &self.shared.metrics) {
                self.with_segment(|s| s.pinned = true);
            }
        }
        self.offset = end;
        Ok(())
    }

    fn known_damage_end(&self, at: u64) -> Option<u64> {
        let segments = self.shared.segments.lock();
        let segment = segments
            .iter()
            .find(|s| s.first_seq == self.segment_first_seq)?;
        segment
            .damaged
            .iter()
            .find(|d| d.offset == at)
            .map(Damage::end)
    }

    /// Records new damage on the segment so that other readers step over it quietly; false if
    /// another reader recorded it first.
    fn claim(&self, damage: &Damage) -> bool {
        let mut claimed = false;
        self.with_segment(|s| {
            if !s.damaged.iter().any(|d| d.offset == damage.offset) {
                s.damaged.push(damage.clone());
                claimed = true;
            }
        });
        claimed
    }

    fn with_segment(&self, change: impl FnOnce(&mut segment::SegmentInfo)) {
        let mut segments = self.shared.segments.lock();
        if let Some(segment) = segments
            .iter_mut()
            .find(|s| s.first_seq == self.segment_first_seq)
        {
            change(segment);
        }
    }

    fn move_to(&mut self, first_seq: u64) {
        self.segment_first_seq = first_seq;
        self.segment_previous = first_seq.saturating_sub(1);
        self.file = None;
        self.offset = HEADER_LEN;
    }

    /// Where the current segment's durable data ends, and which segment follows it. If the
    /// current segment is gone (deleted after acknowledgement) the reader moves to the next one.
    fn position(&mut self) -> Option<Position> {
        let segments = self.shared.segments.lock();
        let index = segments
            .iter()
            .position(|s| s.first_seq >= self.segment_first_seq)?;
        let segment = &segments[index];
        if segment.first_seq != self.segment_first_seq {
            let first_seq = segment.first_seq;
            drop(segments);
            self.move_to(first_seq);
            return self.position();
        }
        self.generation = segment.generation;
        Some(Position {
            durable_len: segment.durable_len,
            closed: segment.closed,
            last_seq: segment.last_seq,
            // Strictly after this one, so the reader always moves forward (a damaged spool can
            // list segments out of order or twice; the fuzzer built one that looped here).
            next_first_seq: segments[index + 1..]
                .iter()
                .map(|s| s.first_seq)
                .find(|&first| first > segment.first_seq),
        })
    }
}

/// Highest sequence number `sink` (every sink, when `None`) acknowledged.
fn acked(shared: &Shared, sink: Option<usize>) -> u64 {
    match sink {
        Some(index) => shared.sinks[index].acked.load(Ordering::Relaxed),
        None => shared.acked_seq.load(Ordering::Relaxed),
    }
}

struct Position {
    durable_len: u64,
    closed: bool,
    /// Highest sequence number in the durable part.
    last_seq: u64,
    next_first_seq: Option<u64>,
}
