//! One gateway process per spool directory. The lock is an `flock` on the directory itself,
//! opened read-only: nothing an operator can delete or replace. (Earlier versions locked a `lock`
//! file inside it; the empty file left after every clean stop looked stale, and once it was
//! deleted a second gateway locked a new one and recycled the first one's active segment.) The
//! kernel drops the lock when the process exits, however it exits, so a killed gateway never
//! leaves a stale lock behind.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::Path;

use super::SpoolError;

/// The lock file of earlier versions.
const LEGACY_LOCK_FILE: &str = "lock";

/// Held for as long as the spool is open.
pub struct DirectoryLock {
    _directory: File,
}

/// Locks `dir` for this process, or names it in the error if another process holds it.
pub fn lock(dir: &Path) -> Result<DirectoryLock, SpoolError> {
    let directory = File::open(dir)?;
    try_lock(&directory, dir)?;
    retire_legacy_lock_file(dir)?;
    Ok(DirectoryLock {
        _directory: directory,
    })
}

fn try_lock(file: &File, dir: &Path) -> Result<(), SpoolError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.to_owned())),
        Err(TryLockError::Error(e)) => Err(SpoolError::Io(e)),
    }
}

/// A gateway of an earlier version still running on this directory holds its `lock` file:
/// refuse. Otherwise the file is no longer used and goes.
fn retire_legacy_lock_file(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join(LEGACY_LOCK_FILE);
    let legacy = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    try_lock(&legacy, dir)?;
    drop(legacy);
    fs::remove_file(&path)?;
    Ok(())
}
