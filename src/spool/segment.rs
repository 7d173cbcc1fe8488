//! Segment files: the spool is a sequence of append-only files named after the sequence number
//! of their first record, so they sort in log order and whole files are deleted once every
//! record in them has been relayed. Also the recovery scan that validates them on start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::record::{self, DecodeError};

const SUFFIX: &str = ".seg";

/// What the spool knows about one segment file.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Bytes known to be on disk (fsynced); readers never read past this.
    pub durable_len: u64,
    /// Highest sequence number in the durable part; 0 while empty.
    pub last_seq: u64,
    /// No more records will be appended.
    pub closed: bool,
}

pub fn path_for(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// Segment files in `dir`, in log order.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            segments.push((first_seq, path));
        }
    }
    segments.sort_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// Result of validating one segment file.
#[derive(Debug)]
pub struct ScanReport {
    /// Length of the valid prefix.
    pub valid_len: u64,
    pub last_seq: u64,
    pub records: u64,
    /// Bytes after the valid prefix (torn tail or corruption); 0 for a clean segment.
    pub dropped_bytes: u64,
    /// Why the scan stopped early, when it did.
    pub problem: Option<&'static str>,
}

/// Reads a segment and finds its valid prefix: every record complete, checksummed and in order.
pub fn scan(path: &Path, after_seq: u64) -> io::Result<ScanReport> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut offset = 0usize;
    let mut last_seq = 0u64;
    let mut previous = after_seq;
    let mut records = 0u64;
    let mut problem = None;
    while offset < bytes.len() {
        match record::decode(&bytes[offset..]) {
            Ok((rec, len)) if rec.seq > previous => {
                previous = rec.seq;
                last_seq = rec.seq;
                records += 1;
                offset += len;
            }
            Ok(_) => {
                problem = Some("sequence numbers out of order");
                break;
            }
            Err(DecodeError::Incomplete { .. }) => {
                problem = Some("torn record at the end");
                break;
            }
            Err(DecodeError::Corrupt(why)) => {
                problem = Some(why);
                break;
            }
        }
    }
    Ok(ScanReport {
        valid_len: offset as u64,
        last_seq,
        records,
        dropped_bytes: (bytes.len() - offset) as u64,
        problem,
    })
}

/// Cuts a segment back to its valid prefix and makes that durable.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
