//! Each sink moves at its own pace: a sink whose broker is unreachable does not hold back the
//! others, and catches up from its own cursor once it can deliver.

use std::time::Duration;

use dataloy_gateway::config::RabbitMqSinkSettings;
use secrecy::SecretString;

use crate::helpers::*;
use crate::kafka::kafka_settings;
use crate::kafka_broker::{self, create_topic, OwnBroker};
use crate::rabbitmq::rabbitmq_settings;
use crate::rabbitmq_broker::{bind_queue, drain, message_id};

#[tokio::test]
async fn a_sink_that_cannot_deliver_does_not_hold_another_back() {
    // Arrange: the file sink works; the RabbitMQ sink points at a port nobody listens on.
    let dead = free_port();
    let app = spawn_app_with(|settings, _| {
        settings.sinks.rabbitmq = Some(RabbitMqSinkSettings {
            uri: SecretString::from(format!("amqp://guest:guest@127.0.0.1:{dead}/%2f")),
            ..RabbitMqSinkSettings::default()
        });
    })
    .await;
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("ahead-{i}"))).collect();

    // Act: one notification at a time, each waiting for the file sink.
    for (count, id) in ids.iter().enumerate() {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
        app.wait_for_events(count + 1).await;
    }

    // Assert: all three reached the file sink while RabbitMQ delivered none.
    assert_eq!(ids_of(&read_events(&app.events_path)), ids);
    // The file sink writes the event before its runner stores the cursor: wait for the cursor.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let metrics = app.metrics().await;
        let backlog = metric_value(&metrics, "dataloy_gateway_sink_backlog{sink=\"file\"}");
        if backlog == 0.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric_value(&metrics, "dataloy_gateway_sink_backlog{sink=\"file\"}"),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "dataloy_gateway_sink_backlog{sink=\"rabbitmq\"}"),
        3.0
    );
    assert_eq!(
        metric_value(&metrics, "dataloy_gateway_spool_depth_records"),
        3.0,
        "the spool keeps them for RabbitMQ"
    );
}

#[tokio::test]
async fn while_kafka_is_stopped_rabbitmq_keeps_delivering_and_kafka_catches_up_in_order() {
    // Arrange: Kafka on a broker of this test's own (which it stops), RabbitMQ the shared one.
    let data = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(data.path());
    let brokers = broker.address();
    let prefix = unique("t-indep");
    let topic = format!("{prefix}.PortCall");
    create_topic(&brokers, &topic, 1).await;
    let exchange = unique("x-indep");
    let queue = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(kafka_settings(&brokers, &prefix));
        s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange));
    })
    .await;
    let ids: Vec<String> = (0..30).map(|i| format!("indep-{i}")).collect();
    for id in &ids[..10] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }
    let kafka_before =
        kafka_broker::consume(&brokers, &topic, 1, 10, Duration::from_secs(30)).await;
    assert_eq!(
        kafka_before
            .iter()
            .map(kafka_broker::message_id)
            .collect::<Vec<_>>(),
        ids[..10]
    );
    let rabbit_before = drain(&queue, 10, Duration::from_secs(30)).await;
    assert_eq!(
        rabbit_before.iter().map(message_id).collect::<Vec<_>>(),
        ids[..10]
    );

    // Act: Kafka goes away; Dataloy keeps sending.
    broker.stop();
    for id in &ids[10..] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    // Assert: RabbitMQ gets every one of them while Kafka is down; the gateway stays ready.
    let rabbit_during = drain(&queue, 20, Duration::from_secs(30)).await;
    assert_eq!(
        rabbit_during.iter().map(message_id).collect::<Vec<_>>(),
        ids[10..]
    );
    assert_eq!(
        app.metric("dataloy_gateway_sink_backlog{sink=\"kafka\"}")
            .await,
        20.0
    );
    assert_eq!(app.ready_status().await, 200);

    // Kafka comes back (empty: see OwnBroker) and catches up in order, each once.
    broker.restart();
    create_topic(&brokers, &topic, 1).await;
    let kafka_after = kafka_broker::consume(&brokers, &topic, 1, 20, Duration::from_secs(60)).await;
    assert_eq!(
        kafka_after
            .iter()
            .map(kafka_broker::message_id)
            .collect::<Vec<_>>(),
        ids[10..]
    );
    assert!(
        drain(&queue, 0, Duration::from_millis(500))
            .await
            .is_empty(),
        "nothing doubled"
    );
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );
}
