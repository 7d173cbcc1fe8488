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

/// Where a file is written before it gets its name `path` (see [`create_staged`]).
pub fn staged_path(path: &Path) -> PathBuf {
    let mut staged = path.as_os_str().to_owned();
    staged.push(STAGED_SUFFIX);
    PathBuf::from(staged)
}

const STAGED_SUFFIX: &str = ".staged";

/// Creates the file for entries from `first_seq` on, with a durable header and a durable name.
/// Refuses to overwrite a file: recovery leaves no file a new one could be named like. A file
/// that could not be started is deleted again (a full disk would leave one per attempt).
pub fn create(dir: &Path, first_seq: u64) -> io::Result<(File, PathBuf, u64)> {
    let path = path_for(dir, first_seq);
    let (file, generation) = create_at(&path)?;
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok((file, path, generation))
}

/// [`create`], under a name the journal does not list (see [`staged_path`]) until [`publish`]
/// gives it its own: for the file start-up fills with the entries the journal lacked, which
/// must not look like the newest file before it holds them all. Returns the file's eventual
/// path.
pub fn create_staged(dir: &Path, first_seq: u64) -> io::Result<(File, PathBuf, u64)> {
    let path = path_for(dir, first_seq);
    let (file, generation) = create_at(&staged_path(&path))?;
    Ok((file, path, generation))
}

/// Gives a staged file its name, durably.
pub fn publish(path: &Path) -> io::Result<()> {
    std::fs::rename(staged_path(path), path)?;
    sync_dir(&parent_of(path))
}

/// Deletes staged files a crash left (their entries are written again from the spool).
pub fn delete_staged(dir: &Path) -> io::Result<()> {
    for found in std::fs::read_dir(dir)? {
        let path = found?.path();
        if path.to_str().is_some_and(|p| p.ends_with(STAGED_SUFFIX)) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn create_at(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create_new(true).write(true).open(path)?;
    let generation = fastrand::u64(1..);
    let started = file
        .write_all_at(&entry::header(generation), 0)
        .and_then(|()| file.sync_data());
    match started {
        Ok(()) => Ok((file, generation)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

pub fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
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
