//! The acknowledged-position cursor: the highest sequence number every sink has confirmed,
//! replaced atomically (write, fsync, rename, fsync the directory) so a crash leaves either the
//! old or the new value, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::segment::sync_dir;

const FILE_NAME: &str = "cursor";

pub struct Cursor {
    dir: PathBuf,
}

impl Cursor {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The stored position; 0 when none was stored yet. A damaged file is an error, not a 0:
    /// silently starting over would republish everything still in the spool.
    pub fn load(&self) -> io::Result<u64> {
        match fs::read_to_string(self.dir.join(FILE_NAME)) {
            Ok(text) => text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("spool cursor file holds `{}`, not a number", text.trim()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self, acked_seq: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = File::create(&tmp)?;
        writeln!(file, "{acked_seq}")?;
        file.sync_data()?;
        fs::rename(&tmp, self.dir.join(FILE_NAME))?;
        sync_dir(&self.dir)
    }
}
