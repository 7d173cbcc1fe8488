//! Redis dedup under operator faults: a stall that lets timed-out claims land late, a restart
//! while the memory fallback served, a Redis that evicts keys, a Redis that refuses every call,
//! and a durable write slower than the claim lease.

use std::path::Path;
use std::time::{Duration, Instant};

use dataloy_gateway::config::{OnBackendError, Settings};
use dataloy_gateway::startup::Application;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::rabbitmq::rabbitmq_settings;
use crate::rabbitmq_broker::*;
use crate::shared_dedup::{status_of, with_redis, OwnRedis};
use crate::stall_proxy::StallProxy;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

async fn ready_body(app: &TestApp) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{}/health/ready", app.admin_address))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lands_after_a_redis_stall_does_not_block_its_id() {
    // Arrange: Redis behind a proxy that can hold its bytes; the client gives up after 300 ms.
    let proxy = StallProxy::start(6379).await;
    let prefix = format!("{}:", unique("stall"));
    let app = spawn_app_with(|s, _| with_redis(s, &proxy.url(), &prefix)).await;
    assert_eq!(app.post(sample_with_id("stall-warm")).await.status(), 200);

    // Act: a 1.5 s stall; the claim times out on the client and reaches Redis when it ends.
    proxy.hold();
    let stalled_at = Instant::now();
    let refused = app.post(sample_with_id("stall-1")).await;
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(stalled_at.elapsed())).await;
    proxy.resume();

    // Assert: Dataloy's retry is processed once Redis answers, not refused for the 30 s lease.
    assert_eq!(refused.status(), 503);
    let mut retry = (0, String::new());
    let retrying = Instant::now();
    while retrying.elapsed() < Duration::from_secs(6) {
        retry = status_of(app.post(sample_with_id("stall-1")).await).await;
        if retry.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        retry,
        (200, "accepted".to_owned()),
        "the late claim was fenced"
    );
    assert_eq!(
        ids_of(&app.wait_for_events(2).await),
        ["stall-warm", "stall-1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_accepted_into_the_memory_fallback_stay_known_after_redis_returns() {
    // Arrange
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(|s, _| {
        with_redis(s, &url, "gw:");
        s.dedup.on_backend_error = OnBackendError::FallbackMemory;
    })
    .await;
    let ids: Vec<String> = (0..5).map(|i| format!("fbr-{i}")).collect();

    // Act: accepted while Redis is down, then resent once it is back (empty, as after a restart).
    redis.stop();
    for id in &ids {
        let answer = status_of(app.post(sample_with_id(id)).await).await;
        assert_eq!(
            answer,
            (200, "accepted".to_owned()),
            "{id} during the outage"
        );
    }
    redis.restart();
    assert!(
        eventually(|| async { ready_body(&app).await.1["checks"]["dedup"] == "ok" }).await,
        "the gateway uses Redis again"
    );
    let mut resent = Vec::new();
    for id in &ids {
        resent.push(status_of(app.post(sample_with_id(id)).await).await.1);
    }

    // Assert
    assert_eq!(resent, vec!["duplicate"; ids.len()]);
    app.post(minimal("fbr-end").into_bytes()).await;
    let delivered = ids_of(&app.wait_for_events(ids.len() + 1).await);
    assert_eq!(delivered.len(), ids.len() + 1, "{delivered:?}");
}

/// Builds (without running) a gateway whose dedup uses `url`; the error message when refused.
async fn build_error(url: &str, customize: impl FnOnce(&mut Settings)) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    with_redis(&mut settings, url, "gw:");
    customize(&mut settings);
    settings.validate().unwrap();
    match Application::build(settings).await {
        Ok(app) => {
            let stop = app.stop_handle();
            let running = tokio::spawn(app.run_until_stopped());
            stop.stop();
            running.await.unwrap().unwrap();
            None
        }
        Err(e) => Some(format!("{e:#}")),
    }
}

#[tokio::test]
async fn a_redis_that_evicts_keys_is_refused_at_start_up_unless_allowed() {
    let lru = ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"];
    let redis = OwnRedis::start_with(&lru);
    let error = build_error(&redis.url(), |_| {}).await.expect("refused");
    assert!(error.contains("maxmemory-policy allkeys-lru"), "{error}");
    assert!(error.contains("dedup.redis_allow_eviction"), "{error}");

    let allowed = build_error(&redis.url(), |s| s.dedup.redis_allow_eviction = true).await;
    assert_eq!(allowed, None, "started with dedup.redis_allow_eviction");

    let ttl = OwnRedis::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"]);
    assert!(
        build_error(&ttl.url(), |_| {}).await.is_some(),
        "volatile-ttl"
    );

    let unbounded = OwnRedis::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    assert_eq!(
        build_error(&unbounded.url(), |_| {}).await,
        None,
        "no maxmemory: nothing evicts"
    );
    let noeviction = OwnRedis::start_with(&["--maxmemory", "64mb"]);
    assert_eq!(
        build_error(&noeviction.url(), |_| {}).await,
        None,
        "noeviction"
    );
}

