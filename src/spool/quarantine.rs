//! Damaged spool bytes are never cut away or relayed past in silence: each damaged range is
//! copied, fsynced, into `<spool>/quarantine/<segment>-<generation>-<offset>.bin`, logged as an
//! error naming the segment, offset and length, and counted
//! (`dataloy_gateway_spool_quarantined_bytes_total`, `…_records_total`). Only then do readers
//! step over it. A torn tail is copied there too before it is cut off (reported as a torn tail). The file name is unique to one use of a segment file, so the damage found again
//! after a restart lands in the same file and is not counted twice. An operator can inspect the
//! bytes (a record that lost a byte still holds its body almost intact) and delete the files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::scan::{Damage, ReadAt};
use super::segment::sync_dir;
use crate::metrics::Metrics;

const DIR_NAME: &str = "quarantine";
/// Bytes copied at a time.
const COPY_CHUNK: u64 = 4 * 1024 * 1024;

/// The damaged segment: its file and the use (generation) the damage was found in.
pub struct DamagedSegment<'a> {
    pub dir: &'a Path,
    pub path: &'a Path,
    pub generation: u64,
}

/// Copies `damage` out of the segment, then logs and counts it. Returns false when the copy
/// failed: the caller must then keep the segment (the bytes exist nowhere else).
pub fn quarantine(
    segment: &DamagedSegment<'_>,
    source: &(impl ReadAt + ?Sized),
    damage: &Damage,
    metrics: &Metrics,
) -> bool {
    let path = quarantine_path(segment, damage.offset);
    match keep(segment.dir, &path, source, damage) {
        Ok(Kept::New) => {
            tracing::error!(
                segment = %segment.path.display(),
                offset = damage.offset,
                length = damage.len,
                missing_records = damage.missing_records,
                quarantine = %path.display(),
                "spool segment damaged: these bytes hold no readable record; they are kept in \
                 quarantine and the records after them are relayed"
            );
            metrics.spool_quarantined(damage.len, damage.missing_records);
            true
        }
        Ok(Kept::Already) => {
            tracing::warn!(
                segment = %segment.path.display(),
                offset = damage.offset,
                length = damage.len,
                quarantine = %path.display(),
                "spool segment damage found again; already in quarantine"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                segment = %segment.path.display(),
                offset = damage.offset,
                length = damage.len,
                missing_records = damage.missing_records,
                error = %e,
                "spool segment damaged and the damaged bytes cannot be copied to quarantine; the \
                 segment is kept until they can"
            );
            metrics.spool_quarantined(0, damage.missing_records);
            false
        }
    }
}

/// Copies the torn record at the end of the newest segment out before recovery cuts it off, and
/// reports it as a torn tail (a warning, `dataloy_gateway_spool_recovery_dropped_bytes_total`):
/// normally a write a crash interrupted, never answered; but a record damaged at the very end
/// looks the same, so its bytes are kept too. Returns false when the copy failed: the caller
/// must then leave the bytes where they are.
pub fn keep_torn_tail(
    segment: &DamagedSegment<'_>,
    source: &(impl ReadAt + ?Sized),
    tail: &Damage,
    metrics: &Metrics,
) -> bool {
    let path = quarantine_path(segment, tail.offset);
    let kept = keep(segment.dir, &path, source, tail);
    if let Err(e) = &kept {
        tracing::warn!(
            segment = %segment.path.display(),
            offset = tail.offset,
            length = tail.len,
            error = %e,
            "spool segment ends in a torn record; it cannot be copied to quarantine, so it is \
             left in place (never read)"
        );
        return false;
    }
    tracing::warn!(
        segment = %segment.path.display(),
        offset = tail.offset,
        length = tail.len,
        quarantine = %path.display(),
        "spool segment ends in a torn record (a write a crash interrupted, never answered); \
         cutting it off, a copy kept in quarantine"
    );
    if matches!(kept, Ok(Kept::New)) {
        metrics.spool_recovered_bytes_dropped.inc_by(tail.len);
    }
    true
}

pub fn quarantine_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join(DIR_NAME)
}

fn quarantine_path(segment: &DamagedSegment<'_>, offset: u64) -> PathBuf {
    let stem = segment
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    quarantine_dir(segment.dir).join(format!(
        "{stem}-{:016x}-{offset:012}.bin",
        segment.generation
    ))
}

enum Kept {
    New,
    Already,
}

fn keep(
    spool_dir: &Path,
    path: &Path,
    source: &(impl ReadAt + ?Sized),
    damage: &Damage,
) -> io::Result<Kept> {
    if fs::metadata(path).is_ok_and(|m| m.len() == damage.len) {
        return Ok(Kept::Already);
    }
    let dir = quarantine_dir(spool_dir);
    if !dir.is_dir() {
        fs::create_dir_all(&dir)?;
        sync_dir(spool_dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    let mut chunk = Vec::new();
    let mut copied = 0;
    while copied < damage.len {
        let len = (damage.len - copied).min(COPY_CHUNK);
        chunk.resize(len as usize, 0);
        source.read_exact_at(&mut chunk, damage.offset + copied)?;
        file.write_all(&chunk)?;
        copied += len;
    }
    file.sync_data()?;
    fs::rename(&tmp, path)?;
    sync_dir(&dir)?;
    Ok(Kept::New)
}
