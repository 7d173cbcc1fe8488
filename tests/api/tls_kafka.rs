//! The Kafka sink over TLS, configured as the README shows (`security.protocol = "SSL"`,
//! `ssl.ca.location`): a Kafka-protocol broker of the test's own behind a TLS front, advertising
//! the front's address (clients must be told the TLS port, or they would go around it). The
//! brokers' certificate comes from a CA made by the test; a gateway given another CA publishes
//! nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use dataloy_gateway::config::KafkaSinkSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::helpers::*;
use crate::kafka::kafka_settings;
use crate::kafka_broker::*;
use crate::tls_support::*;

/// A broker reachable only over TLS at `localhost:{front.port}`.
struct TlsKafka {
    broker: OwnBroker,
    front: TlsFront,
}

impl TlsKafka {
    async fn start(dir: &Path, server: &Issued) -> TlsKafka {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_port = listener.local_addr().unwrap().port();
        let broker = OwnBroker::start_advertising(dir, Some(format!("tcp://localhost:{tls_port}")));
        let front = TlsFront::start_on(
            listener,
            broker.address().parse().unwrap(),
            server_config(server, None),
        );
        TlsKafka { broker, front }
    }

    fn bootstrap(&self) -> String {
        format!("localhost:{}", self.front.port)
    }
}

fn ssl(ca_file: &Path) -> BTreeMap<String, SecretString> {
    BTreeMap::from([
        ("security.protocol".to_owned(), SecretString::from("SSL")),
        (
            "ssl.ca.location".to_owned(),
            SecretString::from(ca_file.display().to_string()),
        ),
    ])
}

fn client(brokers: &str, ca_file: &Path) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca_file.display().to_string());
    config
}

async fn create_topic_over_tls(brokers: &str, ca_file: &Path, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client(brokers, ca_file).create().unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics answered over TLS")
    {
        result.expect("topic created");
    }
}

/// Reads `topic` over TLS until `expected` messages arrived or `timeout` passed.
async fn consume_over_tls(
    brokers: &str,
    ca_file: &Path,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let mut config = client(brokers, ca_file);
    config
        .set("group.id", unique("tls-consumer"))
        .set("enable.auto.commit", "false");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        while Instant::now() < deadline && messages.len() < expected {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                messages.push(message.detach());
            }
        }
        messages
    })
    .await
    .unwrap()
}

fn kafka_over_tls(kafka: &TlsKafka, prefix: &str, ca_file: &Path) -> KafkaSinkSettings {
    KafkaSinkSettings {
        properties: ssl(ca_file),
        ..kafka_settings(&kafka.bootstrap(), prefix)
    }
}

#[tokio::test]
async fn notifications_reach_a_broker_over_ssl_with_the_ca_in_ssl_ca_location() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Kafka CA");
    let server = ca.server(dir.path(), "kafka", &["localhost"]);
    let ca_file = ca.write(dir.path(), "kafka-ca.pem");
    let kafka = TlsKafka::start(dir.path(), &server).await;
    let prefix = unique("t-tls");
    let topic = format!("{prefix}.PortCall");
    create_topic_over_tls(&kafka.bootstrap(), &ca_file, &topic).await;
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(kafka_over_tls(&kafka, &prefix, &ca_file));
    })
    .await;

    // Act
    let ids: Vec<String> = (0..3).map(|i| format!("kafka-tls-{i}")).collect();
    for id in &ids {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    // Assert
    let got = consume_over_tls(
        &kafka.bootstrap(),
        &ca_file,
        &topic,
        3,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ids);
    assert_eq!(got[0].payload().unwrap(), sample_with_id("kafka-tls-0"));
    assert!(
        kafka.front.failures().is_empty(),
        "{:?}",
        kafka.front.failures()
    );
    drop(kafka.broker);
}

#[tokio::test]
async fn a_gateway_given_another_ca_publishes_nothing_to_the_tls_broker() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Kafka CA");
    let server = ca.server(dir.path(), "kafka", &["localhost"]);
    let ca_file = ca.write(dir.path(), "kafka-ca.pem");
    let other_file = TestCa::new("Other CA").write(dir.path(), "other-ca.pem");
    let kafka = TlsKafka::start(dir.path(), &server).await;
    let prefix = unique("t-tls-wrong");
    let topic = format!("{prefix}.PortCall");
    create_topic_over_tls(&kafka.bootstrap(), &ca_file, &topic).await;
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(kafka_over_tls(&kafka, &prefix, &other_file));
    })
    .await;

    // Act
    assert_eq!(
        app.post(sample_with_id("kafka-wrong-ca")).await.status(),
        200
    );

    // Assert: the front saw the gateway give up its handshakes, and the topic stays empty.
    assert!(
        eventually(|| async { !kafka.front.failures().is_empty() }).await,
        "the gateway's handshakes fail"
    );
    assert_eq!(
        app.metric("dataloy_gateway_sink_up{sink=\"kafka\"}").await,
        0.0
    );
    let got = consume_over_tls(
        &kafka.bootstrap(),
        &ca_file,
        &topic,
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn properties_that_turn_kafka_certificate_checks_off_are_logged_as_an_error_at_start() {
    // Arrange: the real binary, with verification turned off explicitly (no broker needed:
    // the producer connects in the background).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[spool]
dir = "{spool}"
[sinks.kafka]
brokers = "localhost:{port}"
[sinks.kafka.properties]
"security.protocol" = "SSL"
"enable.ssl.certificate.verification" = "false"
[log]
format = "json"
"#,
            spool = dir.path().join("spool").display(),
            port = free_port(),
        ),
    )
    .unwrap();

    // Act
    let gateway = crate::gateway_process::start_gateway(&config);

    // Assert
    assert!(
        gateway
            .logged("are NOT verified", Duration::from_secs(10))
            .await,
        "{}",
        gateway.log_text()
    );
    assert!(gateway
        .log_text()
        .contains("enable.ssl.certificate.verification"));
}
