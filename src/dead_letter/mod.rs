//! Dead letters: notifications a sink refused for good (unroutable, too large, a value the
//! protocol cannot carry, a topic that stays missing). The relay stores each one here, durably,
//! before it moves past it, so one bad notification never stops the stream and nothing is lost:
//! an operator lists, inspects, replays or purges them (`dataloy-gateway dead-letters …`),
//! whether the gateway runs or not.
//!
//! One file per entry, written to a temporary name, fsynced, renamed into place and the
//! directory fsynced: an entry is either whole or absent after a crash, the gateway and an
//! operator's command never share an open file, and purge or replay is a rename or an unlink.
//! An entry is a line of JSON metadata (with a CRC-32 of the body), a newline, then the body
//! byte for byte. The store is bounded by `dead_letters.max_bytes`; when it is full the relay
//! keeps retrying the notification instead (nothing is dropped) and says so in logs and metrics.
//! [`forward`] also publishes each entry to the operators' brokers, when configured.

mod entry;
pub mod forward;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use entry::{DeadLetter, DeadLetterMeta};

use crate::notification::{unix_millis, Notification};

const SUFFIX: &str = ".dl";
const TEMP_SUFFIX: &str = ".dl.tmp";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter store I/O failed in {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("dead-letter store {dir} is full ({used} of {max} bytes); raise dead_letters.max_bytes or purge")]
    Full { dir: PathBuf, used: u64, max: u64 },
    #[error("dead letter `{0}` not found")]
    NotFound(String),
    #[error("dead letter {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("dead letter `{0}` is being replayed or purged by another process")]
    Busy(String),
}

/// Why a sink refused a notification for good; stable, low-cardinality codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// RabbitMQ returned it: no queue is bound for its routing key.
    Unroutable,
    /// Larger than the broker accepts.
    TooLarge,
    /// The rendered topic name is not a valid Kafka topic name.
    InvalidTopic,
    /// The topic was still missing after `sinks.kafka.missing_topic_grace`.
    UnknownTopic,
    /// A value the protocol cannot carry (e.g. an AMQP short string over 255 bytes).
    Unrepresentable,
    /// Publishing it alone made the sink panic.
    SinkPanic,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unroutable => "unroutable",
            Reason::TooLarge => "too_large",
            Reason::InvalidTopic => "invalid_topic",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Unrepresentable => "unrepresentable",
            Reason::SinkPanic => "sink_panic",
        }
    }
}

/// How a notification's delivery went before it was given up, for the entry's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    pub first_ms: u64,
    pub last_ms: u64,
    pub count: u32,
}

/// The durable store of dead letters in one directory.
pub struct DeadLetterStore {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    /// Makes names unique within this process; the time and a random part across processes.
    counter: AtomicU64,
    /// Counts the entries this process stored, so the forwarder wakes up for a new one.
    stored: tokio::sync::watch::Sender<u64>,
}

