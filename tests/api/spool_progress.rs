//! Per-sink progress in the spool: each sink reads and acknowledges on its own, a segment goes
//! only once every sink has passed it, the spool's bound applies to the slowest sink, and the
//! single cursor of earlier versions, a new sink, a lost cursor and a removed sink are each
//! handled without skipping a record a sink still needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::{MissingCursor, Spool, SpoolError, SpoolOptions};

use crate::helpers::sample_with_id;

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

struct Options {
    max_bytes: u64,
    segment_bytes: u64,
    missing_cursor: MissingCursor,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            missing_cursor: MissingCursor::Refuse,
        }
    }
}

fn try_open(dir: &Path, sinks: &[&str], options: Options) -> Result<Spool, SpoolError> {
    Spool::open(
        SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: options.max_bytes,
            segment_bytes: options.segment_bytes,
            commit_interval: Duration::ZERO,
            missing_cursor: options.missing_cursor,
        },
        sinks,
        Metrics::new(),
    )
}

fn open(dir: &Path, sinks: &[&str]) -> Spool {
    try_open(dir, sinks, Options::default()).unwrap()
}

async fn close(spool: Spool) {
    spool.close().await;
}

fn ids_for(spool: &Spool, sink: &str) -> Vec<String> {
    spool
        .reader_for(sink)
        .unwrap()
        .read_available(1000)
        .unwrap()
        .into_iter()
        .map(|r| r.notification.envelope.id.to_string())
        .collect()
}

async fn append(spool: &Spool, prefix: &str, n: usize) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = spool
            .append(notification(&format!("{prefix}-{i}")))
            .await
            .unwrap();
    }
    last
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn backlog(spool: &Spool, sink: &str) -> u64 {
    spool
        .sink_backlogs()
        .into_iter()
        .find(|b| b.sink == sink)
        .unwrap()
        .records
}

#[tokio::test]
async fn each_sink_reads_and_acknowledges_on_its_own() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), &["kafka", "rabbitmq"]);
    let last = append(&spool, "s", 5).await;

    // Act: RabbitMQ relays everything; Kafka is down and acknowledges nothing.
    assert_eq!(ids_for(&spool, "rabbitmq"), names("s", 0..5));
    spool.acknowledge_for("rabbitmq", last).await.unwrap();

    // Assert
    assert_eq!(backlog(&spool, "rabbitmq"), 0);
    assert_eq!(backlog(&spool, "kafka"), 5);
    assert_eq!(spool.depth(), 5, "not yet confirmed by every sink");
    spool.refresh_metrics();
    close(spool).await;
    let reopened = open(dir.path(), &["kafka", "rabbitmq"]);
    assert!(ids_for(&reopened, "rabbitmq").is_empty());
    assert_eq!(ids_for(&reopened, "kafka"), names("s", 0..5));
}

#[tokio::test]
async fn backlog_gauges_are_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let spool = Spool::open(
        SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            missing_cursor: MissingCursor::Refuse,
        },
        &["kafka", "rabbitmq"],
        metrics.clone(),
    )
    .unwrap();
    // Received a minute ago, so the age does not depend on how fast this test runs.
    let mut last = 0;
    for i in 0..3 {
        let mut old = notification(&format!("g-{i}"));
        old.received_at_ms -= 60_000;
        last = spool.append(old).await.unwrap();
    }
    let mut kafka = spool.reader_for("kafka").unwrap();
    let batch = kafka.next_batch(10).await.unwrap();
    assert_eq!(batch.len(), 3);
    spool.acknowledge_for("rabbitmq", last).await.unwrap();

    spool.refresh_metrics();

    let text = metrics.render();
    assert!(
        text.contains("dataloy_gateway_sink_backlog{sink=\"kafka\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("dataloy_gateway_sink_backlog{sink=\"rabbitmq\"} 0"),
        "{text}"
    );
    let kafka_age = spool
        .sink_backlogs()
        .into_iter()
        .find(|b| b.sink == "kafka")
        .unwrap()
        .oldest_age;
    let rabbitmq_age = spool
        .sink_backlogs()
        .into_iter()
        .find(|b| b.sink == "rabbitmq")
        .unwrap()
        .oldest_age;
    assert_eq!(rabbitmq_age, Duration::ZERO, "no backlog, no age");
    assert!(kafka_age >= Duration::from_secs(60), "{kafka_age:?}");
    let rendered_age = crate::helpers::metric_value(
        &text,
        "dataloy_gateway_sink_oldest_age_seconds{sink=\"kafka\"}",
    );
    assert!(rendered_age >= 60.0, "{rendered_age}");
}

#[tokio::test]
async fn a_segment_goes_only_once_every_sink_has_passed_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        segment_bytes: 8192,
        ..Options::default()
    };
    let spool = try_open(dir.path(), &["file", "kafka"], options()).unwrap();
    let last = append(&spool, "r", 12).await;
    let before = segments(dir.path()).len();
    assert!(before >= 4);

    spool.acknowledge_for("file", last).await.unwrap();
    assert_eq!(segments(dir.path()).len(), before, "kafka still needs them");

    spool.acknowledge_for("kafka", last).await.unwrap();
    assert_eq!(segments(dir.path()).len(), 1, "only the active one is left");
}

