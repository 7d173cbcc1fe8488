//! The whole loop the keeper exists for: Dataloy cannot deliver for a while, deactivates the
//! subscription after its retries, the keeper re-creates it within an interval, and the
//! notifications Dataloy sends after that reach Kafka through the gateway.

use std::time::Duration;

use dataloy_gateway::config::KafkaSinkSettings;
use serde_json::Value;

use crate::fake_dataloy::*;
use crate::helpers::*;
use crate::kafka_broker::*;
use crate::subscriptions::{dataloy_settings, object_subscription};

#[tokio::test]
async fn a_subscription_deactivated_by_failed_deliveries_is_recreated_and_later_notifications_reach_kafka(
) {
    // Arrange: a Dataloy that deactivates after 3 failed deliveries whatever doNotUnsubscribe
    // says (as before 6.10), reaching the gateway through a path the test can cut.
    let brokers = brokers();
    let prefix = unique("t-keeper");
    let topic = format!("{prefix}.BunkerOrder");
    create_topic(&brokers, &topic, 1).await;
    let fake = FakeDataloy::start(FakeOptions {
        failures_before_deactivation: 3,
        honours_do_not_unsubscribe: false,
        ..FakeOptions::default()
    })
    .await;
    let path_from_dataloy = Proxy::start().await;
    let url = format!(
        "http://127.0.0.1:{}/webhooks/dataloy",
        path_from_dataloy.port
    );
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(KafkaSinkSettings {
            brokers: brokers.clone(),
            topic: format!("{prefix}.{{objectType}}"),
            health_interval: Duration::from_millis(200),
            message_timeout: Duration::from_secs(5),
            ..KafkaSinkSettings::default()
        });
        s.dataloy = Some(dataloy_settings(&fake.base_url, &fake.token_url));
        s.subscriptions.insert(
            "bunker-orders".into(),
            object_subscription("BunkerOrder", "U", &url),
        );
    })
    .await;
    let gateway_port = app.address.rsplit(':').next().unwrap().parse().unwrap();
    path_from_dataloy.forward_to(gateway_port);
    assert!(eventually(|| async { fake.active_subscriptions().len() == 1 }).await);
    let first_key = fake.active_subscriptions()[0]["key"].clone();
    assert_eq!(
        fake.notify("BunkerOrder", "U", "before-outage").await,
        [200]
    );

    // Act: Dataloy's attempts at one notification fail until it deactivates the subscription.
    path_from_dataloy.set_up(false);
    for _ in 0..3 {
        assert_eq!(fake.notify("BunkerOrder", "U", "lost-in-outage").await, [0]);
    }
    let deactivated = fake
        .subscriptions()
        .into_iter()
        .find(|s| s["key"] == first_key)
        .unwrap();
    assert_eq!(deactivated["isSubscriptionActive"], false);
    assert!(deactivated["unsubscriptionDate"].is_string());
    path_from_dataloy.set_up(true);

    // Assert: re-created (a new key, as Dataloy cannot reactivate one) and counted.
    let recreated = || {
        let active = fake.active_subscriptions();
        active.len() == 1 && active[0]["key"] != first_key
    };
    assert!(
        eventually(|| async { recreated() }).await,
        "{:?}",
        fake.subscriptions()
    );
    assert!(
        eventually(|| async {
            app.metric(
                "dataloy_gateway_subscription_recreations_total{subscription=\"bunker-orders\"}",
            )
            .await
                == 1.0
        })
        .await
    );
    assert_eq!(fake.active_subscriptions()[0]["doNotUnsubscribe"], true);
    assert_eq!(
        fake.notify("BunkerOrder", "U", "after-recreation-1").await,
        [200]
    );
    assert_eq!(
        fake.notify("BunkerOrder", "U", "after-recreation-2").await,
        [200]
    );
    let messages = consume(&brokers, &topic, 1, 3, Duration::from_secs(30)).await;
    let ids: Vec<String> = messages
        .iter()
        .map(|m| {
            let body: Value =
                serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["before-outage", "after-recreation-1", "after-recreation-2"],
        "what Dataloy sent once the path was back reached Kafka; the lost one is the missed window"
    );
    app.stop().await;
    fake.stop().await;
}
