//! RabbitMQ stopped (`rabbitmqctl stop_app`) and restarted in the middle of a stream: nothing
//! accepted is lost, nothing is duplicated, sink_up reports the outage while readiness stays 200. A test binary of its
//! own, because stopping the shared broker would disturb the other tests running alongside.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/rabbitmq_broker.rs"]
#[allow(dead_code)]
mod rabbitmq_broker;

use std::process::Command;
use std::time::Duration;

use dataloy_gateway::config::RabbitMqSinkSettings;
use helpers::*;
use rabbitmq_broker::*;
use secrecy::SecretString;

/// The tests here stop the one broker, so they take turns.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(action: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(action)
        .status()
        .expect("rabbitmqctl is installed");
    assert!(status.success(), "rabbitmqctl {action} failed");
}

async fn app_publishing_to(exchange: &str) -> TestApp {
    spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(RabbitMqSinkSettings {
            uri: SecretString::from(AMQP_URI),
            exchange: exchange.to_owned(),
            health_interval: Duration::from_millis(200),
            ..RabbitMqSinkSettings::default()
        });
    })
    .await
}

/// Starts the broker's application again even when the test fails half-way.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
    }
}

#[tokio::test]
async fn a_rabbitmq_restart_mid_stream_loses_and_duplicates_nothing() {
    let _turn = BROKER.lock().await;
    // Arrange
    let exchange = unique("x-outage");
    let queue = bind_queue(&exchange, "#").await;
    let app = app_publishing_to(&exchange).await;
    let ids: Vec<String> = (0..30).map(|i| format!("rr-{i}")).collect();
    for id in &ids[..10] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );

    // Act: stop the broker, keep sending, start it again, keep sending.
    let _restart = RestartOnDrop;
    rabbitmqctl("stop_app");
    app.post_during_outage(&ids[10..20], "rabbitmq").await;
    rabbitmqctl("start_app");
    for id in &ids[20..] {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    // Assert
    let got = drain(&queue, 30, Duration::from_secs(60)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ids);
    assert!(eventually(|| async { app.ready_status().await == 200 }).await);
}

#[tokio::test]
async fn under_steady_load_a_rabbitmq_restart_loses_nothing() {
    let _turn = BROKER.lock().await;
    // Arrange: a client posting steadily, before, during and after the outage.
    let exchange = unique("x-load");
    let queue = bind_queue(&exchange, "#").await;
    let app = app_publishing_to(&exchange).await;
    let load = SteadyLoad::start(&app);

    // Act
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restart = RestartOnDrop;
    rabbitmqctl("stop_app");
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_sink_up{sink=\"rabbitmq\"}")
                .await
                == 0.0
        })
        .await
    );
    assert_eq!(
        app.ready_status().await,
        200,
        "the spool absorbs the outage"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl("start_app");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = load.finish().await; // asserts 200 throughout

    // Assert: every notification delivered, in order of first delivery.
    let got = drain(&queue, sent.len(), Duration::from_secs(60)).await;
    let (first_seen, copies) = first_deliveries(got.iter().map(message_id));
    eprintln!(
        "steady load across a RabbitMQ restart: {} sent, {copies} extra copies",
        sent.len()
    );
    assert_eq!(first_seen, sent, "every notification delivered, in order");
    assert!(
        copies <= 512,
        "copies only from the batch whose confirms the restart cut off"
    );
}
