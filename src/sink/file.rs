//! The embedded default sink: appends each body, exactly as received, plus a newline to a local
//! file (compact bodies, as Dataloy sends them, make it JSON Lines; a body that spans lines is
//! kept as it is, so the file is a stream of JSON values). Useful without any broker, and as the
//! reference sink in tests. The file is rotated by size (`rotate_bytes`, `keep_rotated`), so a
//! development setup left running does not fill its disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::de::IgnoredAny;

use super::{PublishError, Sink, SinkError};
use crate::config::FileSinkSettings;
use crate::notification::Notification;

pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    fsync: bool,
    /// 0: never rotate.
    rotate_bytes: u64,
    keep_rotated: usize,
    file: Mutex<Option<File>>,
    up: AtomicBool,
}

impl FileSink {
    /// Creates the sink and checks that the file can be opened; a failure is reported (the sink
    /// is down) but does not stop the gateway, which keeps spooling. The check of the file's end
    /// for a torn write reads the whole file, so it runs in the background: the gateway answers
    /// (and liveness probes pass) meanwhile, and the first batch waits for it.
    pub async fn new(settings: &FileSinkSettings) -> Self {
        let inner = Arc::new(Inner {
            path: settings.path.clone(),
            fsync: settings.fsync,
            rotate_bytes: settings.rotate_bytes.bytes(),
            keep_rotated: settings.keep_rotated,
            file: Mutex::new(None),
            up: AtomicBool::new(false),
        });
        let path = settings.path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            create_parent(&path).and_then(|()| open_append(&path))
        })
        .await
        .expect("file sink probe panicked");
        match opened {
            Ok(_) => inner.up.store(true, Ordering::Relaxed),
            Err(e) => warn_unavailable(&settings.path, &e),
        }
        let check = inner.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = check.ensure_open() {
                check.up.store(false, Ordering::Relaxed);
                warn_unavailable(&check.path, &e);
            }
        });
        Self { inner }
    }
}

fn warn_unavailable(path: &Path, error: &std::io::Error) {
    tracing::warn!(
        sink = "file",
        path = %path.display(),
        error = %error,
        "file sink cannot open its file yet; notifications stay in the spool"
    );
}

fn create_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

impl Inner {
    fn ensure_open(&self) -> std::io::Result<parking_lot::MutexGuard<'_, Option<File>>> {
        let mut file = self.file.lock();
        if file.is_none() {
            create_parent(&self.path)?;
            let opened = open_append(&self.path)?;
            cut_torn_tail(&opened)?;
            *file = Some(opened);
        }
        Ok(file)
    }

    fn append(&self, lines: &[u8]) -> Result<(), SinkError> {
        let mut guard = self.ensure_open()?;
        let mut length_before = guard
            .as_ref()
            .expect("opened by ensure_open")
            .metadata()?
            .len();
        if self.rotate_bytes > 0
            && length_before > 0
            && length_before + lines.len() as u64 > self.rotate_bytes
        {
            *guard = None;
            rotate(&self.path, self.keep_rotated, self.fsync)?;
            *guard = Some(open_append(&self.path)?);
            length_before = 0;
        }
        let file = guard.as_mut().expect("opened above");
        let written =
            file.write_all(lines)
                .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut off a partial batch so the retry does not leave half a line behind.
            let _ = file.set_len(length_before);
            *guard = None;
            return Err(e.into());
        }
        Ok(())
    }
}

/// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`… and `PATH.{keep}` is deleted. Every
/// body in `PATH` was confirmed (written, and fsynced with `fsync`) before; a crash between the
/// renames at worst deletes one rotated file early, never the current one.
fn rotate(path: &Path, keep: usize, fsync: bool) -> std::io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    let tolerate_missing = |result: std::io::Result<()>| match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    tolerate_missing(fs::remove_file(numbered(keep)))?;
    for n in (1..keep).rev() {
        tolerate_missing(fs::rename(numbered(n), numbered(n + 1)))?;
    }
    fs::rename(path, numbered(1))?;
    tracing::info!(sink = "file", path = %path.display(), keep, "rotated the file sink's file");
    if fsync {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

/// A crash in the middle of a write can leave a partial last body; that batch was never
/// confirmed, so the relay writes it again. Cut it off first, so the file stays a sequence of
/// complete bodies. Bodies may span lines (they are relayed as received), so the last newline
/// says nothing: the file is read as a stream of JSON values, and what follows the newline after
/// the last complete one is cut. A crash damages only the end of the file: when a complete body
/// follows the damage, or the file does not start with a JSON value, the file is not what this
/// sink left behind; it is left alone and the sink stays down.
fn cut_torn_tail(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let keep = complete_records_len(file)?;
    if keep == len {
        return Ok(());
    }
    tracing::warn!(
        sink = "file",
        cut_bytes = len - keep,
        "cutting a partial last body left by a crash"
    );
    file.set_len(keep)?;
    file.sync_data()
}

/// Length of the longest prefix made of complete bodies, each followed by its newline. The file
/// is read once; only the ends of the last two bodies are looked at again.
fn complete_records_len(file: &File) -> std::io::Result<u64> {
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut values = serde_json::Deserializer::from_reader(reader).into_iter::<IgnoredAny>();
    // Where the last two complete bodies end: the last may lack its newline (torn right there).
    let (mut previous_end, mut last_end) = (None, None);
    let failure = loop {
        match values.next() {
            None => break None,
            Some(Ok(_)) => {
                previous_end = last_end;
                last_end = Some(values.byte_offset() as u64);
            }
            Some(Err(e)) if e.is_io() => return Err(e.into()),
            Some(Err(e)) => break Some(e),
        }
    };
    let mut keep = 0;
    for end in [previous_end, last_end].into_iter().flatten() {
        if let Some(record_end) = end_of_record(file, end)? {
            keep = record_end;
        }
    }
    match failure {
        Some(e) if last_end.is_none() && !e.is_eof() => Err(not_this_sinks_output(format!(
            "it holds something other than notification bodies ({e})"
        ))),
        Some(e) if complete_body_follows(file, last_end.unwrap_or(0))? => {
            Err(not_this_sinks_output(format!(
                "it is damaged after byte {keep} ({e}) and complete bodies follow"
            )))
        }
        // Clean, or torn (or zero-filled) after the last complete body.
        _ => Ok(keep),
    }
}

fn not_this_sinks_output(why: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the file sink's file is not what a crash leaves behind: {why}; move it aside"),
    )
}

/// Whether a complete JSON object starts at the beginning of a line after `from`, the end of the
/// last complete body (only the first few candidates are tried: a torn tail is at most one
/// batch).
fn complete_body_follows(file: &File, from: u64) -> std::io::Result<bool> {
    use std::io::{BufRead, Seek, SeekFrom};
    const CANDIDATES: usize = 64;
    let mut lines = std::io::BufReader::new(file);
    lines.seek(SeekFrom::Start(from))?;
    let mut line_start = from;
    let mut line = Vec::new();
    let mut tried = 0;
    while tried < CANDIDATES {
        line.clear();
        let read = lines.read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(false);
        }
        if line.first() == Some(&b'{') {
            tried += 1;
            let mut rest = std::io::BufReader::new(file);
            rest.seek(SeekFrom::Start(line_start))?;
            let mut values = serde_json::Deserializer::from_reader(rest).into_iter::<IgnoredAny>();
            if matches!(values.next(), Some(Ok(_))) {
                return Ok(true);
            }
        }
        line_start += read as u64;
    }
    Ok(false)
}

/// Where the record whose body ends at `value_end` ends: just after the last newline of the
/// whitespace that follows the body; `None` when no newline follows (the write stopped there).
fn end_of_record(file: &File, value_end: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 256];
    let mut at = value_end;
    let mut end = None;
    loop {
        let read = file.read_at(&mut buf, at)?;
        for (i, byte) in buf[..read].iter().enumerate() {
            match byte {
                b'\n' => end = Some(at + i as u64 + 1),
                b' ' | b'\t' | b'\r' => {}
                _ => return Ok(end),
            }
        }
        if read < buf.len() {
            return Ok(end);
        }
        at += read as u64;
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn publish(&self, batch: &[Notification]) -> Result<(), PublishError> {
        let size = batch.iter().map(|n| n.body.len() + 1).sum();
        let mut lines = Vec::with_capacity(size);
        for notification in batch {
            lines.extend_from_slice(&notification.body);
            lines.push(b'\n');
        }
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || inner.append(&lines))
            .await
            .unwrap_or_else(|e| Err(SinkError::Unavailable(e.to_string())));
        self.inner.up.store(result.is_ok(), Ordering::Relaxed);
        result.map_err(PublishError::none_confirmed)
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }
}
