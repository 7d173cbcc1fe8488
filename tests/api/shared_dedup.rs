//! Redis dedup in the running gateway: replicas sharing Redis publish each notification once,
//! a Redis outage answers 503 (or falls back to memory when configured so), and the gateway
//! reconnects by itself when Redis returns.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dataloy_gateway::config::{DedupBackend, OnBackendError, Settings};
use serde_json::Value;

use crate::helpers::*;

pub fn with_redis(settings: &mut Settings, url: &str, prefix: &str) {
    settings.dedup.backend = DedupBackend::Redis;
    settings.dedup.redis_url = url.into();
    settings.dedup.redis_key_prefix = prefix.to_owned();
    settings.dedup.redis_timeout = Duration::from_millis(300);
}

/// A redis-server of the test's own, which it can stop and start.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with extra command-line settings, e.g. `["--maxmemory", "10mb"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn status_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let label = body["status"]
        .as_str()
        .or(body["error"]["code"].as_str())
        .unwrap_or_default()
        .to_owned();
    (status, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_publish_each_notification_once() {
    // Arrange: two gateways, as behind a load balancer, with one Redis.
    let prefix = format!("{}:", unique("replicas"));
    let first = spawn_app_with(|s, _| with_redis(s, "redis://127.0.0.1:6379", &prefix)).await;
    let second = spawn_app_with(|s, _| with_redis(s, "redis://127.0.0.1:6379", &prefix)).await;
    let ids: Vec<String> = (0..40).map(|i| format!("rep-{i}")).collect();

    // Act: every notification to both at once.
    for id in &ids {
        let (a, b) = tokio::join!(
            first.post(sample_with_id(id)),
            second.post(sample_with_id(id))
        );
        let mut outcomes = vec![status_of(a).await, status_of(b).await];
        outcomes.sort();

        assert_eq!(
            outcomes,
            [(200, "accepted".to_owned()), (200, "duplicate".to_owned())],
            "{id}"
        );
    }

    // Assert: the union of both replicas' output holds each id once.
    first.post(minimal("end-a").into_bytes()).await;
    second.post(minimal("end-b").into_bytes()).await;
    let total = ids.len() + 2;
    assert!(
        eventually(|| async {
            read_events(&first.events_path).len() + read_events(&second.events_path).len() == total
        })
        .await
    );
    let mut delivered = ids_of(&read_events(&first.events_path));
    delivered.extend(ids_of(&read_events(&second.events_path)));
    delivered.sort();
    let mut expected = ids.clone();
    expected.extend(["end-a".to_owned(), "end-b".to_owned()]);
    expected.sort();
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn redis_down_answers_503_and_the_gateway_reconnects_when_it_returns() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(|s, _| with_redis(s, &url, "gw:")).await;
    assert_eq!(app.post(sample_with_id("rd-1")).await.status(), 200);

    redis.stop();
    let refused = app.post(sample_with_id("rd-2")).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let (_, code) = status_of(refused).await;
    assert_eq!(code, "unavailable");
    assert!(
        app.metric("dataloy_gateway_dedup_errors_total{backend=\"redis\",operation=\"claim\"}")
            .await
            >= 1.0
    );

    redis.restart();
    let mut accepted = false;
    for _ in 0..100 {
        if app.post(sample_with_id("rd-2")).await.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "reconnected to Redis by itself");
    assert_eq!(ids_of(&app.wait_for_events(2).await), ["rd-1", "rd-2"]);
}

#[tokio::test]
async fn with_fallback_configured_redis_down_falls_back_to_memory_dedup() {
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let app = spawn_app_with(|s, _| {
        with_redis(s, &closed, "gw:");
        s.dedup.on_backend_error = OnBackendError::FallbackMemory;
    })
    .await;

    let first = status_of(app.post(sample_with_id("fb-1")).await).await;
    let retry = status_of(app.post(sample_with_id("fb-1")).await).await;

    assert_eq!(first, (200, "accepted".to_owned()));
    assert_eq!(retry, (200, "duplicate".to_owned()));
    // The retry is answered from memory, where the first copy was recorded.
    assert!(app.metric("dataloy_gateway_dedup_fallback_total").await >= 1.0);
    assert_eq!(ids_of(&app.wait_for_events(1).await), ["fb-1"]);
}

#[test]
fn redis_configuration_errors_name_the_key() {
    let cases = [
        (
            "dedup.redis_url",
            "[dedup]\nbackend = \"redis\"\nredis_url = \"http://nope\"\n",
        ),
        (
            "dedup.redis_timeout",
            "[dedup]\nbackend = \"redis\"\nredis_timeout = \"0s\"\n",
        ),
        (
            "on_backend_error",
            "[dedup]\non_backend_error = \"shrug\"\n",
        ),
    ];
    for (key, text) in cases {
        let error = config_error(&format!("{text}[sinks.file]\npath = \"x.jsonl\"\n"));
        assert!(
            error.contains(key),
            "error for `{key}` does not name it: {error}"
        );
    }
}
