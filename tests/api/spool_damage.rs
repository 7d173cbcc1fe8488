//! Damage in the spool never destroys accepted notifications: a flipped byte anywhere costs the
//! record it hit (its bytes kept in quarantine, logged and counted), never the records around
//! it; and the stale bytes a recycled segment keeps after its current data are not damage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{Spool, SpoolOptions, SEGMENT_HEADER_LEN};

use crate::helpers::{metric_value, sample_with_id};

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

fn open(dir: &Path, segment_bytes: u64, metrics: &Metrics) -> Spool {
    Spool::open(
        SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: 64 << 20,
            segment_bytes,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        metrics.clone(),
    )
    .unwrap()
}

fn files_ending(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn quarantined(dir: &Path) -> Vec<PathBuf> {
    files_ending(&dir.join("quarantine"), "bin")
}

fn read_ids(spool: &Spool) -> Vec<String> {
    spool
        .reader()
        .read_available(1000)
        .unwrap()
        .into_iter()
        .map(|r| r.notification.envelope.id.to_string())
        .collect()
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    metric_value(&metrics.render(), &format!("dataloy_gateway_{name}"))
}

/// Appends `ids` one by one; returns where each record starts in its segment file.
async fn append_all(spool: &Spool, dir: &Path, ids: &[String]) -> Vec<(PathBuf, u64)> {
    let mut starts = Vec::new();
    for id in ids {
        let before: Vec<(PathBuf, u64)> = files_ending(dir, "seg")
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).unwrap().len();
                (p, len)
            })
            .collect();
        spool.append(notification(id)).await.unwrap();
        let after = files_ending(dir, "seg");
        let grown = after
            .iter()
            .find_map(|p| {
                let len = std::fs::metadata(p).unwrap().len();
                match before.iter().find(|(q, _)| q == p) {
                    Some((_, old)) if *old < len => Some((p.clone(), *old)),
                    None => Some((p.clone(), SEGMENT_HEADER_LEN)),
                    _ => None,
                }
            })
            .expect("the append grew a segment");
        starts.push(grown);
    }
    starts
}

/// Flips one byte in place (the file stays the same file, open in the spool); returns the
/// file's bytes after the flip.
fn flip_byte(path: &Path, offset: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x20], offset).unwrap();
    std::fs::read(path).unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn a_damaged_record_in_the_middle_of_the_newest_segment_costs_only_that_record() {
    // Arrange: four records in one segment; a byte flipped inside the third one's body.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 1 << 20, &metrics);
    let sent = ids("m", 4);
    let starts = append_all(&spool, dir.path(), &sent).await;
    spool.close().await;
    drop(spool);
    let (segment, third) = starts[2].clone();
    let fourth = starts[3].1;
    let damaged = flip_byte(&segment, third + 200);

    // Act
    let reopened = open(dir.path(), 1 << 20, &metrics);
    reopened.append(notification("m-after")).await.unwrap();

    // Assert: the records after the damage are still relayed; the damaged bytes are kept.
    assert_eq!(read_ids(&reopened), ["m-0", "m-1", "m-3", "m-after"]);
    assert!(
        std::fs::read(&segment).unwrap() == damaged,
        "the segment is not cut"
    );
    let kept = quarantined(dir.path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(std::fs::read(&kept[0]).unwrap() == damaged[third as usize..fourth as usize]);
    assert_eq!(
        counter(&metrics, "spool_quarantined_bytes_total"),
        (fourth - third) as f64
    );
    assert_eq!(counter(&metrics, "spool_quarantined_records_total"), 1.0);
    assert_eq!(counter(&metrics, "spool_recovery_dropped_bytes_total"), 0.0);
}

#[tokio::test]
async fn damage_in_older_segments_never_costs_the_valid_records_around_it() {
    // Arrange: about three 3.7 kB records per 8 KiB segment; the first record of the oldest
    // segment and a middle record of the next one damaged.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 8192, &metrics);
    let sent = ids("o", 9);
    let starts = append_all(&spool, dir.path(), &sent).await;
    spool.close().await;
    drop(spool);
    assert!(files_ending(dir.path(), "seg").len() >= 3);
    assert_eq!(starts[0].0, starts[1].0, "o-0 and o-1 share a segment");
    assert_eq!(starts[3].0, starts[4].0, "o-3 and o-4 share a segment");
    assert_eq!(starts[4].0, starts[5].0, "o-4 and o-5 share a segment");
    assert_ne!(starts[0].0, starts[3].0);
    flip_byte(&starts[0].0, starts[0].1 + 1000);
    flip_byte(&starts[4].0, starts[4].1 + 1000);

    // Act
    let reopened = open(dir.path(), 8192, &metrics);

    // Assert
    let expected: Vec<String> = sent
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 0 && *i != 4)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(read_ids(&reopened), expected);
    assert_eq!(quarantined(dir.path()).len(), 2);
    assert_eq!(counter(&metrics, "spool_quarantined_records_total"), 2.0);

    // Once relayed, the segments are retired; the quarantined bytes stay.
    reopened.acknowledge(9).await.unwrap();
    reopened.append(notification("o-later")).await.unwrap();
    reopened.acknowledge(10).await.unwrap();
    assert_eq!(quarantined(dir.path()).len(), 2);
}

