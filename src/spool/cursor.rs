//! An acknowledged-position cursor: the highest sequence number a sink has confirmed (one file
//! per sink, see `progress`).
//!
//! It is stored after every relayed batch, so it must be cheap and crash-safe. The file holds two
//! checksummed slots, a page apart, written in turn and overwritten in place: no new file, no
//! rename, no directory fsync, so no metadata write (or journal commit, on a journaling file
//! system) on this path to delay the spool writer's fsyncs. A torn write can only damage the slot
//! being written; the other still holds an earlier value, and loading takes the highest valid
//! slot.
//!
//! Every store reaches the page cache at once, so a killed process loses none of it. It is
//! fsynced at most every [`SYNC_INTERVAL`], and always before the caller deletes or reuses a
//! segment: a machine crash can then only roll the cursor back by that interval of relayed
//! batches (published again, never lost), while the fsyncs on the relay's path drop from one per
//! batch (at full load 14 % to 70 % as many as the spool writer's, by sink) to at most ten a
//! second, plus one per retired segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::segment::sync_dir;

/// Slots are a page apart, so writing one never rewrites the sector of the other.
const SLOT_STRIDE: u64 = 4096;
const FILE_LEN: u64 = 2 * SLOT_STRIDE;
/// A slot: the sequence number (u64) and the CRC-32 of its bytes (u32), little-endian.
const SLOT_LEN: usize = 12;
/// Longest time a stored position may stay in the page cache only.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

pub struct Cursor {
    file: File,
    next_slot: u64,
    /// When a store was last made durable; `None` while every store is durable.
    synced_at: Option<Instant>,
    unsynced: bool,
}

impl Cursor {
    /// Opens the cursor file at `path` and returns it with the stored position, or `None` when
    /// there is no such file. A damaged file is an error, not a 0: silently starting over would
    /// republish everything still in the spool. A cursor written by an earlier version (the
    /// number as text) is converted.
    pub fn open(path: &Path) -> io::Result<Option<(Cursor, u64)>> {
        let Some(stored) = read_stored(path)? else {
            return Ok(None);
        };
        // The next store goes to the slot not holding the stored position, so that a torn write
        // can only lose what it was writing.
        let (acked, next_slot) = match stored {
            Stored::Slots { acked, slot } => (acked, 1 - slot),
            Stored::Text(acked) => {
                write_new(path, acked)?;
                sync_dir(path.parent().unwrap_or(Path::new(".")))?;
                (acked, 0)
            }
        };
        Ok(Some((Cursor::at(path, next_slot)?, acked)))
    }

    /// Creates a cursor file at `path` holding `acked`, atomically (write, fsync, rename). The
    /// caller fsyncs the directory.
    pub fn create(path: &Path, acked: u64) -> io::Result<Cursor> {
        write_new(path, acked)?;
        Cursor::at(path, 0)
    }

    fn at(path: &Path, next_slot: u64) -> io::Result<Cursor> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Cursor {
            file,
            next_slot,
            synced_at: None,
            unsynced: false,
        })
    }

    /// Stores `acked_seq` in the slot not written last; durably when `durable` is set or the
    /// last fsync is [`SYNC_INTERVAL`] old.
    pub fn store(&mut self, acked_seq: u64, durable: bool) -> io::Result<()> {
        self.file
            .write_all_at(&slot(acked_seq), self.next_slot * SLOT_STRIDE)?;
        self.next_slot = 1 - self.next_slot;
        self.unsynced = true;
        let due = self
            .synced_at
            .is_none_or(|at| at.elapsed() >= SYNC_INTERVAL);
        if durable || due {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every stored position durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.synced_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether a stored position is not durable yet.
    #[cfg(test)]
    fn has_unsynced(&self) -> bool {
        self.unsynced
    }
}

/// The position stored at `path`, read only; `None` when there is no such file.
pub fn read(path: &Path) -> io::Result<Option<u64>> {
    Ok(read_stored(path)?.map(|stored| match stored {
        Stored::Slots { acked, .. } | Stored::Text(acked) => acked,
    }))
}

fn read_stored(path: &Path) -> io::Result<Option<Stored>> {
    match fs::read(path) {
        Ok(bytes) if bytes.len() as u64 == FILE_LEN => read_slots(&bytes).map(Some),
        Ok(bytes) => read_text(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

enum Stored {
    /// The highest valid position and the slot (0 or 1) holding it.
    Slots {
        acked: u64,
        slot: u64,
    },
    Text(u64),
}

fn slot(seq: u64) -> [u8; SLOT_LEN] {
    let mut bytes = [0u8; SLOT_LEN];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..8]);
    bytes[8..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn read_slots(bytes: &[u8]) -> io::Result<Stored> {
    let valid = [0u64, 1].into_iter().filter_map(|slot| {
        let at = (slot * SLOT_STRIDE) as usize;
        let bytes = &bytes[at..at + SLOT_LEN];
        let seq = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes"));
        (crc32fast::hash(&bytes[..8]) == crc).then_some((seq, slot))
    });
    let newest = valid.max_by_key(|&(seq, _)| seq);
    newest
        .map(|(acked, slot)| Stored::Slots { acked, slot })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "spool cursor file is damaged: neither of its slots holds a valid position",
            )
        })
}

fn read_text(bytes: &[u8]) -> io::Result<Stored> {
    let text = String::from_utf8_lossy(bytes);
    text.trim().parse().map(Stored::Text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spool cursor file holds `{}`, not a position", text.trim()),
        )
    })
}

