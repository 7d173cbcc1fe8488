//! Reads the spool in log order for the relay. It reads only the durable part of each segment
//! (never bytes a concurrent write has not fsynced yet) and skips what was acknowledged before.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::record::{self, DecodeError, SpoolRecord};
use super::segment::HEADER_LEN;
use super::Shared;

/// Bytes read from a segment at a time (grown for a larger record).
const READ_CHUNK: usize = 4 * 1024 * 1024;

pub struct SpoolReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    /// First sequence number of the segment being read (its name).
    segment_first_seq: u64,
    /// Generation of the segment being read; its records carry it.
    generation: u64,
    file: Option<File>,
    offset: u64,
    /// Highest sequence number handed out so far.
    last_seq: u64,
    chunk: Vec<u8>,
}

impl SpoolReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let durable = shared.durable_seq.subscribe();
        let segment_first_seq = shared.segments.lock().first().map_or(0, |s| s.first_seq);
        let last_seq = shared.acked_seq.load(Ordering::Relaxed);
        Self {
            shared,
            durable,
            segment_first_seq,
            generation: 0,
            file: None,
            offset: HEADER_LEN,
            last_seq,
            chunk: Vec::new(),
        }
    }

    /// Waits until at least one unread record is durable, then returns up to `max` of them.
    pub async fn next_batch(&mut self, max: usize) -> io::Result<Vec<SpoolRecord>> {
        loop {
            self.durable.borrow_and_update();
            let batch = self.read_available(max)?;
            if !batch.is_empty() {
                let first_received = batch[0].notification.received_at_ms;
                self.shared
                    .oldest_pending_ms
                    .store(first_received, Ordering::Relaxed);
                return Ok(batch);
            }
            if self.durable.changed().await.is_err() {
                // The writer is gone: nothing new will arrive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Returns up to `max` durable records that were not read yet, without waiting.
    pub fn read_available(&mut self, max: usize) -> io::Result<Vec<SpoolRecord>> {
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
            if !self.read_records(position.durable_len, max, &mut out)? {
                // The rest of this segment is unreadable; it was reported. Go on with the next.
                match position.next_first_seq {
                    Some(next) => self.move_to(next),
                    None => {
                        self.offset = position.durable_len;
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Decodes records from the current segment up to `limit`; false if it met corruption.
    fn read_records(
        &mut self,
        limit: u64,
        max: usize,
        out: &mut Vec<SpoolRecord>,
    ) -> io::Result<bool> {
        if self.file.is_none() {
            let path = super::segment::path_for(&self.shared.dir, self.segment_first_seq);
            self.file = Some(File::open(path)?);
        }
        let file = self.file.as_ref().expect("opened above");
        let mut want = READ_CHUNK.min((limit - self.offset) as usize);
        loop {
            self.chunk.resize(want, 0);
            file.read_exact_at(&mut self.chunk, self.offset)?;
            let mut used = 0;
            while out.len() < max && used < self.chunk.len() {
                match record::decode(&self.chunk[used..], self.generation) {
                    Ok((rec, len)) => {
                        used += len;
                        let acked = self.shared.acked_seq.load(Ordering::Relaxed);
                        if rec.seq > self.last_seq && rec.seq > acked {
                            self.last_seq = rec.seq;
                            out.push(rec);
                        }
                    }
                    Err(DecodeError::Incomplete { needed }) => {
                        if used == 0 {
                            if self.offset + needed as u64 > limit {
                                self.report_corruption("record runs past the durable end");
                                return Ok(false);
                            }
                            want = needed;
                        }
                        break;
                    }
                    Err(DecodeError::Corrupt(why)) => {
                        self.offset += used as u64;
                        self.report_corruption(why);
                        return Ok(false);
                    }
                    Err(DecodeError::Stale) => {
                        // Inside the durable part every record is current; this is damage.
                        self.offset += used as u64;
                        self.report_corruption("record of another generation");
                        return Ok(false);
                    }
                }
            }
            if used == 0 && out.len() < max {
                continue; // read again with room for the whole record
            }
            self.offset += used as u64;
            return Ok(true);
        }
    }

    fn report_corruption(&self, why: &'static str) {
        tracing::error!(
            segment_first_seq = self.segment_first_seq,
            offset = self.offset,
            problem = why,
            "spool segment unreadable past this point; skipping to the next segment"
        );
        self.shared.metrics.spool_recovered_bytes_dropped.inc();
    }

    fn move_to(&mut self, first_seq: u64) {
        self.segment_first_seq = first_seq;
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
            self.segment_first_seq = segment.first_seq;
            self.file = None;
            self.offset = HEADER_LEN;
        }
        self.generation = segment.generation;
        Some(Position {
            durable_len: segment.durable_len,
            closed: segment.closed,
            next_first_seq: segments.get(index + 1).map(|s| s.first_seq),
        })
    }
}

struct Position {
    durable_len: u64,
    closed: bool,
    next_first_seq: Option<u64>,
}