impl DeadLetterStore {
    /// Opens (or creates) the store for the gateway; temporary files of an interrupted write
    /// are removed (the spool's directory lock makes this process the only writer).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, DeadLetterError> {
        let io = |source| DeadLetterError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Self::inspect(dir, max_bytes)
    }

    /// Opens the store for an operator's command, which may run beside a gateway: nothing is
    /// created or cleaned up (a temporary file may be the gateway's write in progress). A
    /// missing directory is an empty store.
    pub fn inspect(dir: &Path, max_bytes: u64) -> Result<Self, DeadLetterError> {
        let store = Self {
            dir: dir.to_owned(),
            max_bytes,
            used: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            stored: tokio::sync::watch::Sender::new(0),
        };
        store.recount()?;
        Ok(store)
    }

    /// Counts the bytes the entries take again, from the directory: entries replayed or purged
    /// by an operator's command are no longer counted. Returns the new figure.
    pub fn recount(&self) -> Result<u64, DeadLetterError> {
        let io = |source| DeadLetterError::Io {
            dir: self.dir.clone(),
            source,
        };
        let mut used = 0;
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.used.store(0, Ordering::Relaxed);
                return Ok(0);
            }
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                // An entry removed meanwhile no longer counts.
                used += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        self.used.store(used, Ordering::Relaxed);
        Ok(used)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes whenever this process stored an entry (entries other processes add are not seen).
    pub fn watch_stored(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// How many entries this process stored so far (what [`Self::watch_stored`] counts).
    pub fn stored_count(&self) -> u64 {
        *self.stored.borrow()
    }

    /// Entry names, oldest first (by name: stored-at time, then a counter).
    pub fn names_oldest_first(&self) -> Result<Vec<String>, DeadLetterError> {
        let mut names = self.names()?;
        names.sort();
        Ok(names)
    }

    /// Bytes the entries take.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Stores `notification`, refused by `sink`, durably; returns the entry's name.
    pub fn store(
        &self,
        sink: &str,
        notification: &Notification,
        reason: Reason,
        error: &str,
        attempts: Attempts,
    ) -> Result<String, DeadLetterError> {
        let meta = DeadLetterMeta::new(sink, notification, reason, error, attempts);
        let bytes = entry::encode(&meta, &notification.body);
        let mut used = self.used.load(Ordering::Relaxed);
        if used + bytes.len() as u64 > self.max_bytes {
            // An operator may have replayed or purged entries since the last count.
            used = self.recount()?;
        }
        if used + bytes.len() as u64 > self.max_bytes {
            return Err(DeadLetterError::Full {
                dir: self.dir.clone(),
                used,
                max: self.max_bytes,
            });
        }
        let name = format!(
            "{:013}-{:06}-{:08x}-{sink}",
            unix_millis(),
            self.counter.fetch_add(1, Ordering::Relaxed) % 1_000_000,
            fastrand::u32(..)
        );
        self.write_atomically(&name, &bytes)
            .map_err(|source| DeadLetterError::Io {
                dir: self.dir.clone(),
                source,
            })?;
        self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.stored.send_modify(|count| *count += 1);
        Ok(name)
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| fs::rename(&temp, self.path(name))) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// Every entry's metadata, oldest first. Damaged entries are listed as errors, not skipped.
    pub fn list(&self) -> Result<Vec<Result<DeadLetterMeta, DeadLetterError>>, DeadLetterError> {
        let mut names = self.names()?;
        names.sort();
        Ok(names
            .iter()
            .map(|name| self.read(name).map(|e| e.meta))
            .collect())
    }

    /// Entry names (without the suffix), unsorted.
    fn names(&self) -> Result<Vec<String>, DeadLetterError> {
        let io = |source| DeadLetterError::Io {
            dir: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let name = entry.map_err(io)?.file_name();
            if let Some(stem) = name.to_string_lossy().strip_suffix(SUFFIX) {
                names.push(stem.to_owned());
            }
        }
        Ok(names)
    }

    /// One whole entry, body included.
    pub fn read(&self, name: &str) -> Result<DeadLetter, DeadLetterError> {
        if name.contains('/') || name.contains("..") {
            return Err(DeadLetterError::NotFound(name.to_owned()));
        }
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DeadLetterError::NotFound(name.to_owned()))
            }
            Err(source) => {
                return Err(DeadLetterError::Io {
                    dir: self.dir.clone(),
                    source,
                })
            }
        };
        entry::decode(name, &bytes).map_err(|why| DeadLetterError::Damaged { path, why })
    }

    /// Removes an entry (after a replay, or a purge).
    pub fn remove(&self, name: &str) -> Result<(), DeadLetterError> {
        let path = self.path(name);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = self
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                        Some(used.saturating_sub(len))
                    });
                File::open(&self.dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|source| DeadLetterError::Io {
                        dir: self.dir.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(DeadLetterError::NotFound(name.to_owned()))
            }
            Err(source) => Err(DeadLetterError::Io {
                dir: self.dir.clone(),
                source,
            }),
        }
    }

    /// Entry names selected by id (a notification id or an entry name) and sink (both
    /// optional), oldest first.
    pub fn select(
        &self,
        id: Option<&str>,
        sink: Option<&str>,
    ) -> Result<Vec<String>, DeadLetterError> {
        let mut names = self.names()?;
        names.sort();
        names.retain(|name| match self.read(name) {
            Ok(entry) => {
                id.is_none_or(|id| entry.meta.id == id || name == id)
                    && sink.is_none_or(|sink| entry.meta.sink == sink)
            }
            // A damaged entry matches its name, or a selection of everything, so purge can
            // remove it.
            Err(_) => {
                id.is_none_or(|id| name == id)
                    && sink.is_none_or(|sink| name.ends_with(&format!("-{sink}")))
            }
        });
        Ok(names)
    }

    /// When the entry was stored (its file's modification time), in milliseconds since the
    /// Unix epoch.
    pub fn stored_at_ms(&self, name: &str) -> Result<u64, DeadLetterError> {
        let modified = fs::metadata(self.path(name))
            .and_then(|m| m.modified())
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => DeadLetterError::NotFound(name.to_owned()),
                _ => DeadLetterError::Io {
                    dir: self.dir.clone(),
                    source: e,
                },
            })?;
        Ok(modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }

    /// Takes an entry for this process alone while it replays or purges it: an exclusive
    /// `flock` on the entry's file, which another command's claim sees (`Busy`) and the kernel
    /// releases however this process ends. An entry removed by the previous holder between
    /// this process finding it and locking it is `NotFound`, so it is never replayed twice.
    pub fn claim(&self, name: &str) -> Result<Claim<'_>, DeadLetterError> {
        if name.contains('/') || name.contains("..") {
            return Err(DeadLetterError::NotFound(name.to_owned()));
        }
        let path = self.path(name);
        let io = |source| DeadLetterError::Io {
            dir: self.dir.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DeadLetterError::NotFound(name.to_owned()))
            }
            Err(e) => return Err(io(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DeadLetterError::Busy(name.to_owned())),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let locked = file.metadata().map_err(io)?;
        let same_file = fs::metadata(&path)
            .is_ok_and(|now| now.dev() == locked.dev() && now.ino() == locked.ino());
        if !same_file {
            return Err(DeadLetterError::NotFound(name.to_owned()));
        }
        Ok(Claim {
            store: self,
            name: name.to_owned(),
            _file: file,
        })
    }
}