/// Writes a new cursor file holding `acked` in both slots, atomically (write, fsync, rename).
fn write_new(path: &Path, acked: u64) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut bytes = vec![0u8; FILE_LEN as usize];
    for at in [0, SLOT_STRIDE as usize] {
        bytes[at..at + SLOT_LEN].copy_from_slice(&slot(acked));
    }
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_NAME: &str = "cursor";

    /// Opens the cursor in `dir`, created at 0 when there is none.
    fn open_in(dir: &Path) -> (Cursor, u64) {
        let path = dir.join(FILE_NAME);
        match Cursor::open(&path).unwrap() {
            Some(opened) => opened,
            None => (Cursor::create(&path, 0).unwrap(), 0),
        }
    }

    #[test]
    fn the_last_stored_position_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cursor, acked) = open_in(dir.path());
        assert_eq!(acked, 0);
        for seq in [5, 9, 12] {
            cursor.store(seq, false).unwrap();
        }
        drop(cursor);
        assert_eq!(open_in(dir.path()).1, 12);
    }

    #[test]
    fn stores_are_fsynced_at_most_every_interval_unless_asked_to_be() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cursor, _) = open_in(dir.path());
        cursor.store(1, false).unwrap();
        assert!(!cursor.has_unsynced(), "the first store is durable at once");
        cursor.store(2, false).unwrap();
        assert!(cursor.has_unsynced(), "the next one waits for the interval");
        cursor.store(3, true).unwrap();
        assert!(!cursor.has_unsynced(), "unless the caller needs it durable");
        cursor.store(4, false).unwrap();
        std::thread::sleep(SYNC_INTERVAL);
        cursor.store(5, false).unwrap();
        assert!(
            !cursor.has_unsynced(),
            "a store after the interval is durable"
        );
        cursor.store(6, false).unwrap();
        cursor.sync().unwrap();
        assert!(!cursor.has_unsynced());
        drop(cursor);
        assert_eq!(open_in(dir.path()).1, 6);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_previous_position() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cursor, _) = open_in(dir.path());
        cursor.store(7, false).unwrap(); // slot 0
        cursor.store(8, false).unwrap(); // slot 1
        drop(cursor);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 3] ^= 0xff; // slot 1 torn while it was being written
        fs::write(&path, &bytes).unwrap();

        assert_eq!(open_in(dir.path()).1, 7);
    }

    #[test]
    fn after_a_reopen_the_newest_position_is_not_the_one_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cursor, _) = open_in(dir.path());
        cursor.store(7, false).unwrap(); // slot 0
        cursor.store(8, false).unwrap(); // slot 1
        cursor.store(9, false).unwrap(); // slot 0: the newest
        drop(cursor);
        let (mut reopened, acked) = open_in(dir.path());
        assert_eq!(acked, 9);
        reopened.store(10, false).unwrap();
        drop(reopened);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 3] ^= 0xff; // that store was torn
        fs::write(&path, &bytes).unwrap();

        assert_eq!(open_in(dir.path()).1, 9);
    }

    #[test]
    fn damage_to_both_slots_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_in(dir.path()));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        bytes[SLOT_STRIDE as usize] ^= 0xff;
        fs::write(&path, &bytes).unwrap();

        let error = Cursor::open(&dir.path().join(FILE_NAME))
            .err()
            .expect("damaged cursor refused");
        assert!(error.to_string().contains("damaged"), "{error}");
    }

    #[test]
    fn a_cursor_of_the_earlier_text_format_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "41\n").unwrap();

        let (mut cursor, acked) = open_in(dir.path());
        assert_eq!(acked, 41);
        cursor.store(42, false).unwrap();
        drop(cursor);
        assert_eq!(open_in(dir.path()).1, 42);
    }
}
