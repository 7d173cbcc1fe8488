//! The gateway as Dataloy's WebSocket client: for each configured source it opens
//! `ws(s)://…/ws/rest/WebSocketObjectSubscription/…/{token}` (or `WebSocketAlertScript`), sends
//! the optional field selection, and takes every pushed message through the same
//! validate → dedup → spool path as a webhook. Dataloy resends nothing on this channel, so a
//! message that cannot be stored yet is retried in place (the socket is not read meanwhile)
//! rather than dropped. Reconnects with capped, jittered backoff after a close, an error or a
//! missed pong. The URL's token never reaches logs or metric labels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::config::WebSocketSourceSettings;
use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::{Metrics, Source};

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// What `/health/ready` needs to know about a source.
#[derive(Clone)]
pub struct SourceHealth {
    pub name: String,
    pub connected: Arc<AtomicBool>,
    pub required_for_readiness: bool,
}

pub struct WebSocketSource {
    name: String,
    settings: WebSocketSourceSettings,
    ingest: Arc<Ingest>,
    metrics: Metrics,
    connected: Arc<AtomicBool>,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl WebSocketSource {
    pub fn new(
        name: &str,
        settings: &WebSocketSourceSettings,
        ingest: Arc<Ingest>,
        metrics: Metrics,
    ) -> Self {
        Self {
            name: name.to_owned(),
            settings: settings.clone(),
            ingest,
            metrics,
            connected: Arc::new(AtomicBool::new(false)),
        }
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
                SessionEnd::Shutdown => return,
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
        let connecting = tokio_tungstenite::connect_async(url);
        let mut socket = tokio::select! {
            connected = tokio::time::timeout(self.settings.connect_timeout, connecting) => match connected {
                Ok(Ok((socket, _))) => socket,
                Ok(Err(e)) => return SessionEnd::Lost(format!("connect failed: {}", describe(&e))),
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
            let pushed = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        let _ = socket.close(None).await;
                        return SessionEnd::Shutdown;
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
                message = socket.next() => match message {
                    None => return SessionEnd::Lost("connection closed".into()),
                    Some(Err(e)) => return SessionEnd::Lost(describe(&e)),
                    Some(Ok(Message::Close(_))) => return SessionEnd::Lost("closed by the server".into()),
                    Some(Ok(Message::Text(text))) => Some(Bytes::from(text)),
                    Some(Ok(Message::Binary(bytes))) => Some(bytes),
                    // Pong, or a ping (answered by the library): the peer is alive.
                    Some(Ok(_)) => None,
                },
            };
            awaiting_pong = None;
            if let Some(body) = pushed {
                if self.deliver(body, shutdown).await.is_err() {
                    let _ = socket.close(None).await;
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Takes one message through the pipeline, retrying while it cannot be stored; `Err` only
    /// when shutdown interrupts the retries.
    async fn deliver(&self, body: Bytes, shutdown: &mut watch::Receiver<bool>) -> Result<(), ()> {
        let mut backoff = self.settings.reconnect_initial_backoff;
        loop {
            let outcome = self.ingest.ingest(body.clone(), Source::WebSocket).await;
            let label = match &outcome {
                Ok(Accepted::New(_)) => "accepted",
                Ok(Accepted::Duplicate(_)) => "duplicate",
                Err(IngestError::Invalid(_)) => "invalid",
                Err(_) => "retried",
            };
            self.metrics.websocket_message(&self.name, label);
            if label != "retried" {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    tracing::error!(source = %self.name, "shutdown while a WebSocket message could not be stored; it is lost");
                    return Err(());
                }
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max_backoff);
        }
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
