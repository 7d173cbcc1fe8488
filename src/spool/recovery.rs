//! Recovery: validating what the previous run left in the spool directory before the spool
//! opens. Segments holding records some sink has not relayed yet are scanned (see `scan`); the
//! findings are applied only once the cursors are settled, so a refused start changes nothing:
//! damaged ranges are quarantined and kept in place (readers step over them), a torn tail of the
//! newest segment is cut off, and segments every sink has passed are retired.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::quarantine::{self, DamagedSegment};
use super::scan::{self, Damage, ScanReport};
use super::segment::{self, SegmentInfo};
use super::{retire, MAX_SPARES};
use crate::metrics::Metrics;

/// One segment file found on disk, scanned unless every sink had relayed all of it.
pub struct Found {
    first_seq: u64,
    path: PathBuf,
    /// The next segment's first sequence number minus one; `None` for the newest segment.
    expected_last_seq: Option<u64>,
    report: Option<ScanReport>,
}

impl Found {
    /// Highest sequence number the segment may hold.
    fn last_seq(&self) -> u64 {
        match &self.report {
            Some(report) => report.last_seq,
            None => self.expected_last_seq.unwrap_or(0),
        }
    }

    fn holds_records(&self) -> bool {
        self.report.as_ref().is_none_or(|r| r.records > 0)
    }
}

/// Scans the segments in `dir`, read-only. Segments whose records are all at or below
/// `relayed_by_all` (the lowest cursor) are not read: they are retired unseen.
pub fn scan_all(dir: &Path, relayed_by_all: u64) -> io::Result<Vec<Found>> {
    let files = segment::list(dir)?;
    let mut found = Vec::with_capacity(files.len());
    for (index, (first_seq, path)) in files.iter().enumerate() {
        let expected_last_seq = files.get(index + 1).map(|(next, _)| next.saturating_sub(1));
        let report = match expected_last_seq {
            Some(last) if last <= relayed_by_all => None,
            _ => Some(scan::scan(path, *first_seq, expected_last_seq)?),
        };
        found.push(Found {
            first_seq: *first_seq,
            path: path.clone(),
            expected_last_seq,
            report,
        });
    }
    Ok(found)
}

/// Highest sequence number in the segments found; 0 when none holds a record.
pub fn last_seq(found: &[Found]) -> u64 {
    found
        .iter()
        .filter(|f| f.holds_records())
        .map(Found::last_seq)
        .max()
        .unwrap_or(0)
}

/// Whether any segment holds a record (relayed or not).
pub fn holds_records(found: &[Found]) -> bool {
    found.iter().any(Found::holds_records)
}

/// Quarantines damage, cuts off a torn tail, retires what every sink has relayed (at or below
/// `relayed_by_all`) and takes stock of the spares. Returns the segments kept, in log order,
/// and the spares.
pub fn apply(
    dir: &Path,
    found: Vec<Found>,
    relayed_by_all: u64,
    metrics: &Metrics,
) -> io::Result<(Vec<SegmentInfo>, Vec<PathBuf>)> {
    let mut spares = Vec::new();
    for spare in segment::list_spares(dir)? {
        if spares.len() < MAX_SPARES {
            spares.push(spare);
        } else {
            fs::remove_file(&spare)?;
        }
    }
    let mut kept = Vec::new();
    for Found {
        first_seq,
        path,
        expected_last_seq,
        report,
    } in found
    {
        let report = match report {
            Some(report) => report,
            None if expected_last_seq.is_some_and(|last| last <= relayed_by_all) => {
                retire(dir, &path, first_seq, &mut spares)?;
                continue;
            }
            // Not scanned on the assumption that every sink had relayed it, which did not hold.
            None => scan::scan(&path, first_seq, expected_last_seq)?,
        };
        let mut pinned = false;
        let file = File::open(&path)?;
        let damaged = DamagedSegment {
            dir,
            path: &path,
            generation: report.generation,
        };
        for damage in &report.damaged {
            pinned |= !quarantine::quarantine(&damaged, &file, damage, metrics);
        }
        if report.torn_tail > 0 {
            let tail = Damage {
                offset: report.valid_len,
                len: report.torn_tail,
                missing_records: 0,
            };
            if quarantine::keep_torn_tail(&damaged, &file, &tail, metrics) {
                segment::truncate(&path, report.valid_len)?;
            }
        }
        let relayed = report.records == 0 || report.last_seq <= relayed_by_all;
        if relayed && !pinned {
            retire(dir, &path, first_seq, &mut spares)?;
            continue;
        }
        kept.push(SegmentInfo {
            first_seq,
            path,
            generation: report.generation,
            durable_len: report.valid_len,
            last_seq: report.last_seq,
            closed: true,
            damaged: report.damaged,
            pinned,
        });
    }
    segment::sync_dir(dir)?;
    Ok((kept, spares))
}
