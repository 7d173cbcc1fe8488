//! Acknowledgements: a sink's cursor store after each relayed batch, and the retiring of the
//! segments every sink has passed. A store only reaches the page cache (the cursor fsyncs at
//! most every `cursor::SYNC_INTERVAL`); before a segment is deleted or reused, every sink's
//! cursor is made durable, so a machine crash can never leave a cursor pointing into a segment
//! that is gone, and so are the id journal's entries for its records (see `id_journal`).

use std::io;
use std::sync::atomic::Ordering;

use super::segment::SegmentInfo;
use super::{retire, Shared};

impl Shared {
    /// Records that `sink` (every sink when `None`) confirmed all records up to `seq`.
    pub(super) fn acknowledge(&self, sink: Option<usize>, seq: u64) -> io::Result<()> {
        let sinks = match sink {
            Some(index) => &self.sinks[index..=index],
            None => &self.sinks[..],
        };
        for progress in sinks {
            let mut cursor = progress.cursor.lock();
            if seq <= progress.acked.load(Ordering::Relaxed) {
                continue;
            }
            cursor.store(seq, false)?;
            progress.acked.store(seq, Ordering::Relaxed);
        }
        self.retire_relayed()
    }

    /// Retires the closed segments whose records every sink has acknowledged and whose ids the
    /// id journal, when there is one, holds durably (it is asked to fdatasync first).
    pub(super) fn retire_relayed(&self) -> io::Result<()> {
        let relayed_by_all = self
            .sinks
            .iter()
            .map(|s| s.acked.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        self.acked_seq.fetch_max(relayed_by_all, Ordering::Relaxed);
        let relayed = |s: &SegmentInfo| s.closed && !s.pinned && s.last_seq <= relayed_by_all;
        if !self.segments.lock().iter().any(relayed) {
            return Ok(());
        }
        // Until a segment goes, its records hold their ids; after, only the journal does.
        let journaled = self
            .journal
            .get()
            .map_or(u64::MAX, |journal| journal.make_durable());
        let retirable = |s: &SegmentInfo| relayed(s) && s.last_seq <= journaled;
        if !self.segments.lock().iter().any(retirable) {
            return Ok(());
        }
        // Every cursor holds a position at or past `relayed_by_all` (stored before it was
        // counted); make them durable before a segment goes.
        for progress in &self.sinks {
            progress.cursor.lock().sync()?;
        }
        let finished: Vec<SegmentInfo> = {
            let mut segments = self.segments.lock();
            let (done, keep) = segments.drain(..).partition(retirable);
            *segments = keep;
            done
        };
        for segment in &finished {
            self.disk_bytes
                .fetch_sub(segment.durable_len, Ordering::Relaxed);
            // The cursors are durable, so this is housekeeping: a file left behind is retired
            // by the next recovery, and the other finished segments are still retired now.
            let mut spares = self.spares.lock();
            if let Err(e) = retire(&self.dir, &segment.path, segment.first_seq, &mut spares) {
                tracing::warn!(segment = %segment.path.display(), error = %e, "cannot retire a relayed spool segment; recovery will");
            }
        }
        // No directory fsync: if a crash loses these renames or deletions, recovery finds the
        // files again under their segment names, all acknowledged, and retires them again.
        Ok(())
    }
}
