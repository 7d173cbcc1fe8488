//! The Kafka sink against a real Kafka-protocol broker: delivery once, bytes, key, headers,
//! per-key order, duplicates, outage and recovery, configuration errors.

use std::collections::HashMap;
use std::time::Duration;

use dataloy_gateway::config::{KafkaSinkSettings, ServerSettings, Settings};
use dataloy_gateway::dead_letter::DeadLetterStore;
use rdkafka::message::Message;
use serde_json::Value;

use crate::helpers::*;
use crate::kafka_broker::*;

pub fn kafka_settings(brokers: &str, topic_prefix: &str) -> KafkaSinkSettings {
    KafkaSinkSettings {
        brokers: brokers.to_owned(),
        topic: format!("{topic_prefix}.{{objectType}}"),
        health_interval: Duration::from_millis(200),
        message_timeout: Duration::from_secs(5),
        ..KafkaSinkSettings::default()
    }
}

fn with_kafka(settings: &mut Settings, brokers: &str, topic_prefix: &str) {
    settings.sinks.file = None;
    settings.sinks.kafka = Some(kafka_settings(brokers, topic_prefix));
}

/// A notification for object `object` with the given id and event type.
fn event(id: &str, object: i64, event_type: &str) -> String {
    format!(
        r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"PortCall","eventType":"{event_type}","dataloyObject":{object},"subscription":{{"key":7}},"resource":{{"key":{object}}}}}"#
    )
}

#[tokio::test]
async fn every_accepted_notification_arrives_once_with_body_key_and_headers() {
    // Arrange
    let brokers = brokers();
    let prefix = unique("t-once");
    create_topic(&brokers, &format!("{prefix}.PortCall"), 1).await;
    create_topic(&brokers, &format!("{prefix}.BunkerOrderLine"), 1).await;
    let app = spawn_app_with(|s, _| with_kafka(s, &brokers, &prefix)).await;

    // Act
    assert_eq!(app.post(UPDATED).await.status(), 200);
    assert_eq!(app.post(ALERT).await.status(), 200);
    let ids: Vec<String> = (0..20).map(|i| format!("once-{i}")).collect();
    for id in &ids {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    // Assert
    let port_calls = consume(
        &brokers,
        &format!("{prefix}.PortCall"),
        1,
        21,
        Duration::from_secs(30),
    )
    .await;
    let alerts = consume(
        &brokers,
        &format!("{prefix}.BunkerOrderLine"),
        1,
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(port_calls.len(), 21);
    assert_eq!(alerts.len(), 1);
    let first = &port_calls[0];
    assert_eq!(first.payload().unwrap(), UPDATED, "body byte for byte");
    assert_eq!(first.key().unwrap(), b"PortCall:189126972");
    let headers = header_map(first);
    assert_eq!(headers["dataloy-id"], "1573335-244070007");
    assert_eq!(headers["dataloy-object-type"], "PortCall");
    assert_eq!(headers["dataloy-event-type"], "U");
    assert_eq!(headers["dataloy-event-time"], "2016-09-14T13:37:26");
    assert_eq!(headers["dataloy-subscription-key"], "243885046");
    assert_eq!(alerts[0].payload().unwrap(), ALERT);
    assert_eq!(alerts[0].key().unwrap(), b"BunkerOrderLine:320996749");
    let delivered: Vec<String> = port_calls[1..].iter().map(message_id).collect();
    assert_eq!(delivered, ids);
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_sink_up{sink=\"kafka\"}").await == 1.0 })
            .await
    );
}

