//! The id journal is fsynced off the request path (before a segment is retired, when it moves to
//! a new file, when it stops), so a power loss can take entries of ids that were answered 200.
//! These tests play that loss on the files a closed spool left (entries zeroed or cut off, as
//! unwritten pages would be) and check that the records still in the spool give the ids back,
//! including a segment every sink had passed, and that the journal is whole again afterwards.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::dedup::IdKey;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::id_journal::{self, Dropped, Limits};
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{Spool, SpoolOptions};

use crate::helpers::sample_with_id;

/// Bytes of a journal file header and of one entry (see `id_journal::entry`).
const HEADER_LEN: u64 = 16;
const ENTRY_LEN: u64 = 36;

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

/// Opens the spool with the journal; returns it and the keys the journal handed back.
fn open(dir: &Path, metrics: &Metrics) -> (Spool, Vec<IdKey>) {
    open_with_segments_of(1 << 20, dir, metrics)
}

fn open_with_segments_of(segment_bytes: u64, dir: &Path, metrics: &Metrics) -> (Spool, Vec<IdKey>) {
    let mut remembered = Vec::new();
    let spool = Spool::open_remembering_ids(
        SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: 64 << 20,
            segment_bytes,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        metrics.clone(),
        Limits {
            ttl: Duration::from_secs(3600),
            max_entries: 100_000,
        },
        &mut |key, _| remembered.push(key),
    )
    .unwrap();
    (spool, remembered)
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("lag-{i}")).collect()
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(id_journal::dir_in(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ids"))
        .collect();
    files.sort();
    files
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect()
}

fn assert_remembers(remembered: &[IdKey], ids: &[String]) {
    for id in ids {
        assert!(remembered.contains(&IdKey::of(id)), "{id} forgotten");
    }
}

/// Appends `ids` one by one (a group each) and returns the last sequence number.
async fn append_all(spool: &Spool, ids: &[String]) -> u64 {
    let mut last = 0;
    for id in ids {
        last = spool.append(notification(id)).await.unwrap();
    }
    last
}

#[tokio::test]
async fn entries_a_power_loss_took_from_the_middle_of_the_newest_file_come_back_from_the_spool() {
    // Arrange: 20 ids in one journal file, none relayed; then entries 5 to 9 zeroed (pages the
    // disk never got) while later ones stayed.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let accepted = ids(0..20);
    let (spool, _) = open(dir.path(), &metrics);
    append_all(&spool, &accepted).await;
    spool.close().await;
    drop(spool);
    let newest = journal_files(dir.path()).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    file.write_all_at(&[0u8; 5 * ENTRY_LEN as usize], HEADER_LEN + 5 * ENTRY_LEN)
        .unwrap();

    // Act: restart.
    let metrics = Metrics::new();
    let (spool, remembered) = open(dir.path(), &metrics);

    // Assert: every id is remembered; the zeroed bytes count as torn, not corrupt; the damaged
    // file was replaced by a whole one.
    assert_remembers(&remembered, &accepted);
    let dropped = |m: &Metrics, reason| m.id_journal.recovery_dropped_bytes(reason);
    assert_eq!(dropped(&metrics, Dropped::Torn), 5 * ENTRY_LEN);
    assert_eq!(dropped(&metrics, Dropped::Corrupt), 0);
    assert!(
        !newest.exists(),
        "the incomplete file is deleted once rewritten"
    );
    spool.close().await;
    drop(spool);

    // A second restart finds a whole journal: nothing dropped, everything remembered.
    let metrics = Metrics::new();
    let (spool, remembered) = open(dir.path(), &metrics);
    assert_remembers(&remembered, &accepted);
    for reason in Dropped::ALL {
        assert_eq!(dropped(&metrics, reason), 0, "{}", reason.as_str());
    }
    spool.close().await;
}

#[tokio::test]
async fn a_segment_every_sink_passed_is_kept_at_start_until_the_journal_holds_its_ids() {
    // Arrange: 12 ids relayed by the only sink, their segment still the active one (so not
    // retired); then the journal loses every entry, as a power loss before its fsync would.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let accepted = ids(0..12);
    let (spool, _) = open(dir.path(), &metrics);
    let last = append_all(&spool, &accepted).await;
    spool.acknowledge_for("relay", last).await.unwrap();
    spool.close().await;
    drop(spool);
    let newest = journal_files(dir.path()).pop().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(HEADER_LEN)
        .unwrap();
    let held_before = segments(dir.path());
    assert!(!held_before.is_empty());

    // Act: restart.
    let metrics = Metrics::new();
    let (spool, remembered) = open(dir.path(), &metrics);

    // Assert: the relayed segment was read for its ids before it was retired.
    assert_remembers(&remembered, &accepted);
    for held in &held_before {
        assert!(
            !held.exists(),
            "{} retired after the ids were journaled",
            held.display()
        );
    }
    spool.close().await;
    drop(spool);
    let (spool, remembered) = open(dir.path(), &Metrics::new());
    assert_remembers(&remembered, &accepted);
    spool.close().await;
}

#[tokio::test]
async fn a_retired_segment_leaves_its_ids_durable_in_the_journal() {
    // Arrange: small segments, so that acknowledging retires most of them while running.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let accepted = ids(0..40);
    let (spool, _) = open_with_segments_of(8 * 1024, dir.path(), &metrics);
    let last = append_all(&spool, &accepted).await;
    spool.acknowledge_for("relay", last).await.unwrap();

    // Act: the retirement asked the journal to fsync; measured by its sync histogram.
    let synced = metrics.render();

    // Assert: the journal fsynced at least once for the retirement, and after a restart every
    // id is known although their segments are gone.
    let journal_syncs = synced
        .lines()
        .find(|l| {
            l.starts_with("dataloy_gateway_spool_sync_duration_seconds_count")
                && l.contains("operation=\"id_journal\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        segments(dir.path()).len() <= 2,
        "most segments were retired: {:?}",
        segments(dir.path())
    );
    assert!(journal_syncs >= 1.0, "{synced}");
    assert!(
        journal_syncs < accepted.len() as f64,
        "the journal fsyncs per retirement, not per group: {journal_syncs}"
    );
    spool.close().await;
    drop(spool);
    let (spool, remembered) = open(dir.path(), &Metrics::new());
    assert_remembers(&remembered, &accepted);
    spool.close().await;
}

#[tokio::test]
async fn a_newest_journal_file_without_a_valid_header_does_not_stop_the_start() {
    // The attacker's case: an empty newest file (a full disk leaves one) or a zeroed header was
    // deleted twice, and the second deletion failed the start.
    for damage in ["empty", "zeroed header"] {
        let dir = tempfile::tempdir().unwrap();
        let accepted = ids(0..5);
        let (spool, _) = open(dir.path(), &Metrics::new());
        append_all(&spool, &accepted).await;
        spool.close().await;
        drop(spool);
        let newest = journal_files(dir.path()).pop().unwrap();
        match damage {
            "empty" => fs::write(&newest, b"").unwrap(),
            _ => OpenOptions::new()
                .write(true)
                .open(&newest)
                .unwrap()
                .write_all_at(&[0u8; HEADER_LEN as usize], 0)
                .unwrap(),
        }

        let (spool, remembered) = open(dir.path(), &Metrics::new());

        assert_remembers(&remembered, &accepted);
        spool.close().await;
    }
}
