//! The WebSocket source over `wss://` against an in-test Dataloy whose certificate a CA made by
//! the test issued: trusted through the source's `tls.ca_file` (and `server_name` when the URL
//! names the host by address), refused without it.

use std::sync::Arc;
use std::time::Duration;

use dataloy_gateway::config::{TlsSettings, WebSocketSourceSettings};
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::tls_support::*;
use crate::websocket::text;

/// A `wss://` Dataloy: on every connection, pushes `messages` and stays connected.
async fn wss_dataloy(config: rustls::ServerConfig, messages: Vec<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, messages) = (acceptor.clone(), messages.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut socket) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                for message in messages {
                    if socket.send(Message::Text(message.into())).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(_)) = socket.next().await {}
            });
        }
    });
    port
}

fn wss_source(host: &str, port: u16, tls: TlsSettings) -> WebSocketSourceSettings {
    WebSocketSourceSettings {
        url: SecretString::from(format!(
            "wss://{host}:{port}/ws/rest/WebSocketObjectSubscription/PortCall/U/244070007/tok-3141"
        )),
        reconnect_initial_backoff: Duration::from_millis(50),
        reconnect_max_backoff: Duration::from_millis(200),
        tls: Some(tls),
        ..WebSocketSourceSettings::default()
    }
}

#[tokio::test]
async fn pushed_notifications_arrive_over_wss_from_a_server_with_a_company_ca() {
    // Arrange
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Dataloy Test CA");
    let server = ca.server(pki.path(), "dataloy", &["localhost"]);
    let port = wss_dataloy(
        server_config(&server, None),
        vec![text("wss-1"), text("wss-2")],
    )
    .await;
    let tls = TlsSettings {
        ca_file: Some(ca.write(pki.path(), "ca.pem")),
        ..TlsSettings::default()
    };

    // Act
    let app = spawn_app_with(|s, _| {
        s.sources
            .websocket
            .insert("dataloy".into(), wss_source("localhost", port, tls.clone()));
    })
    .await;

    // Assert
    let events = app.wait_for_events(2).await;
    assert_eq!(ids_of(&events), ["wss-1", "wss-2"]);
    assert_eq!(
        app.metric("dataloy_gateway_websocket_connected{source=\"dataloy\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_server_name_override_checks_the_certificate_against_that_name_when_the_url_has_an_address(
) {
    // Arrange: the certificate names only `dataloy.test`; the URL uses 127.0.0.1.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Dataloy Test CA");
    let server = ca.server(pki.path(), "dataloy", &["dataloy.test"]);
    let port = wss_dataloy(server_config(&server, None), vec![text("named-ws-1")]).await;
    let ca_file = ca.write(pki.path(), "ca.pem");

    // Act
    let app = spawn_app_with(|s, _| {
        let without = TlsSettings {
            ca_file: Some(ca_file.clone()),
            ..TlsSettings::default()
        };
        let with = TlsSettings {
            server_name: Some("dataloy.test".into()),
            ..without.clone()
        };
        s.sources
            .websocket
            .insert("by-address".into(), wss_source("127.0.0.1", port, without));
        s.sources
            .websocket
            .insert("by-name".into(), wss_source("127.0.0.1", port, with));
    })
    .await;

    // Assert: the source with the override connects and stores; the other keeps retrying.
    let events = app.wait_for_events(1).await;
    assert_eq!(ids_of(&events), ["named-ws-1"]);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_websocket_reconnects_total{source=\"by-address\"}")
                .await
                >= 2.0
        })
        .await
    );
    assert_eq!(
        app.metric("dataloy_gateway_websocket_connected{source=\"by-address\"}")
            .await,
        0.0
    );
    assert_eq!(
        app.metric("dataloy_gateway_websocket_connected{source=\"by-name\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_wss_server_whose_ca_is_not_trusted_is_never_read() {
    // Arrange: no ca_file: only the public roots, which did not issue the test certificate.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Unknown CA");
    let server = ca.server(pki.path(), "dataloy", &["localhost"]);
    let port = wss_dataloy(server_config(&server, None), vec![text("untrusted-1")]).await;

    // Act
    let app = spawn_app_with(|s, _| {
        s.sources.websocket.insert(
            "dataloy".into(),
            wss_source("localhost", port, TlsSettings::default()),
        );
    })
    .await;

    // Assert
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_websocket_reconnects_total{source=\"dataloy\"}")
                .await
                >= 3.0
        })
        .await
    );
    assert!(read_events(&app.events_path).is_empty());
}