#[tokio::test]
async fn order_per_object_is_preserved_across_partitions_and_duplicates_are_not_republished() {
    let brokers = brokers();
    let prefix = unique("t-order");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers, &topic, 3).await;
    let app = spawn_app_with(|s, _| with_kafka(s, &brokers, &prefix)).await;

    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..10 {
        for object in [11_i64, 22, 33, 44] {
            let id = format!("o{object}-{round}");
            let event_type = if round == 0 { "C" } else { "U" };
            assert_eq!(app.post(event(&id, object, event_type)).await.status(), 200);
            // Dataloy's retry of the same notification:
            let retry: Value = app
                .post(event(&id, object, event_type))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(retry["status"], "duplicate");
            sent.entry(format!("PortCall:{object}"))
                .or_default()
                .push(id);
        }
    }

    let messages = consume(&brokers, &topic, 3, 40, Duration::from_secs(30)).await;
    assert_eq!(
        messages.len(),
        40,
        "each notification once, duplicates not republished"
    );
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for message in &messages {
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        assert_eq!(
            *partitions.entry(key.clone()).or_insert(message.partition()),
            message.partition()
        );
        received.entry(key).or_default().push(message_id(message));
    }
    assert_eq!(received, sent, "per-key order preserved");
}

#[tokio::test]
async fn a_broker_outage_is_absorbed_by_the_spool_and_drained_in_order() {
    // Arrange: a broker of this test's own, which it can stop.
    let data = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(data.path());
    let brokers = broker.address();
    let prefix = unique("t-outage");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers, &topic, 1).await;
    let app = spawn_app_with(|s, _| with_kafka(s, &brokers, &prefix)).await;
    assert!(eventually(|| async { app.ready_status().await == 200 }).await);
    let ids: Vec<String> = (0..30).map(|i| format!("out-{i}")).collect();
    for id in &ids[..10] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }
    let before = consume(&brokers, &topic, 1, 10, Duration::from_secs(30)).await;
    assert_eq!(before.iter().map(message_id).collect::<Vec<_>>(), ids[..10]);

    // Act: the broker goes away; Dataloy keeps sending.
    broker.stop();
    app.post_during_outage(&ids[10..20], "kafka").await;
    for id in &ids[20..] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }
    assert_eq!(
        app.metric("dataloy_gateway_spool_depth_records").await,
        20.0
    );
    broker.restart(); // empty again (see OwnBroker)
    create_topic(&brokers, &topic, 1).await;

    // Assert: the backlog drains in order, each notification once.
    let after = consume(&brokers, &topic, 1, 20, Duration::from_secs(60)).await;
    assert_eq!(after.iter().map(message_id).collect::<Vec<_>>(), ids[10..]);
    assert!(eventually(|| async { app.ready_status().await == 200 }).await);
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );
}

#[tokio::test]
async fn under_steady_load_a_frozen_broker_is_absorbed_and_nothing_is_lost() {
    // Arrange: a broker of the test's own and a client posting steadily throughout.
    let data = tempfile::tempdir().unwrap();
    let broker = OwnBroker::start(data.path());
    let brokers = broker.address();
    let prefix = unique("t-frozen");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers, &topic, 1).await;
    let app = spawn_app_with(|s, _| with_kafka(s, &brokers, &prefix)).await;
    assert!(eventually(|| async { app.ready_status().await == 200 }).await);
    let load = SteadyLoad::start(&app);

    // Act: the broker hangs (SIGSTOP) for a while, then resumes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.signal("STOP");
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_sink_up{sink=\"kafka\"}").await == 0.0 })
            .await,
        "sink_up reports the hung broker"
    );
    assert_eq!(
        app.ready_status().await,
        200,
        "readiness stays: the spool absorbs it"
    );
    broker.signal("CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = load.finish().await; // asserts 200 throughout

    // Assert: every notification delivered, in order of first delivery.
    let messages = consume(&brokers, &topic, 1, sent.len(), Duration::from_secs(60)).await;
    let (first_seen, copies) = first_deliveries(messages.iter().map(message_id));
    eprintln!(
        "steady load across a frozen Kafka broker: {} sent, {copies} extra copies",
        sent.len()
    );
    assert_eq!(first_seen, sent);
    assert!(
        copies <= 512,
        "copies only from batches whose delivery reports timed out"
    );
}

