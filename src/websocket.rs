//! The gateway as Dataloy's WebSocket client: for each configured source it opens
//! `ws(s)://…/ws/rest/WebSocketObjectSubscription/…/{token}` (or `WebSocketAlertScript`), sends
//! the optional field selection, and takes every pushed message through the same
//! validate → dedup → spool path as a webhook. Dataloy resends nothing on this channel, so:
//! what the socket holds is read as one batch and made durable in one spool append (see `read`);
//! a message that cannot be stored yet is retried in place (the socket is not read meanwhile)
//! rather than dropped; and at a graceful stop the source sends Close and keeps reading and
//! storing until the server's Close arrives (or `server.shutdown_timeout` passes). Messages are
//! bounded by `server.max_body_bytes`. Reconnects with capped, jittered backoff after a close, an
//! error or a missed pong. The URL's token never reaches logs or metric labels.

mod read;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::config::WebSocketSourceSettings;
use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::{Metrics, Source};
use crate::telemetry::spans;
use crate::tls::{ClientTls, TlsError};
use crate::trace_context::TraceContext;
use read::{Batch, End, Socket};

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// How long sending a Close may take after a message over the limit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/health/ready` needs to know about a source.
#[derive(Clone)]
pub struct SourceHealth {
    pub name: String,
    pub connected: Arc<AtomicBool>,
    pub required_for_readiness: bool,
}

/// Server-wide settings a source follows.
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// `server.max_body_bytes`: the largest message (and frame) read.
    pub max_message_bytes: usize,
    /// `server.shutdown_timeout`: how long a stop may keep reading and storing.
    pub shutdown_timeout: Duration,
}

pub struct WebSocketSource {
    name: String,
    settings: WebSocketSourceSettings,
    /// For a `wss://` URL: the source's `tls` table (public roots when absent).
    tls: Option<ClientTls>,
    limits: SourceLimits,
    ingest: Arc<Ingest>,
    metrics: Metrics,
    connected: Arc<AtomicBool>,
    /// Set when the stop is first seen: reading and storing end by then.
    stop_deadline: OnceLock<Instant>,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Messages that were not stored when storing had to end.
struct Unstored(usize);

impl WebSocketSource {
    pub fn new(
        name: &str,
        settings: &WebSocketSourceSettings,
        limits: SourceLimits,
        ingest: Arc<Ingest>,
        metrics: Metrics,
    ) -> Result<Self, TlsError> {
        let tls = if settings.url.expose_secret().starts_with("wss://") {
            let tls_settings = settings.tls.clone().unwrap_or_default();
            Some(ClientTls::new(&tls_settings, &crate::tls::WEBSOCKET_KEYS)?)
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            settings: settings.clone(),
            tls,
            limits,
            ingest,
            metrics,
            connected: Arc::new(AtomicBool::new(false)),
            stop_deadline: OnceLock::new(),
        })
    }

    pub fn health(&self) -> SourceHealth {
        SourceHealth {
            name: self.name.clone(),
            connected: self.connected.clone(),
            required_for_readiness: self.settings.required_for_readiness,
        }
    }

