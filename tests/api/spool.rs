//! The spool on its own: group commit, order, acknowledgement and recycling of segments, and
//! recovery from a torn tail (damage elsewhere: `spool_damage.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{Spool, SpoolError, SpoolOptions, SEGMENT_HEADER_LEN};

use crate::helpers::{metric_value, sample_with_id};

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

fn open(dir: &Path, segment_bytes: u64, metrics: &Metrics) -> Spool {
    open_pacing(dir, segment_bytes, Duration::ZERO, metrics)
}

fn open_pacing(
    dir: &Path,
    segment_bytes: u64,
    commit_interval: Duration,
    metrics: &Metrics,
) -> Spool {
    Spool::open(
        SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: 64 << 20,
            segment_bytes,
            commit_interval,
            missing_cursor: Default::default(),
        },
        &["relay"],
        metrics.clone(),
    )
    .unwrap()
}

fn fsyncs(metrics: &Metrics) -> f64 {
    metric_value(&metrics.render(), "dataloy_gateway_spool_fsyncs_total")
}

/// Fsyncs taken by ten appends sent 20 ms apart, right after a burst of concurrent appends.
async fn fsyncs_for_spaced_appends(commit_interval: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = Arc::new(open_pacing(dir.path(), 1 << 20, commit_interval, &metrics));
    let burst = (0..50).map(|i| {
        let spool = spool.clone();
        async move { spool.append(notification(&format!("b-{i}"))).await.unwrap() }
    });
    futures::future::join_all(burst).await;
    let before = fsyncs(&metrics);
    let spaced = (0..10u64).map(|i| {
        let spool = spool.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            spool.append(notification(&format!("s-{i}"))).await.unwrap()
        }
    });
    futures::future::join_all(spaced).await;
    let records = spool.reader().read_available(100).unwrap();
    assert_eq!(records.len(), 60, "every append is durable and readable");
    fsyncs(&metrics) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_appends_wait_for_the_commit_interval_and_share_an_fsync() {
    // The burst leaves groups of more than one append: the writer then paces its commits.
    let paced = fsyncs_for_spaced_appends(Duration::from_millis(400)).await;
    let unpaced = fsyncs_for_spaced_appends(Duration::ZERO).await;
    assert!(
        paced <= 2.0,
        "appends 20 ms apart within a 400 ms commit interval share a commit: {paced} fsyncs"
    );
    assert!(
        unpaced >= 5.0,
        "without an interval, appends 20 ms apart are committed one by one: {unpaced} fsyncs"
    );
}

#[tokio::test]
async fn a_sender_that_waits_for_each_answer_is_not_held_back_by_the_commit_interval() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let interval = Duration::from_secs(5);
    let spool = open_pacing(dir.path(), 1 << 20, interval, &metrics);
    let started = std::time::Instant::now();
    for i in 0..5 {
        spool
            .append(notification(&format!("one-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(fsyncs(&metrics), 5.0, "one commit per append");
    assert!(
        started.elapsed() < interval,
        "groups of one are written at once, not paced: {:?} for five appends",
        started.elapsed()
    );
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "seg")
}

fn spare_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "spare")
}

fn files_ending(dir: &Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

async fn read_ids(spool: &Spool, max: usize) -> Vec<String> {
    spool
        .reader()
        .read_available(max)
        .unwrap()
        .into_iter()
        .map(|r| r.notification.envelope.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = Arc::new(open(dir.path(), 1 << 20, &metrics));

    let appends = (0..200).map(|i| {
        let spool = spool.clone();
        async move { spool.append(notification(&format!("g-{i}"))).await.unwrap() }
    });
    let mut seqs = futures::future::join_all(appends).await;

    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 200, "every append got its own sequence number");
    let text = metrics.render();
    let fsyncs = metric_value(&text, "dataloy_gateway_spool_fsyncs_total");
    assert_eq!(
        metric_value(&text, "dataloy_gateway_spool_appends_total"),
        200.0
    );
    assert!(
        fsyncs < 200.0,
        "group commit shared fsyncs: {fsyncs} for 200 appends"
    );
    let records = spool.reader().read_available(1000).unwrap();
    assert_eq!(records.len(), 200);
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn acknowledged_segments_are_retired_and_a_reopen_resumes_after_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 4096, &metrics);
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(spool.append(notification(&format!("a-{i}"))).await.unwrap());
    }
    assert!(segment_files(dir.path()).len() >= 5, "small segments roll");

    spool.acknowledge(seqs[6]).await.unwrap();
    spool.close().await;
    drop(spool);

    let reopened = open(dir.path(), 4096, &metrics);
    assert_eq!(read_ids(&reopened, 100).await, ["a-7", "a-8", "a-9"]);
    assert!(
        segment_files(dir.path()).len() <= 4,
        "relayed segments retired"
    );
    assert!(
        spare_files(dir.path()).len() <= 2,
        "at most two kept for reuse"
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_reported_and_the_spool_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = open(dir.path(), 1 << 20, &metrics);
    for i in 0..3 {
        spool.append(notification(&format!("t-{i}"))).await.unwrap();
    }
    spool.close().await;
    drop(spool);
    // A crash mid-write leaves half a record at the end of the segment.
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    let first_record = SEGMENT_HEADER_LEN as usize;
    let half_record = bytes[first_record..first_record + 100].to_vec();
    bytes.extend_from_slice(&half_record);
    std::fs::write(&segment, &bytes).unwrap();

    let reopened = open(dir.path(), 1 << 20, &metrics);
    reopened.append(notification("t-after")).await.unwrap();

    assert_eq!(
        read_ids(&reopened, 100).await,
        ["t-0", "t-1", "t-2", "t-after"]
    );
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    assert_eq!(
        metric_value(
            &metrics.render(),
            "dataloy_gateway_spool_recovery_dropped_bytes_total"
        ),
        100.0
    );
}

