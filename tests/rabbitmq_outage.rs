//! RabbitMQ stopped (`rabbitmqctl stop_app`) and restarted in the middle of a stream: nothing
//! accepted is lost, nothing is duplicated, readiness reports the outage. A test binary of its
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
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(RabbitMqSinkSettings {
            uri: SecretString::from(AMQP_URI),
            exchange: exchange.clone(),
            health_interval: Duration::from_millis(200),
            ..RabbitMqSinkSettings::default()
        });
    })
    .await;
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
    for id in &ids[10..20] {
        assert_eq!(
            app.post(sample_with_id(id)).await.status(),
            200,
            "accepted during the outage"
        );
    }
    assert!(
        eventually(|| async { app.ready_status().await == 503 }).await,
        "readiness reports the outage"
    );
    assert_eq!(
        app.metric("dataloy_gateway_sink_up{sink=\"rabbitmq\"}")
            .await,
        0.0
    );
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
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(RabbitMqSinkSettings {
            uri: SecretString::from(AMQP_URI),
            exchange: exchange.clone(),
            health_interval: Duration::from_millis(200),
            ..RabbitMqSinkSettings::default()
        });
    })
    .await;
    let (stop_load, stopped) = tokio::sync::watch::channel(false);
    let client = app.client.clone();
    let url = format!("{}/webhooks/dataloy", app.address);
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        let mut n = 0;
        while !*stopped.borrow() {
            let id = format!("steady-{n}");
            let response = client
                .post(&url)
                .body(sample_with_id(&id))
                .send()
                .await
                .unwrap();
            statuses.push((id, response.status().as_u16()));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    });

    // Act
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restart = RestartOnDrop;
    rabbitmqctl("stop_app");
    assert!(eventually(|| async { app.ready_status().await == 503 }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl("start_app");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.send_replace(true);
    let statuses = load.await.unwrap();

    // Assert: 200 throughout, every notification delivered, in order of first delivery.
    assert!(
        statuses.iter().all(|(_, status)| *status == 200),
        "{statuses:?}"
    );
    let sent: Vec<String> = statuses.into_iter().map(|(id, _)| id).collect();
    let got = drain(&queue, sent.len(), Duration::from_secs(60)).await;
    let mut first_seen = Vec::new();
    let mut copies = 0;
    for id in got.iter().map(message_id) {
        if first_seen.contains(&id) {
            copies += 1;
        } else {
            first_seen.push(id);
        }
    }
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