#[tokio::test]
async fn the_spool_bound_applies_to_the_slowest_sink() {
    let dir = tempfile::tempdir().unwrap();
    let spool = try_open(
        dir.path(),
        &["file", "kafka"],
        Options {
            max_bytes: 16 * 1024,
            segment_bytes: 4096,
            ..Options::default()
        },
    )
    .unwrap();
    let mut last = 0;
    loop {
        match spool.append(notification(&format!("b-{last}"))).await {
            Ok(seq) => last = seq,
            Err(SpoolError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }

    spool.acknowledge_for("file", last).await.unwrap();
    assert!(!spool.is_writable(4096), "kafka has relayed nothing");

    spool.acknowledge_for("kafka", last).await.unwrap();
    assert!(spool.is_writable(4096));
}

/// Turns a spool opened for the one sink `relay` into the layout of an earlier version: one
/// `cursor` file (the same two-slot format) and no list of sinks.
fn make_legacy(dir: &Path) {
    std::fs::rename(dir.join("cursor.relay"), dir.join("cursor")).unwrap();
    std::fs::remove_file(dir.join("sinks")).unwrap();
}

#[tokio::test]
async fn the_single_cursor_of_an_earlier_version_migrates_to_every_sink() {
    // Arrange: six records, four of them relayed, under the one cursor of an earlier version.
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), &["relay"]);
    append(&spool, "m", 6).await;
    spool.acknowledge_for("relay", 4).await.unwrap();
    close(spool).await;
    make_legacy(dir.path());

    // Act
    let spool = open(dir.path(), &["file", "kafka"]);

    // Assert: both resume after the old position; the old cursor is gone.
    assert_eq!(ids_for(&spool, "file"), names("m", 4..6));
    assert_eq!(ids_for(&spool, "kafka"), names("m", 4..6));
    assert!(!dir.path().join("cursor").exists());
    assert!(dir.path().join("cursor.file").exists());
    assert!(dir.path().join("cursor.kafka").exists());
    close(spool).await;
    let reopened = open(dir.path(), &["file", "kafka"]);
    assert_eq!(ids_for(&reopened, "kafka"), names("m", 4..6));
}

#[tokio::test]
async fn a_new_sink_starts_where_every_existing_sink_has_relayed() {
    // Arrange: `file` relayed 4 of 6, `kafka` only 2.
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), &["file", "kafka"]);
    append(&spool, "n", 6).await;
    spool.acknowledge_for("file", 4).await.unwrap();
    spool.acknowledge_for("kafka", 2).await.unwrap();
    close(spool).await;

    // Act: a RabbitMQ sink is added.
    let spool = open(dir.path(), &["file", "kafka", "rabbitmq"]);

    // Assert: it gets everything not every sink has relayed; the others are untouched.
    assert_eq!(ids_for(&spool, "rabbitmq"), names("n", 2..6));
    assert_eq!(ids_for(&spool, "kafka"), names("n", 2..6));
    assert_eq!(ids_for(&spool, "file"), names("n", 4..6));
}

#[tokio::test]
async fn a_lost_cursor_is_refused_even_beside_the_other_sinks_cursors() {
    // Arrange: kafka is behind; then its cursor file is deleted.
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), &["file", "kafka"]);
    append(&spool, "l", 6).await;
    spool.acknowledge_for("file", 6).await.unwrap();
    spool.acknowledge_for("kafka", 1).await.unwrap();
    close(spool).await;
    std::fs::remove_file(dir.path().join("cursor.kafka")).unwrap();

    // Act
    let refused = try_open(dir.path(), &["file", "kafka"], Options::default());

    // Assert: refused (starting kafka where `file` is would skip five records it never got).
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("cursor.kafka"), "{error}");
    assert!(error.contains("spool.missing_cursor"), "{error}");
    let spool = try_open(
        dir.path(),
        &["file", "kafka"],
        Options {
            missing_cursor: MissingCursor::StartFromEnd,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(ids_for(&spool, "kafka").is_empty(), "the operator's choice");
    assert!(ids_for(&spool, "file").is_empty());
}

#[tokio::test]
async fn a_sink_removed_from_the_configuration_no_longer_holds_segments_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        segment_bytes: 8192,
        ..Options::default()
    };
    let spool = try_open(dir.path(), &["file", "kafka"], options()).unwrap();
    let last = append(&spool, "x", 12).await;
    spool.acknowledge_for("file", last).await.unwrap();
    close(spool).await;
    assert!(segments(dir.path()).len() >= 4, "kafka holds them");

    let spool = try_open(dir.path(), &["file"], options()).unwrap();

    assert!(ids_for(&spool, "file").is_empty());
    assert_eq!(segments(dir.path()).len(), 1, "only the new active segment");
    close(spool).await;
    // Back again, kafka resumes at its own cursor: what the spool still holds after it.
    let spool = try_open(dir.path(), &["file", "kafka"], options()).unwrap();
    assert!(ids_for(&spool, "kafka").is_empty());
    spool.append(notification("x-later")).await.unwrap();
    assert_eq!(ids_for(&spool, "kafka"), ["x-later"]);
}

#[tokio::test]
async fn sink_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for sinks in [&[][..], &["../escape"], &["a b"], &["same", "same"]] {
        let error = try_open(dir.path(), sinks, Options::default());
        assert!(
            matches!(error, Err(SpoolError::InvalidSinks(_))),
            "{sinks:?}"
        );
    }
    let spool = open(dir.path(), &["file"]);
    assert!(matches!(
        spool.reader_for("kafka"),
        Err(SpoolError::UnknownSink(_))
    ));
}

#[tokio::test]
async fn a_damaged_cursor_is_refused_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), &["file", "kafka"]);
    append(&spool, "d", 2).await;
    close(spool).await;
    let path = dir.path().join("cursor.kafka");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff; // both slots
    bytes[4096] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let error = try_open(dir.path(), &["file", "kafka"], Options::default())
        .err()
        .expect("refused")
        .to_string();

    assert!(error.contains("cursor.kafka"), "{error}");
    assert!(error.contains("damaged"), "{error}");
}
