//! Per-sink progress. Each sink has its own cursor file, `cursor.<sink>` (the crash-safe
//! two-slot format of `cursor`), its own reader and its own acknowledgements, so a sink that is
//! down or slow never holds another back. A segment is retired only once every sink's cursor
//! has passed it, so `spool.max_bytes` bounds the backlog of the slowest sink. The file `sinks`
//! lists the sinks the spool keeps a cursor for, so that a lost cursor can be told from a sink
//! that was just added.
//!
//! Where a configured sink resumes when the spool opens:
//! 1. after the position in its own cursor file;
//! 2. else after the position in the single `cursor` file of earlier versions (every sink had
//!    confirmed up to it): it is copied to every sink's file, once, and then removed;
//! 3. else, when `sinks` lists the sink (it had a cursor and lost it), or when no cursor exists
//!    at all while the spool holds records (they were deleted): `spool.missing_cursor` decides
//!    between refusing to start and starting after the newest record;
//! 4. else the sink is new: it starts after the lowest position of the other sinks' cursors,
//!    the position every existing sink has relayed. It gets every record an existing sink still
//!    waits for, never skips one, and never starts further back than what the spool retains.
//!
//! A sink removed from the configuration stops holding segments back; its cursor file stays, so
//! if it comes back it resumes there (and gets what the spool still holds after it).
//! Downgrading to a version with one cursor: copy the slowest sink's `cursor.<sink>` to `cursor`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;

use super::cursor::{self, Cursor};
use super::segment::sync_dir;
use super::{MissingCursor, SpoolError};

/// The cursor file of versions that had one cursor for all sinks.
const LEGACY_CURSOR: &str = "cursor";
pub const CURSOR_PREFIX: &str = "cursor.";
const MANIFEST: &str = "sinks";
/// Longest sink name; names become file names.
const MAX_NAME_LEN: usize = 64;

/// One sink's position in the spool while it is open.
pub struct SinkProgress {
    pub name: String,
    pub cursor: Mutex<Cursor>,
    /// Highest sequence number the sink confirmed (and the cursor holds).
    pub acked: AtomicU64,
    /// Receive time of the oldest record the sink has read but not acknowledged.
    pub oldest_pending_ms: AtomicU64,
}

pub fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join(format!("{CURSOR_PREFIX}{sink}"))
}

/// Sink names become file names: ASCII letters, digits, `_` and `-`, each name once.
pub fn check_names(sinks: &[&str]) -> Result<(), SpoolError> {
    if sinks.is_empty() {
        return Err(SpoolError::InvalidSinks(
            "no sink to keep a cursor for".into(),
        ));
    }
    for (index, name) in sinks.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(SpoolError::InvalidSinks(format!(
                "sink name `{name}` is not 1 to {MAX_NAME_LEN} ASCII letters, digits, `_` or `-`"
            )));
        }
        if sinks[..index].contains(name) {
            return Err(SpoolError::InvalidSinks(format!(
                "sink `{name}` named twice"
            )));
        }
    }
    Ok(())
}

/// Every cursor position stored in the spool directory, read before recovery.
pub struct Stored {
    dir: PathBuf,
    /// The configured sinks, in order, with their own cursor when they have one.
    configured: Vec<(String, Option<(Cursor, u64)>)>,
    legacy: Option<u64>,
    /// Cursors of sinks that are not configured.
    others: Vec<u64>,
    manifest: Option<Vec<String>>,
}

impl Stored {
    pub fn read(dir: &Path, sinks: &[&str]) -> Result<Stored, SpoolError> {
        check_names(sinks)?;
        let mut configured = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let path = cursor_path(dir, sink);
            configured.push((
                sink.to_string(),
                Cursor::open(&path).map_err(naming(&path))?,
            ));
        }
        let legacy_path = dir.join(LEGACY_CURSOR);
        let legacy = cursor::read(&legacy_path).map_err(naming(&legacy_path))?;
        let mut others = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(CURSOR_PREFIX))
            else {
                continue;
            };
            if sinks.contains(&name) || check_names(&[name]).is_err() {
                continue; // a configured sink's, or not a cursor (e.g. `cursor.tmp`)
            }
            match cursor::read(&path) {
                Ok(Some(position)) => others.push(position),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    cursor = %path.display(),
                    error = %e,
                    "cursor of a sink that is not configured is unreadable; ignored"
                ),
            }
        }
        Ok(Stored {
            dir: dir.to_owned(),
            configured,
            legacy,
            others,
            manifest: read_manifest(dir)?,
        })
    }

    /// A position every sink will resume at or after, whatever `settle` decides: segments
    /// entirely at or below it need no scan.
    pub fn relayed_by_all(&self) -> u64 {
        let own = self
            .configured
            .iter()
            .filter_map(|(_, c)| c.as_ref())
            .map(|(_, p)| *p);
        own.chain(self.legacy)
            .chain(self.others.iter().copied())
            .min()
            .unwrap_or(0)
    }

    /// Decides where each configured sink resumes (see the module header); writes nothing.
    /// `last_seq` is the newest record in the spool, `holds_records` whether it holds any.
    pub fn settle(
        self,
        missing_cursor: MissingCursor,
        last_seq: u64,
        holds_records: bool,
    ) -> Result<Settled, SpoolError> {
        let known: Vec<u64> = self
            .configured
            .iter()
            .filter_map(|(_, own)| own.as_ref().map(|(_, p)| *p).or(self.legacy))
            .collect();
        let nobody_has_a_cursor = known.is_empty() && self.others.is_empty();
        // After the newest record, and never behind a position a cursor already passed.
        let newest = known
            .iter()
            .chain(&self.others)
            .copied()
            .fold(last_seq, u64::max);
        let new_sink_start = known
            .iter()
            .min()
            .or(self.others.iter().min())
            .copied()
            .unwrap_or(newest);
        let mut sinks = Vec::with_capacity(self.configured.len());
        for (name, own) in self.configured {
            let listed = self.manifest.as_ref().is_some_and(|m| m.contains(&name));
            let start = match (own, self.legacy) {
                (Some((cursor, position)), _) => Start::Own(cursor, position),
                (None, Some(position)) => Start::Migrated(position),
                (None, None) if (listed || nobody_has_a_cursor) && holds_records => {
                    match missing_cursor {
                        MissingCursor::Refuse => {
                            return Err(SpoolError::MissingCursor {
                                dir: self.dir.clone(),
                                cursor: cursor_path(&self.dir, &name),
                                last_seq,
                            })
                        }
                        MissingCursor::StartFromEnd => Start::FromEnd(newest),
                    }
                }
                // Lost, but the spool holds nothing it could skip or relay again.
                (None, None) if listed || nobody_has_a_cursor => Start::New(newest),
                (None, None) => Start::New(new_sink_start),
            };
            sinks.push((name, start));
        }
        let names: Vec<String> = sinks.iter().map(|(name, _)| name.clone()).collect();
        let dropped: Vec<String> = self
            .manifest
            .iter()
            .flatten()
            .filter(|listed| !names.contains(listed))
            .cloned()
            .collect();
        Ok(Settled {
            dir: self.dir,
            manifest_changed: self.manifest.as_ref() != Some(&names),
            remove_legacy: self.legacy.is_some(),
            sinks,
            dropped,
        })
    }
}

