//! CloudEvents binary mode, opt in per sink, on real messages: every header of a consumed Kafka
//! record and RabbitMQ message is checked (the `dataloy-*` ones stay, the trace context, the
//! CloudEvents attributes under each binding's names), with C, U and D, the two documented
//! samples, a notification without Dataloy URLs; the body stays byte for byte and the Kafka key
//! is unchanged. The configuration is refused naming the key when a header could not carry it.

use std::collections::HashMap;
use std::time::Duration;

use dataloy_gateway::config::{CloudEventsSettings, Settings};
use dataloy_gateway::sink::cloudevents::UNKNOWN_SOURCE;
use rdkafka::message::Message;

use crate::helpers::*;
use crate::kafka::kafka_settings;
use crate::kafka_broker::*;
use crate::rabbitmq::rabbitmq_settings;
use crate::rabbitmq_broker::*;
use crate::trace_context::{amqp_headers, post_with, TRACEPARENT};

/// A created notification from another Dataloy host (https, explicit default port), and a
/// deleted one with no Dataloy URL at all.
fn created_and_deleted() -> [Vec<u8>; 2] {
    let created = r#"{"id":"ce-c-1","eventTime":"2024-01-15T08:00:00.25","objectType":"Vessel","eventType":"C","dataloyObject":77,"dataloyObjectSelf":"HTTPS://Dataloy.Example:443/ws/rest/Vessel/77","subscription":{"key":5,"self":"https://other.example/ws/rest/WebhookSubscription/5"},"resource":{"key":77}}"#;
    let deleted = r#"{"id":"ce-d-1","eventTime":"2024-07-15T08:00:00Z","objectType":"Vessel","eventType":"D","dataloyObject":78,"subscription":{},"resource":null}"#;
    [created.into(), deleted.into()]
}

/// What each posted body should carry, in posting order: id, source, type, time, subject, key.
struct Expected {
    id: &'static str,
    source: &'static str,
    event_type: &'static str,
    time: &'static str,
    subject: &'static str,
}

const OSLO: [Expected; 4] = [
    Expected {
        id: "1573335-244070007",
        source: "http://localhost:8080",
        event_type: "com.dataloy.PortCall.updated",
        time: "2016-09-14T13:37:26+02:00",
        subject: "189126972",
    },
    Expected {
        id: "245-320996749",
        source: "http://platform-dev.dataloy.com",
        event_type: "com.dataloy.BunkerOrderLine.updated",
        time: "2018-01-30T10:42:11+01:00",
        subject: "320996749",
    },
    Expected {
        id: "ce-c-1",
        source: "https://dataloy.example",
        event_type: "com.dataloy.Vessel.created",
        time: "2024-01-15T08:00:00.25+01:00",
        subject: "77",
    },
    Expected {
        id: "ce-d-1",
        source: UNKNOWN_SOURCE,
        event_type: "com.dataloy.Vessel.deleted",
        time: "2024-07-15T08:00:00Z",
        subject: "78",
    },
];

fn bodies() -> Vec<Vec<u8>> {
    let [created, deleted] = created_and_deleted();
    vec![UPDATED.to_vec(), ALERT.to_vec(), created, deleted]
}

fn text<'a>(map: &'a HashMap<String, String>, name: &str) -> &'a str {
    map.get(name).map(String::as_str).unwrap_or("<absent>")
}