#[tokio::test]
async fn with_config_disabled_the_policy_is_read_from_info_and_unknown_is_a_warning() {
    let mut args = vec!["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lfu"];
    args.extend(["--rename-command", "CONFIG", ""]);
    let no_config = OwnRedis::start_with(&args);
    let error = build_error(&no_config.url(), |_| {}).await;
    assert!(
        error.as_deref().is_some_and(|e| e.contains("allkeys-lfu")),
        "read from INFO: {error:?}"
    );

    args.extend(["--rename-command", "INFO", ""]);
    let neither = OwnRedis::start_with(&args);
    assert_eq!(
        build_error(&neither.url(), |_| {}).await,
        None,
        "cannot tell: starts, with a warning"
    );
}

#[tokio::test]
async fn readiness_is_503_while_the_dedup_backend_refuses_every_call() {
    let guarded = OwnRedis::start_with(&["--requirepass", "right"]);
    let wrong_password = format!("redis://:wrong@127.0.0.1:{}", guarded.port);
    let no_such_db = format!("{SHARED_REDIS}/99");
    for url in [wrong_password.as_str(), no_such_db.as_str()] {
        let app = spawn_app_with(|s, _| with_redis(s, url, "gw:")).await;

        let (status, body) = ready_body(&app).await;
        let refused = app.post(sample_with_id("refused")).await.status();

        assert_eq!(status, 503, "{url}: {body}");
        assert_eq!(body["checks"]["dedup"], "unavailable", "{url}");
        assert_eq!(refused, 503);
        app.stop().await;

        // With the memory fallback the gateway still accepts, so it stays ready.
        let app = spawn_app_with(|s, _| {
            with_redis(s, url, "gw:");
            s.dedup.on_backend_error = OnBackendError::FallbackMemory;
        })
        .await;
        let (status, body) = ready_body(&app).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["checks"]["dedup"], "fallback", "{url}");
        app.stop().await;
    }

    // The right password: ready.
    let right = format!("redis://:right@127.0.0.1:{}", guarded.port);
    let app = spawn_app_with(|s, _| with_redis(s, &right, "gw:")).await;
    assert_eq!(ready_body(&app).await.0, 200);
}

fn through_proxy(settings: &mut Settings, exchange: &str, proxy_port: u16) {
    let mut rabbitmq = rabbitmq_settings(exchange);
    rabbitmq.uri = SecretString::from(format!("amqp://guest:guest@127.0.0.1:{proxy_port}/%2f"));
    rabbitmq.health_interval = Duration::from_secs(60);
    rabbitmq.confirm_timeout = Duration::from_secs(60);
    settings.sinks.file = None;
    settings.sinks.rabbitmq = Some(rabbitmq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_slower_than_the_claim_lease_keeps_its_id() {
    // Arrange: no spool, so the durable write is RabbitMQ's confirm, through a proxy that can
    // hold it; a 5 s lease (the shortest allowed).
    let exchange = unique("x-lease");
    let queue = bind_queue(&exchange, "#").await;
    let proxy = StallProxy::start(5672).await;
    let prefix = format!("{}:", unique("lease"));
    let app = spawn_app_with(|s, _: &Path| {
        s.spool.enabled = false;
        through_proxy(s, &exchange, proxy.port);
        with_redis(s, SHARED_REDIS, &prefix);
        s.dedup.claim_lease = Duration::from_secs(5);
        s.dedup.in_flight_wait = Duration::from_secs(1);
    })
    .await;
    assert_eq!(app.post(sample_with_id("lease-warm")).await.status(), 200);

    // Act: the first copy's confirm is held for 8 s; Dataloy's retry comes after 6.5 s.
    proxy.hold();
    let post = |app: &TestApp| {
        let request = app
            .client
            .post(format!("{}/webhooks/dataloy", app.address))
            .header("content-type", "application/json")
            .body(sample_with_id("lease-1"));
        tokio::spawn(async move { status_of(request.send().await.unwrap()).await })
    };
    let first = post(&app);
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let retry = post(&app);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.resume();

    // Assert: one copy accepted and published; the retry was told to come back.
    assert_eq!(first.await.unwrap(), (200, "accepted".to_owned()));
    assert_eq!(retry.await.unwrap(), (503, "unavailable".to_owned()));
    let published = drain(&queue, 2, Duration::from_secs(20)).await;
    let ids: Vec<String> = published.iter().map(message_id).collect();
    assert_eq!(ids, ["lease-warm", "lease-1"]);
    assert_eq!(
        app.metric("dataloy_gateway_dedup_lease_lost_total").await,
        0.0
    );
    let again = status_of(app.post(sample_with_id("lease-1")).await).await;
    assert_eq!(again, (200, "duplicate".to_owned()));
}
