//! The journal's files: `<first-seq>.ids` in the `ids` directory beside the spool's segments,
//! named after the sequence number of the first entry they hold, so they sort in journal order.
//! A file is only ever appended to by the process that created it; a new process starts a new
//! file, and an older one is deleted whole once its ids have expired (see `writer`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::entry::{self, ENTRY_LEN, HEADER_LEN};

const SUFFIX: &str = ".ids";

/// What the journal keeps about a file it is not writing to: enough to know when it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStats {
    pub path: PathBuf,
    /// Entries it holds (valid ones, as far as recovery read them).
    pub entries: u64,
    /// Accept time of its newest entry: once that is older than `dedup.ttl`, so is every entry.
    pub newest_ms: u64,
    pub bytes: u64,
}

pub fn path_for(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// Journal files in `dir`, in journal order.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    crate::spool::segment::list_with_suffix(dir, SUFFIX)
}

/// Entries a file of `bytes` can hold, counting a partial one.
pub fn entries_in(bytes: u64) -> u64 {
    bytes.saturating_sub(HEADER_LEN).div_ceil(ENTRY_LEN as u64)
}

/// Creates the file for entries from `first_seq` on, with a durable header and a durable name.
/// Refuses to overwrite a file: recovery leaves no file a new one could be named like.
pub fn create(dir: &Path, first_seq: u64) -> io::Result<(File, PathBuf, u64)> {
    let path = path_for(dir, first_seq);
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let generation = fastrand::u64(1..);
    file.write_all_at(&entry::header(generation), 0)?;
    file.sync_data()?;
    sync_dir(dir)?;
    Ok((file, path, generation))
}

/// Cuts `path` back to `len` bytes and makes that durable.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// fsyncs a directory so that file creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
