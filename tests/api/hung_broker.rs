//! Brokers that hang instead of failing (issue 20 #3): one that accepts TCP and never answers,
//! and the shared RabbitMQ frozen mid-connection behind an in-test proxy that stops forwarding.
//! The real binary must still exit within `server.shutdown_timeout` (plus a few seconds) after
//! SIGTERM, keep what was not confirmed in the spool, and not report a stalled sink as up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway_process::*;
use crate::helpers::*;
use crate::rabbitmq_broker::*;

const SHUTDOWN_TIMEOUT_S: u64 = 2;
/// What the shutdown may take past `server.shutdown_timeout`: the interrupted relay's cursor
/// store, the sinks' bounded close, the admin listener.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(8);

/// Accepts connections and never answers (nor reads); its address.
async fn silent_listener() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    address
}

/// A TCP proxy in front of the shared RabbitMQ that, once frozen, forwards nothing more in
/// either direction (and stops reading) while keeping every connection open.
struct FreezingProxy {
    address: String,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        let _held = client;
                        return std::future::pending::<()>().await;
                    }
                    let upstream = TcpStream::connect("127.0.0.1:5672").await.unwrap();
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::join!(
                        forward(client_read, upstream_write, flag.clone()),
                        forward(upstream_read, client_write, flag),
                    );
                });
            }
        });
        Self { address, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Hold both halves open; read and send nothing more.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn write_config(dir: &Path, broker: &str, exchange: &str, rabbitmq_extra: &str) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
shutdown_timeout = "{SHUTDOWN_TIMEOUT_S}s"
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
[relay]
retry_initial_backoff = "50ms"
retry_max_backoff = "500ms"
[sinks.rabbitmq]
uri = "amqp://guest:guest@{broker}/%2f"
exchange = "{exchange}"
health_interval = "200ms"
{rabbitmq_extra}
[log]
format = "json"
"#,
        spool = dir.join("spool").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn sigterm_exits_within_bound(gateway: &mut GatewayProcess) {
    gateway.signal("TERM");
    let limit = Duration::from_secs(SHUTDOWN_TIMEOUT_S) + SHUTDOWN_MARGIN;
    let Some((status, took)) = gateway.wait_exit(limit).await else {
        panic!(
            "still running {limit:?} after SIGTERM (server.shutdown_timeout = {SHUTDOWN_TIMEOUT_S}s):\n{}",
            gateway.log_text()
        );
    };
    assert_eq!(status.code(), Some(0), "{}", gateway.log_text());
    eprintln!("exited {took:?} after SIGTERM");
}

#[tokio::test]
async fn a_broker_that_never_answers_does_not_hold_shutdown() {
    // Arrange: connecting may take the default 10 s, longer than the shutdown timeout.
    let dir = tempfile::tempdir().unwrap();
    let broker = silent_listener().await;
    let config = write_config(dir.path(), &broker, &unique("x-silent"), "");
    let client = reqwest::Client::new();
    let mut gateway = start_gateway(&config);
    for i in 0..3 {
        let id = format!("silent-{i}");
        assert_eq!(gateway.post(&client, sample_with_id(&id)).await, Some(200));
    }
    let metrics = gateway.metrics(&client).await;
    assert_eq!(
        metric_value(&metrics, "dataloy_gateway_sink_up{sink=\"rabbitmq\"}"),
        0.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act + Assert
    sigterm_exits_within_bound(&mut gateway).await;
}

#[tokio::test]
async fn a_broker_frozen_mid_connection_does_not_hold_shutdown_and_keeps_the_unconfirmed() {
    // Arrange: a working path through the proxy, and a confirm timeout far past the shutdown's.
    let dir = tempfile::tempdir().unwrap();
    let proxy = FreezingProxy::start().await;
    let exchange = unique("x-frozen");
    let queue = bind_queue(&exchange, "#").await;
    let slow = "confirm_timeout = \"60s\"";
    let config = write_config(dir.path(), &proxy.address, &exchange, slow);
    let client = reqwest::Client::new();
    let mut gateway = start_gateway(&config);
    assert_eq!(
        gateway.post(&client, sample_with_id("frozen-0")).await,
        Some(200)
    );
    assert_eq!(drain(&queue, 1, Duration::from_secs(20)).await.len(), 1);

    // Act: freeze, accept more (a publish is now waiting for confirms), SIGTERM.
    proxy.freeze();
    let ids: Vec<String> = (1..=5).map(|i| format!("frozen-{i}")).collect();
    for id in &ids {
        assert_eq!(gateway.post(&client, sample_with_id(id)).await, Some(200));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm_exits_within_bound(&mut gateway).await;

    // Assert: what the frozen broker never confirmed is relayed after a restart on a direct path.
    let config = write_config(dir.path(), "127.0.0.1:5672", &exchange, "");
    let restarted = start_gateway(&config);
    let delivered: Vec<String> = drain(&queue, ids.len(), Duration::from_secs(30))
        .await
        .iter()
        .map(message_id)
        .collect();
    for id in &ids {
        assert!(delivered.contains(id), "{id} lost: {delivered:?}");
    }
    drop(restarted);
}

#[tokio::test]
async fn a_publish_stalled_past_the_confirm_timeout_makes_the_sink_down() {
    // Arrange: bodies large enough that the frozen connection's buffers fill and the publish
    // itself blocks, before any confirm is awaited.
    let proxy = FreezingProxy::start().await;
    let exchange = unique("x-stalled");
    let _queue = bind_queue(&exchange, "#").await;
    let app = spawn_app_with(|s, _| {
        let mut rabbitmq = crate::rabbitmq::rabbitmq_settings(&exchange);
        rabbitmq.uri = format!("amqp://guest:guest@{}/%2f", proxy.address).into();
        rabbitmq.confirm_timeout = Duration::from_secs(1);
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(rabbitmq);
        s.server.max_body_bytes = dataloy_gateway::config::ByteSize(1 << 20);
    })
    .await;
    let up = "dataloy_gateway_sink_up{sink=\"rabbitmq\"}";
    assert!(eventually(|| async { app.metric(up).await == 1.0 }).await);

    // Act
    proxy.freeze();
    let padding = "x".repeat(900 * 1024);
    for i in 0..12 {
        let body = minimal(&format!("stalled-{i}")).replacen(
            "\"resource\":{",
            &format!("\"resource\":{{\"pad\":\"{padding}\","),
            1,
        );
        assert_eq!(app.post(body).await.status(), 200);
    }

    // Assert: down once the publish has been pending past the confirm timeout, and stays down.
    assert!(eventually(|| async { app.metric(up).await == 0.0 }).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.metric(up).await, 0.0);
}
