//! The RabbitMQ sink over `amqps://`: the machine's broker behind a TLS front whose certificate
//! a CA made by the test issued. Publishes are confirmed over TLS, a certificate from another
//! CA is refused (with the reason in the error), and a front that asks for client certificates
//! sees the configured one.

use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::config::{RabbitMqSinkSettings, TlsSettings};
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::sink::{RabbitMqSink, Sink, SinkError};
use secrecy::SecretString;

use crate::helpers::*;
use crate::rabbitmq::rabbitmq_settings;
use crate::rabbitmq_broker::*;
use crate::tls_support::*;

const BROKER: &str = "127.0.0.1:5672";

fn amqps_settings(exchange: &str, front: &TlsFront, tls: TlsSettings) -> RabbitMqSinkSettings {
    RabbitMqSinkSettings {
        uri: SecretString::from(format!("amqps://guest:guest@localhost:{}/%2f", front.port)),
        connect_timeout: Duration::from_secs(5),
        tls: Some(tls),
        ..rabbitmq_settings(exchange)
    }
}

fn notification(id: &str) -> Notification {
    let body = Bytes::from(sample_with_id(id));
    Notification::new(Envelope::parse(&body).unwrap(), body)
}

#[tokio::test]
async fn notifications_are_published_with_confirms_over_amqps_to_a_broker_with_a_company_ca() {
    // Arrange
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Broker CA");
    let server = ca.server(pki.path(), "rabbit", &["localhost"]);
    let front = TlsFront::start(BROKER.parse().unwrap(), server_config(&server, None)).await;
    let exchange = unique("x-amqps");
    let queue = bind_queue(&exchange, "PortCall.*").await;
    let tls = TlsSettings {
        ca_file: Some(ca.write(pki.path(), "ca.pem")),
        ..TlsSettings::default()
    };
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(amqps_settings(&exchange, &front, tls.clone()));
    })
    .await;

    // Act
    let ids: Vec<String> = (0..5).map(|i| format!("amqps-{i}")).collect();
    for id in &ids {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    // Assert: delivered once each, in order, through the TLS front.
    let got = drain(&queue, ids.len(), Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ids);
    assert_eq!(
        app.metric("dataloy_gateway_sink_up{sink=\"rabbitmq\"}")
            .await,
        1.0
    );
    assert!(front.failures().is_empty(), "{:?}", front.failures());
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused_and_nothing_is_sent() {
    // Arrange: the front's certificate is from a CA the gateway was not given.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Broker CA");
    let server = ca.server(pki.path(), "rabbit", &["localhost"]);
    let front = TlsFront::start(BROKER.parse().unwrap(), server_config(&server, None)).await;
    let other = TestCa::new("Not The Broker's CA");
    let exchange = unique("x-amqps-wrong");
    let queue = bind_queue(&exchange, "#").await;
    let settings = amqps_settings(
        &exchange,
        &front,
        TlsSettings {
            ca_file: Some(other.write(pki.path(), "other.pem")),
            ..TlsSettings::default()
        },
    );
    let sink = RabbitMqSink::new(&settings, Metrics::new()).unwrap();

    // Act
    let error = sink
        .publish(&[notification("wrong-ca-1")])
        .await
        .unwrap_err();

    // Assert
    assert_eq!(error.confirmed, 0);
    let SinkError::Unavailable(reason) = &error.source else {
        panic!("{:?}", error.source);
    };
    assert!(reason.contains("invalid peer certificate"), "{reason}");
    assert!(!reason.contains("guest:guest"), "{reason}");
    assert!(!sink.is_up());
    assert!(drain(&queue, 1, Duration::from_secs(2)).await.is_empty());
}

#[tokio::test]
async fn a_broker_that_asks_for_client_certificates_gets_the_configured_one() {
    // Arrange: the front requires a client certificate from the company CA.
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Company CA");
    let server = ca.server(pki.path(), "rabbit", &["localhost"]);
    let client = ca.client(pki.path(), "gateway", "gateway.dataloy.internal");
    let front = TlsFront::start(BROKER.parse().unwrap(), server_config(&server, Some(&ca))).await;
    let exchange = unique("x-amqps-mtls");
    let queue = bind_queue(&exchange, "PortCall.*").await;
    let ca_file = ca.write(pki.path(), "ca.pem");
    let anonymous = RabbitMqSink::new(
        &amqps_settings(
            &exchange,
            &front,
            TlsSettings {
                ca_file: Some(ca_file.clone()),
                ..TlsSettings::default()
            },
        ),
        Metrics::new(),
    )
    .unwrap();
    let identified = RabbitMqSink::new(
        &amqps_settings(
            &exchange,
            &front,
            TlsSettings {
                ca_file: Some(ca_file),
                cert_file: Some(client.cert_file.clone()),
                key_file: Some(client.key_file.clone()),
                ..TlsSettings::default()
            },
        ),
        Metrics::new(),
    )
    .unwrap();

    // Act
    let refused = anonymous.publish(&[notification("mtls-anon")]).await;
    let published = identified.publish(&[notification("mtls-1")]).await;

    // Assert
    assert!(
        refused.is_err(),
        "a gateway without a client certificate is refused"
    );
    assert!(published.is_ok(), "{:?}", published.err().map(|e| e.source));
    assert!(
        front
            .subjects()
            .iter()
            .any(|s| s.contains("gateway.dataloy.internal")),
        "{:?}",
        front.subjects()
    );
    let got = drain(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ["mtls-1"]);
    anonymous.close(Duration::from_secs(1)).await;
    identified.close(Duration::from_secs(1)).await;
}
