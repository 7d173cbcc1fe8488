//! The spool reader keeps its file I/O off the async runtime: a read that blocks (here, a
//! segment path that became a FIFO nobody writes to) leaves the runtime free to run other tasks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{Spool, SpoolOptions};

use crate::helpers::sample_with_id;

fn segment_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocked_read_does_not_block_the_runtime() {
    // Arrange: one durable record; then its segment path becomes a FIFO, so opening it blocks
    // until a writer opens the other end.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        Metrics::new(),
    )
    .unwrap();
    let body = Bytes::from(sample_with_id("blocked-1"));
    let notification = Notification::new(Envelope::parse(&body).unwrap(), body);
    spool.append(notification).await.unwrap();
    let segment = segment_file(dir.path());
    std::fs::rename(&segment, dir.path().join("moved-away")).unwrap();
    let made = Command::new("mkfifo").arg(&segment).status().unwrap();
    assert!(made.success());
    // Unblocks the read when told to, or after a while (so that a failing run ends).
    let (release, released) = std::sync::mpsc::channel::<()>();
    let fifo = segment.clone();
    let unblocker = std::thread::spawn(move || {
        let _ = released.recv_timeout(Duration::from_secs(5));
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    });
    let mut reader = spool.reader();

    // Act: poll the read first, then let the runtime run something else.
    let blocked_the_runtime = tokio::select! {
        biased;
        result = reader.next_batch(10) => Some(result.map(|batch| batch.len())),
        _ = tokio::task::yield_now() => None,
    };

    // Assert
    let _ = release.send(());
    unblocker.join().unwrap();
    assert!(
        blocked_the_runtime.is_none(),
        "the read ran on the runtime's thread and returned {blocked_the_runtime:?} first"
    );
}