#[tokio::test]
async fn a_missing_topic_keeps_notifications_spooled_until_it_exists() {
    let brokers = brokers();
    let prefix = unique("t-missing");
    let topic = format!("{prefix}.PortCall");
    let app = spawn_app_with(|s, _| {
        with_kafka(s, &brokers, &prefix);
        s.sinks.kafka.as_mut().unwrap().message_timeout = Duration::from_secs(2);
    })
    .await;

    assert_eq!(app.post(sample_with_id("m-1")).await.status(), 200);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_sink_publish_errors_total{sink=\"kafka\"}")
                .await
                >= 1.0
        })
        .await,
        "publishing to a missing topic fails and is retried"
    );
    create_topic(&brokers, &topic, 1).await;

    let messages = consume(&brokers, &topic, 1, 1, Duration::from_secs(60)).await;
    assert_eq!(messages.iter().map(message_id).collect::<Vec<_>>(), ["m-1"]);
}

#[test]
fn kafka_configuration_errors_name_the_key() {
    let cases = [
        (
            "sinks.kafka.topic",
            "[sinks.kafka]\ntopic = \"dataloy.{nope}\"\n",
        ),
        (
            "sinks.kafka.topic",
            "[sinks.kafka]\ntopic = \"dataloy/{objectType}\"\n",
        ),
        (
            "sinks.kafka.topic",
            "[sinks.kafka]\ntopic = \"dataloy.{id}\"\n",
        ),
        ("sinks.kafka.key", "[sinks.kafka]\nkey = \"{objectType\"\n"),
        ("sinks.kafka.brokers", "[sinks.kafka]\nbrokers = \"\"\n"),
        (
            "sinks.kafka.properties",
            "[sinks.kafka.properties]\nacks = \"1\"\n",
        ),
        ("compression", "[sinks.kafka]\ncompression = \"brotli\"\n"),
    ];
    for (key, text) in cases {
        let error = config_error(text);
        assert!(
            error.contains(key),
            "error for `{key}` does not name it: {error}"
        );
    }
}

#[tokio::test]
async fn an_unknown_librdkafka_property_stops_start_up_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    let mut kafka = kafka_settings(&brokers(), "unused");
    kafka
        .properties
        .insert("no.such.property".into(), "1".into());
    settings.sinks.kafka = Some(kafka);

    let error = match dataloy_gateway::startup::Application::build(settings).await {
        Ok(_) => panic!("start-up should fail"),
        Err(e) => format!("{e:#}"),
    };

    assert!(error.contains("sinks.kafka.properties"), "{error}");
    assert!(error.contains("no.such.property"), "{error}");
}

#[tokio::test]
async fn a_body_just_under_max_body_bytes_is_delivered_and_the_ones_after_it_too() {
    // Arrange: a body 16 bytes under server.max_body_bytes (1 MiB by default, above librdkafka's
    // default message.max.bytes of 1,000,000).
    let brokers = brokers();
    let prefix = unique("t-large");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers, &topic, 1).await;
    let app = spawn_app_with(|s, _| with_kafka(s, &brokers, &prefix)).await;
    let max = ServerSettings::default().max_body_bytes.bytes() as usize;
    let envelope = |filler: &str| {
        format!(
            r#"{{"id":"big-1","eventTime":"2016-09-14T13:37:26","objectType":"PortCall","eventType":"U","dataloyObject":1,"subscription":{{"key":7}},"resource":{{"filler":"{filler}"}}}}"#
        )
    };
    let large = envelope(&"x".repeat(max - 16 - envelope("").len()));
    assert_eq!(large.len(), max - 16);

    // Act
    assert_eq!(app.post(large.clone()).await.status(), 200);
    assert_eq!(app.post(event("big-2", 2, "U")).await.status(), 200);

    // Assert: both delivered, in order, the large one byte for byte; no dead letter.
    let got = consume(&brokers, &topic, 1, 2, Duration::from_secs(60)).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        ["big-1", "big-2"]
    );
    assert_eq!(got[0].payload().unwrap(), large.as_bytes());
    let dead_letters =
        DeadLetterStore::inspect(&app.dir.path().join("spool/dead-letters"), 1 << 30)
            .unwrap()
            .list()
            .unwrap();
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
}
