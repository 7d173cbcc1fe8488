//! Dedup across restarts (issue 23): the memory backend's ids survive a graceful restart through
//! the id journal beside the spool, each for the rest of its TTL and no longer. Without the
//! spool a restart forgets; with Redis nothing is journaled (Redis remembers).

use std::time::{Duration, Instant};

use dataloy_gateway::config::DedupBackend;
use serde_json::Value;

use crate::helpers::*;

async fn status_of(app: &TestApp, id: &str) -> String {
    let response = app.post(sample_with_id(id)).await;
    assert_eq!(response.status(), 200, "{id}");
    let body: Value = response.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

/// Ids at the edges: the longest id accepted (128 bytes), one of 4-byte characters only, spaces
/// and escapes.
fn edge_ids() -> Vec<String> {
    vec![
        "9".repeat(128),
        "🚢".repeat(32),
        "ünïcödé id with spaces".into(),
        "quote\\\"and\\\\backslash".into(),
    ]
}

#[tokio::test]
async fn after_a_graceful_restart_every_accepted_id_is_a_duplicate() {
    // Arrange: a gateway that accepted plain and edge-case ids, stopped gracefully.
    let app = spawn_app().await;
    let mut ids: Vec<String> = (0..40).map(|i| format!("{i}-244070007")).collect();
    ids.extend(edge_ids());
    for id in &ids {
        assert_eq!(status_of(&app, id).await, "accepted", "{id}");
    }
    app.wait_for_events(ids.len()).await;
    let dir = app.stop().await;

    // Act: restart on the same spool and send every id again.
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let mut answers = Vec::new();
    for id in &ids {
        answers.push(status_of(&app, id).await);
    }

    // Assert: all duplicates, nothing relayed twice, and a new id still goes through.
    assert!(answers.iter().all(|a| a == "duplicate"), "{answers:?}");
    assert_eq!(
        app.metric("dataloy_gateway_dedup_journal_remembered_ids")
            .await,
        ids.len() as f64
    );
    assert_eq!(status_of(&app, "new-after-restart").await, "accepted");
    let delivered = ids_of(&app.wait_for_events(ids.len() + 1).await);
    let (first, copies) = first_deliveries(delivered);
    assert_eq!(copies, 0);
    assert_eq!(first.len(), ids.len() + 1);
    let _dir = dir;
}

#[tokio::test]
async fn an_id_is_remembered_for_the_rest_of_its_ttl_and_accepted_again_after_it() {
    // Arrange: `early` expires before the restart, `late` after it.
    let ttl = Duration::from_secs(4);
    let app = spawn_app_with(|s, _| s.dedup.ttl = ttl).await;
    assert_eq!(status_of(&app, "early").await, "accepted");
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, "late").await, "accepted");
    let late_accepted = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = app.stop().await;

    // Act: restart.
    let app = spawn_app_on(dir.path(), |s| s.dedup.ttl = ttl).await;

    // Assert: `early` was not remembered; `late` is, until its own TTL ends (not the restart's
    // time plus the TTL, which would be 1.5 s later).
    assert_eq!(status_of(&app, "early").await, "accepted");
    if late_accepted.elapsed() < ttl - Duration::from_millis(200) {
        assert_eq!(status_of(&app, "late").await, "duplicate");
    }
    let late_expired = late_accepted + ttl + Duration::from_millis(300);
    tokio::time::sleep_until(late_expired.into()).await;
    assert_eq!(status_of(&app, "late").await, "accepted");
    let _dir = dir;
}

#[tokio::test]
async fn with_the_spool_disabled_a_restart_forgets_and_nothing_is_journaled() {
    let app = spawn_app_with(|s, _| s.spool.enabled = false).await;
    assert_eq!(status_of(&app, "no-spool-1").await, "accepted");
    assert_eq!(status_of(&app, "no-spool-1").await, "duplicate");
    let dir = app.stop().await;

    let app = spawn_app_on(dir.path(), |s| s.spool.enabled = false).await;

    assert_eq!(status_of(&app, "no-spool-1").await, "accepted");
    assert!(!dir.path().join("spool/ids").exists());
    let _dir = dir;
}

#[tokio::test]
async fn with_redis_dedup_no_journal_is_written_and_redis_remembers() {
    let prefix = format!("{}:", unique("restart-dedup"));
    let with_redis = |s: &mut dataloy_gateway::config::Settings| {
        crate::shared_dedup::with_redis(s, "redis://127.0.0.1:6379", &prefix);
    };
    let app = spawn_app_with(|s, _| with_redis(s)).await;
    assert_eq!(status_of(&app, "redis-1").await, "accepted");
    let dir = app.stop().await;

    let app = spawn_app_on(dir.path(), |s| {
        with_redis(s);
        assert_eq!(s.dedup.backend, DedupBackend::Redis);
    })
    .await;

    assert_eq!(status_of(&app, "redis-1").await, "duplicate");
    assert!(!dir.path().join("spool/ids").exists());
    let _dir = dir;
}

#[tokio::test]
async fn with_the_journal_turned_off_a_restart_forgets() {
    let app = spawn_app_with(|s, _| s.dedup.journal = false).await;
    assert_eq!(status_of(&app, "off-1").await, "accepted");
    let dir = app.stop().await;

    let app = spawn_app_on(dir.path(), |s| s.dedup.journal = false).await;

    assert_eq!(status_of(&app, "off-1").await, "accepted");
    let _dir = dir;
}

#[tokio::test]
async fn a_spool_written_without_the_journal_lends_it_the_ids_it_still_holds() {
    // Arrange: the journal off (or a version before it), the sink down: ids only in the spool.
    let app = spawn_app_with(|s, dir| {
        s.dedup.journal = false;
        std::fs::write(dir.join("out"), b"blocked").unwrap();
    })
    .await;
    for id in ["upgrade-1", "upgrade-2"] {
        assert_eq!(status_of(&app, id).await, "accepted");
    }
    let dir = app.stop().await;

    // Act: restart with the journal.
    let app = spawn_app_on(dir.path(), |_| {}).await;

    // Assert: the ids of the records not relayed yet are remembered (written to the journal).
    for id in ["upgrade-1", "upgrade-2"] {
        assert_eq!(status_of(&app, id).await, "duplicate");
    }
    assert_eq!(status_of(&app, "upgrade-3").await, "accepted");
    app.stop().await;
    let app = spawn_app_on(dir.path(), |_| {}).await;
    assert_eq!(status_of(&app, "upgrade-3").await, "duplicate");
    let _dir = dir;
}