    /// Connects, relays and reconnects until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.settings.reconnect_initial_backoff;
        loop {
            let started = Instant::now();
            let reason = match self.session(&mut shutdown).await {
                SessionEnd::Shutdown => {
                    self.set_connected(false);
                    return;
                }
                SessionEnd::Lost(reason) => reason,
            };
            self.set_connected(false);
            if started.elapsed() >= STABLE_SESSION {
                backoff = self.settings.reconnect_initial_backoff;
            }
            let wait = backoff + backoff.mul_f64(fastrand::f64() * 0.3);
            self.metrics.websocket_reconnect(&self.name);
            tracing::warn!(
                source = %self.name,
                url = %redact(self.settings.url.expose_secret()),
                reason = %reason,
                retry_in_ms = wait.as_millis() as u64,
                "WebSocket source disconnected; reconnecting"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max_backoff);
        }
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> SessionEnd {
        let url = self.settings.url.expose_secret();
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.limits.max_message_bytes))
            .max_frame_size(Some(self.limits.max_message_bytes));
        let connecting = self.connect(url, config);
        let mut socket = tokio::select! {
            connected = tokio::time::timeout(self.settings.connect_timeout, connecting) => match connected {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => return SessionEnd::Lost(format!("connect failed: {e}")),
                Err(_) => return SessionEnd::Lost("connect timed out".into()),
            },
            _ = shutdown.wait_for(|stop| *stop) => return SessionEnd::Shutdown,
        };
        if let Some(fields) = &self.settings.fields {
            if let Err(e) = socket.send(Message::Text(fields.clone().into())).await {
                return SessionEnd::Lost(format!(
                    "cannot send the field selection: {}",
                    describe(&e)
                ));
            }
        }
        self.set_connected(true);
        tracing::info!(source = %self.name, url = %redact(url), "WebSocket source connected");

        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.reset();
        let mut awaiting_pong: Option<Instant> = None;
        loop {
            // Checked here too: a stop seen while storing does not show as a change.
            if *shutdown.borrow() {
                return self.close_and_drain(&mut socket, shutdown).await;
            }
            let first = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return self.close_and_drain(&mut socket, shutdown).await;
                    }
                    continue;
                }
                _ = ping.tick() => {
                    if let Some(since) = awaiting_pong {
                        if since.elapsed() >= self.settings.pong_timeout {
                            return SessionEnd::Lost("no pong in time".into());
                        }
                    } else if let Err(e) = socket.send(Message::Ping(Bytes::new())).await {
                        return SessionEnd::Lost(format!("ping failed: {}", describe(&e)));
                    } else {
                        awaiting_pong = Some(Instant::now());
                    }
                    continue;
                }
                next = socket.next() => next,
            };
            let batch = Batch::read(first, &mut socket);
            if batch.heard {
                awaiting_pong = None;
            }
            if let Err(Unstored(lost)) = self.store(&batch.bodies, shutdown).await {
                self.report_lost(
                    lost,
                    "the stop deadline passed while they could not be stored",
                );
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
                return SessionEnd::Shutdown;
            }
            match batch.end {
                None => {}
                Some(End::Closed) => return SessionEnd::Lost("closed by the server".into()),
                Some(End::Lost(reason)) => return SessionEnd::Lost(reason),
                Some(End::TooLarge { size }) => {
                    self.refuse_too_large(&mut socket, size).await;
                    return SessionEnd::Lost("a message over server.max_body_bytes".into());
                }
            }
        }
    }

    /// Opens the WebSocket: for `wss://`, TCP and then the TLS handshake with the source's own
    /// configuration (CA, client certificate, server name), then the WebSocket handshake.
    /// Errors never hold the URL (its token).
    async fn connect(&self, url: &str, config: WebSocketConfig) -> Result<Socket, String> {
        let Some(tls) = &self.tls else {
            return tokio_tungstenite::connect_async_with_config(url, Some(config), false)
                .await
                .map(|(socket, _)| socket)
                .map_err(|e| describe(&e));
        };
        let request = url.into_client_request().map_err(|e| describe(&e))?;
        let host = request.uri().host().unwrap_or_default().to_owned();
        let port = request.uri().port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((
            host.trim_start_matches('[').trim_end_matches(']'),
            port,
        ))
        .await
        .map_err(|e| format!("TCP: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("TCP: {e}"))?;
        let stream = tls
            .connect(&host, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Rustls(stream),
            Some(config),
        )
        .await
        .map(|(socket, _)| socket)
        .map_err(|e| describe(&e))
    }

    /// The graceful stop: sends Close, then keeps reading and storing until the server's Close
    /// (everything Dataloy sent before it saw ours), bounded by `server.shutdown_timeout`.
    async fn close_and_drain(
        &self,
        socket: &mut Socket,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let deadline = self.stop_deadline();
        match tokio::time::timeout_at(deadline, socket.close(None)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(source = %self.name, error = %describe(&e), "cannot send Close at shutdown");
                return SessionEnd::Shutdown;
            }
            Err(_) => {
                tracing::warn!(source = %self.name, "Close not sent within server.shutdown_timeout");
                return SessionEnd::Shutdown;
            }
        }
        loop {
            let batch = match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(first) => Batch::read(first, socket),
                Err(_) => {
                    // Store what arrived already (one try); anything the server sends later is
                    // not read.
                    let mut batch = Batch::default();
                    batch.read_ready(socket);
                    let unstored = match self.store(&batch.bodies, shutdown).await {
                        Ok(()) => 0,
                        Err(Unstored(n)) => n,
                    };
                    self.report_lost(
                        unstored,
                        "the server's Close did not arrive within server.shutdown_timeout; \
                         messages it sends from now on are not read and may be lost",
                    );
                    return SessionEnd::Shutdown;
                }
            };
            if let Err(Unstored(lost)) = self.store(&batch.bodies, shutdown).await {
                self.report_lost(
                    lost,
                    "server.shutdown_timeout passed while they could not be stored",
                );
                return SessionEnd::Shutdown;
            }
            match batch.end {
                None => {}
                Some(End::Closed) => {
                    tracing::info!(source = %self.name, "WebSocket source closed; every message the server sent is stored");
                    return SessionEnd::Shutdown;
                }
                Some(End::Lost(reason)) => {
                    tracing::warn!(source = %self.name, reason = %reason, "WebSocket connection ended without the server's Close at shutdown; what it sent after that is lost");
                    return SessionEnd::Shutdown;
                }
                Some(End::TooLarge { size }) => {
                    self.refuse_too_large(socket, size).await;
                    self.report_lost(0, "a message over server.max_body_bytes arrived at shutdown; messages after it are not read and may be lost");
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Takes `bodies` through the pipeline in order, retrying those that cannot be stored yet;
    /// once the stop deadline passes, gives up and returns how many were not stored.
    async fn store(
        &self,
        bodies: &[Bytes],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unstored> {
        if bodies.is_empty() {
            return Ok(());
        }
        self.metrics.websocket_batch(&self.name, bodies.len());
        // Dataloy sends no trace context here: each message starts a trace (with a CONSUMER
        // span while spans are exported, ended when the message is stored or given up).
        let (message_spans, traces): (Vec<_>, Vec<_>) = bodies
            .iter()
            .map(|_| match spans::websocket_message(&self.name) {
                Some((span, trace)) => (Some(span), trace),
                None => (None, TraceContext::new_root()),
            })
            .unzip();
        let mut pending = bodies;
        let mut pending_traces = &traces[..];
        let mut backoff = self.settings.reconnect_initial_backoff;
        loop {
            let results = self
                .ingest
                .ingest_batch(pending, pending_traces, Source::WebSocket)
                .await;
            let done = bodies.len() - pending.len();
            let mut settled = 0;
            for (index, result) in results.iter().enumerate() {
                let label = match result {
                    Ok(Accepted::New(_)) => "accepted",
                    Ok(Accepted::Duplicate(_)) => "duplicate",
                    Err(IngestError::Invalid(_)) => "invalid",
                    Err(e) if e.is_permanent() => "refused",
                    Err(_) => "retried",
                };
                self.metrics.websocket_message(&self.name, label);
                if let (Some(Some(span)), "invalid" | "refused") =
                    (message_spans.get(done + index), label)
                {
                    spans::record_error(span, label);
                }
                if label != "retried" {
                    settled += 1;
                }
            }
            let settled = settled.min(pending.len());
            pending = &pending[settled..];
            pending_traces = &pending_traces[settled..];
            if pending.is_empty() {
                return Ok(());
            }
            let stopping = self.stopping(shutdown);
            let wait = match stopping {
                None => backoff,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        for span in message_spans[bodies.len() - pending.len()..]
                            .iter()
                            .flatten()
                        {
                            spans::record_error(span, "lost");
                        }
                        return Err(Unstored(pending.len()));
                    }
                    backoff.min(left)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A stop during a long backoff: go on retrying, now against its deadline.
                _ = shutdown.wait_for(|stop| *stop), if stopping.is_none() => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max_backoff);
        }
    }

    /// Refuses a message over `server.max_body_bytes`: counted and logged, and the connection is
    /// closed (code 1009) since the rest of the stream cannot be read past it.
    async fn refuse_too_large(&self, socket: &mut Socket, size: usize) {
        self.metrics.websocket_message(&self.name, "too_large");
        tracing::error!(
            source = %self.name,
            size,
            max = self.limits.max_message_bytes,
            "WebSocket message over server.max_body_bytes refused; reconnecting (messages the \
             server sent after it on this connection are lost)"
        );
        let close = CloseFrame {
            code: CloseCode::Size,
            reason: "message over the gateway's size limit".into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(Some(close))).await;
    }

    fn report_lost(&self, lost: usize, why: &str) {
        self.metrics
            .websocket_messages_by(&self.name, "lost", lost as u64);
        if lost == 0 {
            tracing::warn!(source = %self.name, lost, "WebSocket source stopped: {why}");
        } else {
            tracing::error!(source = %self.name, lost, "WebSocket messages received but not stored: {why}");
        }
    }

    /// The stop deadline, once a stop was requested.
    fn stopping(&self, shutdown: &watch::Receiver<bool>) -> Option<Instant> {
        (*shutdown.borrow()).then(|| self.stop_deadline())
    }

    fn stop_deadline(&self) -> Instant {
        *self
            .stop_deadline
            .get_or_init(|| Instant::now() + self.limits.shutdown_timeout)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.metrics.websocket_connected(&self.name, connected);
    }
}

/// Error text without the request URL (which holds the token).
fn describe(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Http(response) => format!("HTTP {}", response.status()),
        Error::Url(_) => "invalid URL".into(),
        other => other.to_string(),
    }
}

/// The URL with credentials, the last path segment (Dataloy's token) and the query removed.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let mut segments: Vec<&str> = path.split('/').collect();
    if let Some(last) = segments.iter_mut().rev().find(|s| !s.is_empty()) {
        *last = "***";
    }
    format!("{scheme}://{host}/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn the_token_and_credentials_are_redacted() {
        assert_eq!(
            redact("wss://user:pw@dataloy.example/ws/rest/WebSocketObjectSubscription/PortCall/U/42/s3cr3t?x=1"),
            "wss://dataloy.example/ws/rest/WebSocketObjectSubscription/PortCall/U/42/***"
        );
        assert_eq!(
            redact("ws://h:8080/ws/rest/WebSocketAlertScript/BUP/tok/"),
            "ws://h:8080/ws/rest/WebSocketAlertScript/BUP/***/"
        );
    }
}
