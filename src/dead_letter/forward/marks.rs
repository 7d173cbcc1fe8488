//! What the forwarder remembers, durably, per destination: which entries were forwarded (the
//! broker confirmed them) and which the destination refused for good. One small file per
//! entry, `<store>/forwarded/<destination>/<entry>.forwarded|.refused`, written to a temporary
//! name, fsynced and renamed, the directory fsynced: a mark is whole or absent after a crash
//! (kill -9 included), so a restart forwards again at most the entry that was in flight.
//!
//! A mark per entry rather than a high-water mark: entries are renamed into place after their
//! fsync, so one with a lower name can appear after a higher one was forwarded (two writers in
//! the same millisecond, a clock stepped back); a mark per entry never skips it. Marks of
//! entries removed by `dead-letters replay`/`purge` are removed at the next scan.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory inside the store that holds the marks (no `.dl` suffix: never an entry).
pub const MARKS_DIR: &str = "forwarded";
const FORWARDED: &str = ".forwarded";
const REFUSED: &str = ".refused";
const TEMP: &str = ".tmp";

/// What became of an entry at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// The broker confirmed it.
    Forwarded,
    /// The destination refused it for good; it stays in the local store only.
    Refused,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Forwarded => "forwarded",
            Mark::Refused => "refused",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Mark::Forwarded => FORWARDED,
            Mark::Refused => REFUSED,
        }
    }
}

pub struct Marks {
    dir: PathBuf,
}

impl Marks {
    /// The marks of `destination` in the store at `store_dir` (created when missing; a
    /// temporary file of an interrupted mark is removed).
    pub fn open(store_dir: &Path, destination: &str) -> io::Result<Self> {
        let dir = store_dir.join(MARKS_DIR).join(destination);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(TEMP) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    /// The marks of `destination` for reading only (an operator's command beside a running
    /// gateway): nothing is created or cleaned up; no directory means no marks.
    pub fn inspect(store_dir: &Path, destination: &str) -> Self {
        Self {
            dir: store_dir.join(MARKS_DIR).join(destination),
        }
    }

    /// Every mark, by entry name (none when the directory does not exist).
    pub fn load(&self) -> io::Result<HashMap<String, Mark>> {
        let mut marks = HashMap::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(marks),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let file = entry?.file_name();
            let file = file.to_string_lossy();
            if let Some(name) = file.strip_suffix(FORWARDED) {
                marks.insert(name.to_owned(), Mark::Forwarded);
            } else if let Some(name) = file.strip_suffix(REFUSED) {
                marks.insert(name.to_owned(), Mark::Refused);
            }
        }
        Ok(marks)
    }

    /// Records `mark` for the entry `name`, durably; `detail` (why it was refused) is kept in
    /// the file for the operator.
    pub fn set(&self, name: &str, mark: Mark, detail: &str) -> io::Result<()> {
        let path = self.dir.join(format!("{name}{}", mark.suffix()));
        let temp = self.dir.join(format!("{name}{}{TEMP}", mark.suffix()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        let written = file
            .write_all(detail.as_bytes())
            .and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| fs::rename(&temp, &path)) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Removes the marks of an entry that is no longer in the store.
    pub fn forget(&self, name: &str) {
        for suffix in [FORWARDED, REFUSED] {
            let _ = fs::remove_file(self.dir.join(format!("{name}{suffix}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_forgotten_ones_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let marks = Marks::open(dir.path(), "kafka").unwrap();
        marks.set("a", Mark::Forwarded, "").unwrap();
        marks.set("b", Mark::Refused, "too large").unwrap();
        fs::write(dir.path().join("forwarded/kafka/c.forwarded.tmp"), b"torn").unwrap();

        let reopened = Marks::open(dir.path(), "kafka").unwrap();
        let loaded = reopened.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["a"], Mark::Forwarded);
        assert_eq!(loaded["b"], Mark::Refused);
        assert!(Marks::open(dir.path(), "rabbitmq")
            .unwrap()
            .load()
            .unwrap()
            .is_empty());

        reopened.forget("a");
        assert_eq!(reopened.load().unwrap().len(), 1);
    }
}
