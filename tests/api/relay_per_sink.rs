//! Each sink moves at its own pace: a sink whose broker is unreachable does not hold back the
//! others, and catches up from its own cursor once it can deliver.

use dataloy_gateway::config::RabbitMqSinkSettings;
use secrecy::SecretString;

use crate::helpers::*;

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
    let metrics = app.metrics().await;
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