#[tokio::test]
async fn a_full_spool_refuses_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = Spool::open(
        SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 16 * 1024,
            segment_bytes: 4096,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        metrics,
    )
    .unwrap();
    let mut last = 0;
    let mut full = false;
    for i in 0..10 {
        match spool.append(notification(&format!("f-{i}"))).await {
            Ok(seq) => last = seq,
            Err(SpoolError::Full) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full);
    assert!(!spool.is_writable(4096));

    spool.acknowledge(last).await.unwrap();

    assert!(spool.is_writable(4096));
    spool.append(notification("f-later")).await.unwrap();
}

#[tokio::test]
async fn a_second_gateway_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let _first = open(dir.path(), 1 << 20, &metrics);

    let second = Spool::open(
        SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        metrics,
    );

    assert!(matches!(second, Err(SpoolError::Locked(_))));
}

#[tokio::test]
async fn relayed_segments_are_recycled_and_their_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    // About three 3.7 kB records per segment.
    let spool = open(dir.path(), 8192, &metrics);
    let mut last = 0;
    for i in 0..12 {
        last = spool
            .append(notification(&format!("old-{i}")))
            .await
            .unwrap();
    }
    spool.acknowledge(last).await.unwrap();
    let spares = spare_files(dir.path());
    assert_eq!(spares.len(), 2, "two relayed segments kept for reuse");
    let old_len = std::fs::metadata(&spares[1]).unwrap().len();

    // The next segment reuses a spare: one new record over three old ones.
    spool.append(notification("new-0")).await.unwrap();
    spool.close().await;
    drop(spool);
    assert_eq!(spare_files(dir.path()).len(), 1, "a spare was taken");
    let reused = segment_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&reused).unwrap().len(), old_len);

    let reopened = open(dir.path(), 8192, &metrics);
    assert_eq!(read_ids(&reopened, 100).await, ["new-0"]);
    reopened.append(notification("new-1")).await.unwrap();
    assert_eq!(read_ids(&reopened, 100).await, ["new-0", "new-1"]);
    assert_eq!(
        metric_value(
            &metrics.render(),
            "dataloy_gateway_spool_recovery_dropped_bytes_total"
        ),
        0.0,
        "old records end the data cleanly; they are not damage"
    );
}

#[tokio::test]
async fn a_segment_file_it_cannot_read_stops_start_up_instead_of_being_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("00000000000000000001.seg");
    std::fs::write(&foreign, b"not written by this gateway version").unwrap();

    let error = Spool::open(
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
    .err()
    .expect("refused");

    assert!(
        error.to_string().contains("00000000000000000001.seg"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"not written by this gateway version"
    );
}

/// Found by fuzzing: a cursor at u64::MAX wrapped the next sequence number to 0, so new records
/// hid behind the cursor and were never relayed. It is refused as damage.
#[tokio::test]
async fn a_cursor_at_the_largest_sequence_number_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cursor"), u64::MAX.to_string()).unwrap();
    let opened = Spool::open(
        SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            missing_cursor: Default::default(),
        },
        &["relay"],
        Metrics::new(),
    );
    let error = opened.err().expect("refused").to_string();
    assert!(error.contains("largest sequence number"), "{error}");
}
