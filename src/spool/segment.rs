//! Segment files: the spool is a sequence of append-only files named after the sequence number
//! of their first record, so they sort in log order. Once every record in a segment has been
//! relayed, the file is kept as a spare and recycled as a later segment, its old bytes
//! overwritten in place. Deleting it instead would free its blocks, and on a file system mounted
//! with online discard, or any busy journal, that stalls every concurrent fsync for tens of
//! milliseconds (BENCHMARKS.md); overwriting allocated blocks needs no metadata change at all.
//!
//! Each segment starts with a header holding a random generation, renewed on every reuse; each
//! record repeats it, so the recovery scan knows where the current data of a recycled file ends.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::scan::Damage;

const SUFFIX: &str = ".seg";
const SPARE_SUFFIX: &str = ".spare";
pub const MAGIC: &[u8; 8] = b"DLGWSEG1";
/// Bytes before the first record: the magic and the generation.
pub const HEADER_LEN: u64 = 16;

/// What the spool knows about one segment file.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Identifies this use of the file; records of an earlier use carry another one.
    pub generation: u64,
    /// End of the bytes known to be on disk (fsynced), header included; readers never read
    /// past this.
    pub durable_len: u64,
    /// Highest sequence number in the durable part; 0 while empty.
    pub last_seq: u64,
    /// No more records will be appended.
    pub closed: bool,
    /// Damaged ranges found so far, quarantined: readers step over them.
    pub damaged: Vec<Damage>,
    /// Kept whatever the cursors say: its damage could not be quarantined.
    pub pinned: bool,
}

pub fn path_for(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// Where a relayed segment waits to be recycled.
pub fn spare_path_for(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SPARE_SUFFIX}"))
}

/// Segment files in `dir`, in log order.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    list_with_suffix(dir, SUFFIX)
}

/// Spare files in `dir`.
pub fn list_spares(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(list_with_suffix(dir, SPARE_SUFFIX)?
        .into_iter()
        .map(|(_, path)| path)
        .collect())
}

/// Files in `dir` named `<first seq><suffix>`, in sequence order (segments, spares, and the id
/// journal's files, which are named the same way).
pub(crate) fn list_with_suffix(dir: &Path, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            files.push((first_seq, path));
        }
    }
    files.sort_by_key(|(seq, _)| *seq);
    Ok(files)
}

/// Makes `file` a segment of a fresh generation: writes the header over whatever the file held
/// and makes it durable. Done before the file gets its segment name, so a segment's name never
/// comes with an old generation, whose records would pass for current ones.
pub fn start_generation(file: &File) -> io::Result<u64> {
    let generation = fastrand::u64(1..);
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&generation.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_data()?;
    Ok(generation)
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