/// An entry claimed by this process (see [`DeadLetterStore::claim`]); dropping it releases it.
pub struct Claim<'a> {
    store: &'a DeadLetterStore,
    name: String,
    _file: File,
}

impl Claim<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole entry.
    pub fn read(&self) -> Result<DeadLetter, DeadLetterError> {
        self.store.read(&self.name)
    }

    /// Removes the entry, durably, while still holding it.
    pub fn remove(self) -> Result<(), DeadLetterError> {
        self.store.remove(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use bytes::Bytes;

    fn notification(id: &str) -> Notification {
        let body = format!(
            r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"C","dataloyObject":1,"subscription":{{}},"resource":{{"pad":"\u00e9 \n"}}}}"#
        );
        let body = Bytes::from(body);
        Notification::new(Envelope::parse(&body).unwrap(), body)
    }

    const ATTEMPTS: Attempts = Attempts {
        first_ms: 1,
        last_ms: 2,
        count: 3,
    };

    #[test]
    fn an_entry_keeps_the_body_byte_for_byte_and_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        let n = notification("a-1");
        let name = store
            .store(
                "rabbitmq",
                &n,
                Reason::Unroutable,
                "no queue bound",
                ATTEMPTS,
            )
            .unwrap();
        let entry = store.read(&name).unwrap();
        assert_eq!(entry.body, n.body);
        assert_eq!(entry.meta.id, "a-1");
        assert_eq!(entry.meta.sink, "rabbitmq");
        assert_eq!(entry.meta.reason, Reason::Unroutable);
        assert_eq!(entry.meta.error, "no queue bound");
        assert_eq!(entry.meta.attempts, 3);
        assert_eq!(store.list().unwrap().len(), 1);

        // Reopened (as after a restart or by a command), the entry and its size are there.
        let reopened = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.used_bytes(), store.used_bytes());
        assert_eq!(
            reopened.select(Some("a-1"), None).unwrap(),
            vec![name.clone()]
        );
        assert!(reopened.select(None, Some("kafka")).unwrap().is_empty());
        reopened.remove(&name).unwrap();
        assert_eq!(reopened.used_bytes(), 0);
        assert!(matches!(
            reopened.read(&name),
            Err(DeadLetterError::NotFound(_))
        ));
    }

    #[test]
    fn a_full_store_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path(), 300).unwrap();
        let n = notification("b");
        let error = store
            .store(
                "kafka",
                &n,
                Reason::TooLarge,
                "x".repeat(400).as_str(),
                ATTEMPTS,
            )
            .unwrap_err();
        assert!(matches!(error, DeadLetterError::Full { .. }), "{error}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_flipped_byte_is_reported_as_damage_and_leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        let name = store
            .store(
                "file",
                &notification("c"),
                Reason::TooLarge,
                "big",
                ATTEMPTS,
            )
            .unwrap();
        let path = dir.path().join(format!("{name}{SUFFIX}"));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        fs::write(&path, bytes).unwrap();
        fs::write(dir.path().join(format!("x{TEMP_SUFFIX}")), b"torn").unwrap();
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            store.read(&name),
            Err(DeadLetterError::Damaged { .. })
        ));
        assert!(!dir.path().join(format!("x{TEMP_SUFFIX}")).exists());
        assert_eq!(store.select(None, None).unwrap(), vec![name]);
    }

    #[test]
    fn a_claimed_entry_is_busy_for_another_command_and_gone_once_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        let name = store
            .store(
                "rabbitmq",
                &notification("d"),
                Reason::Unroutable,
                "x",
                ATTEMPTS,
            )
            .unwrap();
        let other = DeadLetterStore::inspect(dir.path(), 1 << 20).unwrap();

        let claim = store.claim(&name).unwrap();
        assert!(matches!(other.claim(&name), Err(DeadLetterError::Busy(_))));
        assert_eq!(claim.read().unwrap().meta.id, "d");
        claim.remove().unwrap();

        assert!(matches!(
            other.claim(&name),
            Err(DeadLetterError::NotFound(_))
        ));
    }

    #[test]
    fn room_freed_by_another_process_is_seen_before_the_store_counts_as_full() {
        let dir = tempfile::tempdir().unwrap();
        let n = notification("e");
        let store = DeadLetterStore::open(dir.path(), 1 << 20).unwrap();
        let first = store
            .store("kafka", &n, Reason::TooLarge, "big", ATTEMPTS)
            .unwrap();
        let one = store.used_bytes();
        let store = DeadLetterStore::open(dir.path(), one + one / 2).unwrap();
        assert!(matches!(
            store.store("kafka", &n, Reason::TooLarge, "big", ATTEMPTS),
            Err(DeadLetterError::Full { .. })
        ));

        // An operator's purge, in another process.
        DeadLetterStore::inspect(dir.path(), 1 << 20)
            .unwrap()
            .remove(&first)
            .unwrap();

        store
            .store("kafka", &n, Reason::TooLarge, "big", ATTEMPTS)
            .unwrap();
        assert_eq!(store.used_bytes(), one);
    }
}
