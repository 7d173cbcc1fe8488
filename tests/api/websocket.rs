//! The WebSocket source against an in-test server that acts as Dataloy: it receives the field
//! selection, pushes notifications, drops the connection; the gateway reconnects and relays
//! every message once.

use std::time::Duration;

use dataloy_gateway::config::WebSocketSourceSettings;
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const TOKEN: &str = "s3cr3t-token";
const FIELDS: &str = r#"{"fields":["key","self"]}"#;
/// In a script: stop reading and answering for a long time.
const STALL: &str = "stall";

/// What the fake Dataloy saw on one connection: the request path and the first client message.
#[derive(Debug)]
pub(crate) struct Seen {
    path: String,
    first_message: String,
}

// The handshake callback's Result type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
/// Serves connections one after another; connection `n` pushes `scripts[n]` and then either
/// drops the connection (all but the last) or stays open.
pub(crate) async fn fake_dataloy(
    scripts: Vec<Vec<String>>,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let last = scripts.len() - 1;
        for (n, script) in scripts.into_iter().enumerate() {
            let (stream, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            // Each connection on its own task, so a stalled one does not block the next accept.
            tokio::spawn(async move {
                let mut path = String::new();
                let accepting = tokio_tungstenite::accept_hdr_async(
                    stream,
                    |request: &Request, response: Response| {
                        path = request.uri().path().to_owned();
                        Ok(response)
                    },
                );
                let mut socket = accepting.await.unwrap();
                let first_message = match socket.next().await {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    other => format!("{other:?}"),
                };
                let _ = seen_tx.send(Seen {
                    path,
                    first_message,
                });
                for message in script {
                    if message == STALL {
                        // Neither read nor answer pings: a peer that hangs.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    if socket.send(Message::Text(message.into())).await.is_err() {
                        return;
                    }
                }
                if n == last {
                    // Stay connected (answering pings) until the gateway goes away.
                    while let Some(Ok(_)) = socket.next().await {}
                }
                // Otherwise an abrupt drop, no close frame.
            });
        }
    });
    (port, seen_rx)
}

pub(crate) fn text(id: &str) -> String {
    String::from_utf8(sample_with_id(id)).unwrap()
}

pub(crate) fn source(port: u16) -> WebSocketSourceSettings {
    WebSocketSourceSettings {
        url: SecretString::from(format!(
            "ws://127.0.0.1:{port}/ws/rest/WebSocketObjectSubscription/PortCall/U/244070007/{TOKEN}"
        )),
        fields: Some(FIELDS.to_owned()),
        reconnect_initial_backoff: Duration::from_millis(50),
        reconnect_max_backoff: Duration::from_millis(200),
        ..WebSocketSourceSettings::default()
    }
}

#[tokio::test]
async fn pushed_notifications_are_relayed_once_across_a_dropped_connection() {
    // Arrange: Dataloy pushes two notifications and an invalid message, drops the connection,
    // then (after the reconnect) resends one and pushes two more.
    let (port, mut seen) = fake_dataloy(vec![
        vec![text("ws-1"), text("ws-2"), r#"{"id":1}"#.to_owned()],
        vec![text("ws-2"), text("ws-3"), text("ws-4")],
    ])
    .await;

    // Act
    let app = spawn_app_with(|s, _| {
        s.sources.websocket.insert("dataloy".into(), source(port));
    })
    .await;

    // Assert
    let events = app.wait_for_events(4).await;
    assert_eq!(ids_of(&events), ["ws-1", "ws-2", "ws-3", "ws-4"]);
    for _ in 0..2 {
        let connection = seen.recv().await.unwrap();
        assert_eq!(
            connection.first_message, FIELDS,
            "field selection sent on every connect"
        );
        assert!(connection.path.ends_with(TOKEN), "{}", connection.path);
    }
    let metric = |name: &str| {
        let app = &app;
        let name = name.to_owned();
        async move { app.metric(&name).await }
    };
    // The outcome is counted just after the spool append; the file write comes later, but wait.
    assert!(
        eventually(|| async {
            app.metric(
                "dataloy_gateway_websocket_messages_total{outcome=\"accepted\",source=\"dataloy\"}",
            )
            .await
                == 4.0
        })
        .await
    );
    assert!(metric("dataloy_gateway_websocket_reconnects_total{source=\"dataloy\"}").await >= 1.0);
    assert_eq!(
        metric("dataloy_gateway_websocket_messages_total{outcome=\"accepted\",source=\"dataloy\"}")
            .await,
        4.0
    );
    assert_eq!(
        metric(
            "dataloy_gateway_websocket_messages_total{outcome=\"duplicate\",source=\"dataloy\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric("dataloy_gateway_websocket_messages_total{outcome=\"invalid\",source=\"dataloy\"}")
            .await,
        1.0
    );
    assert_eq!(
        metric("dataloy_gateway_websocket_connected{source=\"dataloy\"}").await,
        1.0
    );
    assert!(
        !app.metrics().await.contains(TOKEN),
        "the token never reaches the metrics"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_reconnected() {
    let (port, _seen) = fake_dataloy(vec![vec![STALL.to_owned()], vec![text("after-stall")]]).await;

    let app = spawn_app_with(|s, _| {
        let mut settings = source(port);
        settings.ping_interval = Duration::from_millis(100);
        settings.pong_timeout = Duration::from_millis(300);
        s.sources.websocket.insert("dataloy".into(), settings);
    })
    .await;

    assert_eq!(ids_of(&app.wait_for_events(1).await), ["after-stall"]);
    assert!(
        app.metric("dataloy_gateway_websocket_reconnects_total{source=\"dataloy\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn readiness_can_require_a_connected_source() {
    let closed_port = free_port();
    let app = spawn_app_with(|s, _| {
        let mut settings = source(closed_port);
        settings.required_for_readiness = true;
        s.sources.websocket.insert("required".into(), settings);
    })
    .await;

    let response = app
        .client
        .get(format!("{}/health/ready", app.admin_address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["source:required"], "disconnected");
}

#[test]
fn websocket_configuration_errors_name_the_key() {
    let cases = [
        (
            "sources.websocket.url",
            "[sources.websocket.d]\nurl = \"http://x/ws\"\n",
        ),
        (
            "sources.websocket.fields",
            "[sources.websocket.d]\nurl = \"ws://x/ws/t\"\nfields = \"[1\"\n",
        ),
        (
            "sources.websocket",
            "[sources.websocket.\"bad name\"]\nurl = \"ws://x/ws/t\"\n",
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
