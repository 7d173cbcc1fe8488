//! The Kafka sink's publish contract on its own, against the real broker: when one message of a
//! batch fails, the sink says exactly how many leading messages were delivered, because the
//! relay's retry starts right after them.

use std::time::Duration;

use bytes::Bytes;
use dataloy_gateway::config::KafkaSinkSettings;
use dataloy_gateway::dead_letter::Reason;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::sink::{KafkaSink, Sink, SinkError};

use crate::helpers::*;
use crate::kafka_broker::*;

fn notification(body: String) -> Notification {
    let body = Bytes::from(body);
    Notification::new(Envelope::parse(&body).expect("valid envelope"), body)
}

/// A notification about `object_type` with the given id and a `resource` of `padding` bytes.
fn event(id: &str, object_type: &str, padding: usize) -> Notification {
    let filler = "x".repeat(padding);
    notification(format!(
        r#"{{"id":"{id}","eventTime":"2016-09-14T13:37:26","objectType":"{object_type}","eventType":"U","dataloyObject":1,"subscription":{{"key":7}},"resource":{{"filler":"{filler}"}}}}"#
    ))
}

fn sink(prefix: &str, configure: impl FnOnce(&mut KafkaSinkSettings)) -> KafkaSink {
    let mut settings = KafkaSinkSettings {
        brokers: brokers(),
        topic: format!("{prefix}.{{objectType}}"),
        health_interval: Duration::from_millis(200),
        message_timeout: Duration::from_secs(2),
        ..KafkaSinkSettings::default()
    };
    configure(&mut settings);
    KafkaSink::new(&settings, 1 << 20).expect("sink starts")
}

#[tokio::test]
async fn a_message_refused_at_enqueue_confirms_the_ones_before_it_and_sends_none_after() {
    let prefix = unique("t-refused");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers(), &topic, 1).await;
    let sink = sink(&prefix, |s| {
        s.properties
            .insert("message.max.bytes".into(), "10000".into());
    });
    let batch = [
        event("r-1", "PortCall", 10),
        event("r-2", "PortCall", 10),
        event("r-3", "PortCall", 20_000),
        event("r-4", "PortCall", 10),
    ];

    let error = sink.publish(&batch).await.expect_err("r-3 is too large");

    assert_eq!(error.confirmed, 2, "{error}");
    assert!(
        matches!(
            &error.source,
            SinkError::Refused { reason: Reason::TooLarge, detail } if detail.contains("too large")
        ),
        "{error}"
    );
    let delivered = consume(&brokers(), &topic, 1, 2, Duration::from_secs(30)).await;
    assert_eq!(
        delivered.iter().map(message_id).collect::<Vec<_>>(),
        ["r-1", "r-2"]
    );
    sink.close(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_failed_delivery_report_confirms_only_the_messages_before_it() {
    let prefix = unique("t-report");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers(), &topic, 1).await;
    // `{prefix}.Voyage` does not exist: its message is reported failed when it times out.
    let sink = sink(&prefix, |_| {});
    let batch = [
        event("f-1", "PortCall", 10),
        event("f-2", "Voyage", 10),
        event("f-3", "PortCall", 10),
    ];

    let error = sink.publish(&batch).await.expect_err("f-2 has no topic");

    assert_eq!(error.confirmed, 1, "{error}");
    sink.close(Duration::from_secs(10)).await;
}