enum Start {
    Own(Cursor, u64),
    Migrated(u64),
    FromEnd(u64),
    New(u64),
}

impl Start {
    fn position(&self) -> u64 {
        match self {
            Start::Own(_, p) | Start::Migrated(p) | Start::FromEnd(p) | Start::New(p) => *p,
        }
    }
}

/// Where every configured sink resumes, decided but not yet written.
pub struct Settled {
    dir: PathBuf,
    sinks: Vec<(String, Start)>,
    manifest_changed: bool,
    remove_legacy: bool,
    /// Sinks the manifest listed that are no longer configured.
    dropped: Vec<String>,
}

impl Settled {
    /// The lowest position: every record at or below it was relayed by every sink.
    pub fn relayed_by_all(&self) -> u64 {
        self.sinks
            .iter()
            .map(|(_, start)| start.position())
            .min()
            .unwrap_or(0)
    }

    /// Creates the cursor files that are missing and the manifest, then removes the cursor of
    /// earlier versions: in that order, each step durable before the next.
    pub fn persist(self) -> io::Result<Vec<SinkProgress>> {
        let dir = self.dir;
        let mut progress = Vec::with_capacity(self.sinks.len());
        let mut created = false;
        for (name, start) in self.sinks {
            let position = start.position();
            let cursor = match start {
                Start::Own(cursor, _) => cursor,
                other => {
                    log_start(&name, &other);
                    created = true;
                    Cursor::create(&cursor_path(&dir, &name), position)?
                }
            };
            progress.push(SinkProgress {
                name,
                cursor: Mutex::new(cursor),
                acked: AtomicU64::new(position),
                oldest_pending_ms: AtomicU64::new(0),
            });
        }
        if self.manifest_changed {
            let names: Vec<&str> = progress.iter().map(|p| p.name.as_str()).collect();
            write_manifest(&dir, &names)?;
        }
        if created || self.manifest_changed {
            sync_dir(&dir)?;
        }
        for sink in &self.dropped {
            tracing::info!(
                sink,
                cursor = %cursor_path(&dir, sink).display(),
                "sink no longer configured: its cursor no longer holds spool segments back"
            );
        }
        if self.remove_legacy {
            fs::remove_file(dir.join(LEGACY_CURSOR))?;
            sync_dir(&dir)?;
        }
        Ok(progress)
    }
}

/// Puts the file's path in front of an error about it.
fn naming(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn log_start(sink: &str, start: &Start) {
    match start {
        Start::Own(..) => {}
        Start::Migrated(position) => tracing::info!(
            sink,
            position,
            "spool cursor of an earlier version copied to this sink's own cursor"
        ),
        Start::FromEnd(position) => tracing::warn!(
            sink,
            position,
            "spool cursor of this sink missing; starting after the newest record \
             (spool.missing_cursor = \"start_from_end\"): what the spool holds is not relayed \
             to it"
        ),
        Start::New(position) => tracing::info!(
            sink,
            position,
            "sink without a cursor yet: it starts after what every other sink has relayed"
        ),
    }
}

fn read_manifest(dir: &Path) -> io::Result<Option<Vec<String>>> {
    match fs::read_to_string(dir.join(MANIFEST)) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the manifest atomically (write, fsync, rename); the caller fsyncs the directory.
fn write_manifest(dir: &Path, sinks: &[&str]) -> io::Result<()> {
    let mut text = String::from(
        "# Sinks this spool keeps a cursor for (cursor.<sink>), written by dataloy-gateway.\n\
         # A listed sink without its cursor file is refused at start (spool.missing_cursor).\n",
    );
    for sink in sinks {
        text.push_str(sink);
        text.push('\n');
    }
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(MANIFEST))
}