#[tokio::test]
async fn damage_in_the_last_record_of_an_older_segment_is_quarantined_not_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 8192, &metrics);
    let sent = ids("l", 6);
    let starts = append_all(&spool, dir.path(), &sent).await;
    spool.close().await;
    drop(spool);
    let (segment, last_of_first) = starts[2].clone();
    assert_eq!(segment, starts[0].0);
    assert_ne!(segment, starts[3].0, "l-2 ends the first segment");
    let damaged = flip_byte(&segment, last_of_first + 500);

    let reopened = open(dir.path(), 8192, &metrics);

    assert_eq!(read_ids(&reopened), ["l-0", "l-1", "l-3", "l-4", "l-5"]);
    assert!(std::fs::read(&segment).unwrap() == damaged, "not cut");
    let kept = quarantined(dir.path());
    assert_eq!(kept.len(), 1);
    assert!(std::fs::read(&kept[0]).unwrap() == damaged[last_of_first as usize..]);
    assert_eq!(counter(&metrics, "spool_recovery_dropped_bytes_total"), 0.0);
}

#[tokio::test]
async fn damage_found_while_reading_is_quarantined_once_and_reading_goes_on() {
    // Arrange: records already durable; then a byte changes under the running spool.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 1 << 20, &metrics);
    let sent = ids("r", 5);
    let starts = append_all(&spool, dir.path(), &sent).await;
    let (segment, second) = starts[1].clone();
    flip_byte(&segment, second + 300);

    // Act: two readers (two sinks) read past it.
    let first = read_ids(&spool);
    let second_reader = read_ids(&spool);
    spool.append(notification("r-after")).await.unwrap();

    // Assert
    assert_eq!(first, ["r-0", "r-2", "r-3", "r-4"]);
    assert_eq!(second_reader, first);
    assert_eq!(read_ids(&spool), ["r-0", "r-2", "r-3", "r-4", "r-after"]);
    assert_eq!(quarantined(dir.path()).len(), 1);
    assert_eq!(
        counter(&metrics, "spool_quarantined_bytes_total"),
        (starts[2].1 - second) as f64,
        "counted once"
    );
}

#[tokio::test]
async fn the_stale_tail_of_a_recycled_segment_is_not_damage_after_a_clean_restart() {
    // Arrange: segments relayed and recycled; the new record is longer than the old ones, so
    // the current data ends in the middle of an old record.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 8192, &metrics);
    let mut last = 0;
    for id in ids("old", 12) {
        last = spool.append(notification(&id)).await.unwrap();
    }
    spool.acknowledge(last).await.unwrap();
    spool
        .append(notification("a-longer-new-record-0"))
        .await
        .unwrap();
    spool.close().await;
    drop(spool);
    let reused = files_ending(dir.path(), "seg").pop().unwrap();
    let before = std::fs::read(&reused).unwrap();

    // Act: a clean restart.
    let reopened = open(dir.path(), 8192, &metrics);

    // Assert: nothing reported, nothing cut, the new record is there.
    assert_eq!(read_ids(&reopened), ["a-longer-new-record-0"]);
    assert_eq!(counter(&metrics, "spool_recovery_dropped_bytes_total"), 0.0);
    assert_eq!(counter(&metrics, "spool_quarantined_bytes_total"), 0.0);
    assert!(quarantined(dir.path()).is_empty());
    assert!(std::fs::read(&reused).unwrap() == before, "not cut");
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_counted_but_its_bytes_are_kept() {
    // Arrange: a crash mid-write left the start of a record after the last complete one.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 1 << 20, &metrics);
    let starts = append_all(&spool, dir.path(), &ids("t", 2)).await;
    spool.close().await;
    drop(spool);
    let segment = starts[0].0.clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    let torn = bytes[starts[1].1 as usize..starts[1].1 as usize + 300].to_vec();
    // Same generation, the next sequence number: it starts like the record that was torn.
    let mut next = torn.clone();
    next[8..16].copy_from_slice(&3u64.to_le_bytes());
    bytes.extend_from_slice(&next);
    std::fs::write(&segment, &bytes).unwrap();

    // Act
    let reopened = open(dir.path(), 1 << 20, &metrics);

    // Assert: a torn tail, not damage; cut off, yet kept.
    assert_eq!(read_ids(&reopened), ["t-0", "t-1"]);
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    assert_eq!(
        counter(&metrics, "spool_recovery_dropped_bytes_total"),
        300.0
    );
    assert_eq!(counter(&metrics, "spool_quarantined_bytes_total"), 0.0);
    let kept = quarantined(dir.path());
    assert_eq!(kept.len(), 1);
    assert!(std::fs::read(&kept[0]).unwrap() == next);
}