#[tokio::test]
async fn kafka_records_carry_every_cloudevents_header_and_the_body_unchanged() {
    // Arrange: CloudEvents on Kafka only, eventTime read as Oslo time.
    let topic = unique("ce");
    create_topic(&brokers(), &topic, 1).await;
    let app = spawn_app_with(|s: &mut Settings, _| {
        s.sinks.file = None;
        let mut kafka = kafka_settings(&brokers(), &topic);
        kafka.topic = topic.clone();
        kafka.cloudevents = Some(CloudEventsSettings {
            time_zone: "Europe/Oslo".into(),
            ..CloudEventsSettings::default()
        });
        s.sinks.kafka = Some(kafka);
    })
    .await;
    let tracestate = "rojo=00f067aa0ba902b7";

    // Act: the first with a trace context, the others without.
    for (i, body) in bodies().into_iter().enumerate() {
        let headers: &[(&str, &str)] = if i == 0 {
            &[("traceparent", TRACEPARENT), ("tracestate", tracestate)]
        } else {
            &[]
        };
        assert_eq!(post_with(&app, body, headers).await, 200);
    }
    let records = consume(&brokers(), &topic, 1, 4, Duration::from_secs(30)).await;

    // Assert: exactly these headers, in each record.
    assert_eq!(records.len(), 4);
    for ((record, body), want) in records.iter().zip(bodies()).zip(&OSLO) {
        let headers = header_map(record);
        let envelope = dataloy_gateway::envelope::Envelope::parse(&body).unwrap();
        let traceparent = headers["traceparent"].clone();
        let mut expected: HashMap<String, String> = [
            ("dataloy-id", want.id),
            ("dataloy-object-type", envelope.object_type.as_str()),
            ("dataloy-event-type", envelope.event_type.as_str()),
            ("dataloy-event-time", envelope.event_time.as_str()),
            ("traceparent", traceparent.as_str()),
            ("ce_specversion", "1.0"),
            ("ce_id", want.id),
            ("ce_source", want.source),
            ("ce_type", want.event_type),
            ("ce_time", want.time),
            ("ce_subject", want.subject),
            ("content-type", "application/json"),
            ("ce_traceparent", traceparent.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(key) = envelope.subscription_key {
            expected.insert("dataloy-subscription-key".into(), key.to_string());
        }
        if want.id == "1573335-244070007" {
            assert_eq!(traceparent, TRACEPARENT);
            expected.insert("tracestate".into(), tracestate.into());
            expected.insert("ce_tracestate".into(), tracestate.into());
        }
        assert_eq!(headers, expected, "{}", want.id);
        assert_eq!(
            record.payload(),
            Some(&body[..]),
            "{}: byte for byte",
            want.id
        );
        let key = format!("{}:{}", envelope.object_type, envelope.dataloy_object);
        assert_eq!(
            record.key(),
            Some(key.as_bytes()),
            "{}: key unchanged",
            want.id
        );
    }
}

#[tokio::test]
async fn rabbitmq_messages_carry_every_cloudevents_header_and_the_body_unchanged() {
    // Arrange: CloudEvents on RabbitMQ, a configured source and type, UTC (the default).
    let exchange = unique("x-ce");
    let queue = bind_queue(&exchange, "#").await;
    let app = spawn_app_with(|s: &mut Settings, _| {
        s.sinks.file = None;
        let mut rabbitmq = rabbitmq_settings(&exchange);
        rabbitmq.cloudevents = Some(CloudEventsSettings {
            source: Some("https://dataloy.example.com/tenant-7".into()),
            event_type: "dataloy.{objectType}.{action}.v1".into(),
            ..CloudEventsSettings::default()
        });
        s.sinks.rabbitmq = Some(rabbitmq);
    })
    .await;

    // Act
    for body in bodies() {
        let headers = [("traceparent", TRACEPARENT), ("tracestate", "a=1")];
        assert_eq!(post_with(&app, body, &headers).await, 200);
    }
    let messages = drain(&queue, 4, Duration::from_secs(30)).await;

    // Assert
    assert_eq!(messages.len(), 4);
    let utc_times = [
        "2016-09-14T13:37:26Z",
        "2018-01-30T10:42:11Z",
        "2024-01-15T08:00:00.25Z",
        "2024-07-15T08:00:00Z",
    ];
    for (((message, body), want), time) in messages.iter().zip(bodies()).zip(&OSLO).zip(utc_times) {
        let headers = amqp_headers(message);
        let envelope = dataloy_gateway::envelope::Envelope::parse(&body).unwrap();
        let action = want.event_type.rsplit('.').next().unwrap();
        let event_type = format!("dataloy.{}.{action}.v1", envelope.object_type);
        let mut expected: HashMap<String, String> = [
            ("dataloy-id", want.id),
            ("dataloy-object-type", envelope.object_type.as_str()),
            ("dataloy-event-type", envelope.event_type.as_str()),
            ("dataloy-event-time", envelope.event_time.as_str()),
            ("traceparent", TRACEPARENT),
            ("tracestate", "a=1"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", want.id),
            ("cloudEvents_source", "https://dataloy.example.com/tenant-7"),
            ("cloudEvents_type", event_type.as_str()),
            ("cloudEvents_time", time),
            ("cloudEvents_subject", want.subject),
            ("cloudEvents_traceparent", TRACEPARENT),
            ("cloudEvents_tracestate", "a=1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(key) = envelope.subscription_key {
            expected.insert("dataloy-subscription-key".into(), key.to_string());
        }
        assert_eq!(headers, expected, "{}", want.id);
        let properties = &message.delivery.properties;
        let content_type = properties.content_type().as_ref().map(|c| c.to_string());
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(crate::rabbitmq_broker::message_id(message), want.id);
        assert_eq!(message.delivery.data, body, "{}: byte for byte", want.id);
        assert_eq!(text(&headers, "cloudEvents_time"), time);
    }
}

#[test]
fn cloudevents_settings_load_from_toml_and_the_environment_and_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"
[sinks.kafka]
brokers = "127.0.0.1:9092"
[sinks.kafka.cloudevents]
type = "com.example.{objectType}.{action}"
[sinks.rabbitmq]
uri = "amqp://guest:guest@127.0.0.1:5672/%2f"
"#,
    )
    .unwrap();
    let env = vec![
        (
            "DATALOY_GATEWAY__SINKS__KAFKA__CLOUDEVENTS__TIME_ZONE".to_owned(),
            "Europe/Oslo".to_owned(),
        ),
        (
            "DATALOY_GATEWAY__SINKS__RABBITMQ__CLOUDEVENTS__ENABLED".to_owned(),
            "true".to_owned(),
        ),
    ];
    let settings = Settings::load_with_env(Some(&path), env).expect("valid");
    let kafka = settings.sinks.kafka.unwrap().cloudevents.unwrap();
    assert_eq!(kafka.event_type, "com.example.{objectType}.{action}");
    assert_eq!(kafka.time_zone, "Europe/Oslo");
    let rabbitmq = settings.sinks.rabbitmq.unwrap().cloudevents.unwrap();
    assert!(rabbitmq.enabled);
    assert_eq!(rabbitmq.event_type, "com.dataloy.{objectType}.{action}");

    for (table, line, key) in [
        (
            "kafka",
            r#"time_zone = "Europe/Atlantis""#,
            "sinks.kafka.cloudevents.time_zone",
        ),
        (
            "kafka",
            r#"source = "has space""#,
            "sinks.kafka.cloudevents.source",
        ),
        (
            "rabbitmq",
            r#"type = "{objectTyp}""#,
            "sinks.rabbitmq.cloudevents.type",
        ),
        ("rabbitmq", "colour = 1", "colour"),
    ] {
        let error = config_error(&format!(
            "[sinks.{table}]\n[sinks.{table}.cloudevents]\n{line}\n"
        ));
        assert!(error.contains(key), "{line}: {error}");
    }
}
