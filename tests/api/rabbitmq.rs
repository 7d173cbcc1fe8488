//! The RabbitMQ sink against the real RabbitMQ: confirmed delivery once, properties, routing by
//! template, unroutable messages, both brokers at once, configuration errors.

use std::time::Duration;

use dataloy_gateway::config::{RabbitMqSinkSettings, Settings, UnroutablePolicy};
use dataloy_gateway::dead_letter::{DeadLetterStore, Reason};
use secrecy::SecretString;
use serde_json::Value;

use bytes::Bytes;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::sink::{RabbitMqSink, Sink, SinkError};

use crate::helpers::*;
use crate::rabbitmq_broker::*;

pub fn rabbitmq_settings(exchange: &str) -> RabbitMqSinkSettings {
    RabbitMqSinkSettings {
        uri: SecretString::from(AMQP_URI),
        exchange: exchange.to_owned(),
        health_interval: Duration::from_millis(200),
        ..RabbitMqSinkSettings::default()
    }
}

fn with_rabbitmq(settings: &mut Settings, exchange: &str) {
    settings.sinks.file = None;
    settings.sinks.rabbitmq = Some(rabbitmq_settings(exchange));
}

#[tokio::test]
async fn every_accepted_notification_arrives_once_with_its_properties_routed_by_template() {
    // Arrange
    let exchange = unique("x-once");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let alerts = bind_queue(&exchange, "BunkerOrderLine.U").await;
    let app = spawn_app_with(|s, _| with_rabbitmq(s, &exchange)).await;

    // Act
    assert_eq!(app.post(UPDATED).await.status(), 200);
    assert_eq!(app.post(ALERT).await.status(), 200);
    let ids: Vec<String> = (0..20).map(|i| format!("rmq-{i}")).collect();
    for id in &ids {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
        let retry: Value = app.post(sample_with_id(id)).await.json().await.unwrap();
        assert_eq!(retry["status"], "duplicate");
    }

    // Assert
    let got = drain(&port_calls, 21, Duration::from_secs(30)).await;
    let got_alerts = drain(&alerts, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 21, "each once, duplicates not republished");
    assert_eq!(got_alerts.len(), 1);
    let first = &got[0];
    assert_eq!(first.delivery.data, UPDATED, "body byte for byte");
    assert_eq!(first.delivery.routing_key.as_str(), "PortCall.U");
    let properties = &first.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(message_id(first), "1573335-244070007");
    assert_eq!(
        properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(properties.kind().as_ref().unwrap().as_str(), "PortCall");
    assert!(properties.timestamp().is_some_and(|t| t > 1_700_000_000));
    assert_eq!(header(first, "dataloy-id"), "1573335-244070007");
    assert_eq!(header(first, "dataloy-object-type"), "PortCall");
    assert_eq!(header(first, "dataloy-event-type"), "U");
    assert_eq!(header(first, "dataloy-event-time"), "2016-09-14T13:37:26");
    assert_eq!(header(first, "dataloy-subscription-key"), "243885046");
    assert_eq!(got_alerts[0].delivery.data, ALERT);
    assert_eq!(
        got_alerts[0].delivery.routing_key.as_str(),
        "BunkerOrderLine.U"
    );
    let delivered: Vec<String> = got[1..].iter().map(message_id).collect();
    assert_eq!(delivered, ids, "in order");
    assert_eq!(
        app.metric("dataloy_gateway_sink_up{sink=\"rabbitmq\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn with_unroutable_retry_an_unroutable_message_is_retried_until_a_queue_is_bound() {
    let exchange = unique("x-unroutable");
    let app = spawn_app_with(|s, _| {
        with_rabbitmq(s, &exchange);
        s.sinks.rabbitmq.as_mut().unwrap().unroutable = UnroutablePolicy::Retry;
    })
    .await;

    assert_eq!(app.post(sample_with_id("lonely-1")).await.status(), 200);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_sink_publish_errors_total{sink=\"rabbitmq\"}")
                .await
                >= 2.0
        })
        .await,
        "returned (unroutable) publishes count as failures and are retried"
    );
    assert_eq!(app.metric("dataloy_gateway_spool_depth_records").await, 1.0);
    let queue = bind_queue(&exchange, "#").await;

    let got = drain(&queue, 1, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ["lonely-1"]);
}

/// The notification of `object_type` with `id` (the documented sample, both replaced).
pub fn of_type(object_type: &str, id: &str) -> Vec<u8> {
    String::from_utf8(sample_with_id(id))
        .unwrap()
        .replace(
            "\"objectType\": \"PortCall\"",
            &format!("\"objectType\": \"{object_type}\""),
        )
        .into_bytes()
}

fn dead_letters(app: &TestApp) -> DeadLetterStore {
    DeadLetterStore::open(&app.dir.path().join("spool/dead-letters"), 1 << 30).unwrap()
}

#[tokio::test]
async fn an_unroutable_notification_goes_to_dead_letters_and_the_ones_after_it_are_delivered() {
    // Arrange: the usual consumer, bound to the PortCall events only.
    let exchange = unique("x-dead");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| with_rabbitmq(s, &exchange)).await;

    // Act: one BunkerOrderLine notification, then five PortCall ones.
    let unroutable = of_type("BunkerOrderLine", "dl-bol-1");
    assert_eq!(app.post(unroutable.clone()).await.status(), 200);
    for i in 0..5 {
        assert_eq!(
            app.post(sample_with_id(&format!("dl-pc-{i}")))
                .await
                .status(),
            200
        );
    }

    // Assert: all five delivered, the unroutable one kept byte for byte in dead letters.
    let got = drain(&port_calls, 5, Duration::from_secs(30)).await;
    let ids: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(ids, ["dl-pc-0", "dl-pc-1", "dl-pc-2", "dl-pc-3", "dl-pc-4"]);
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );
    let store = dead_letters(&app);
    let entries: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, "dl-bol-1");
    assert_eq!(entries[0].sink, "rabbitmq");
    assert_eq!(entries[0].reason, Reason::Unroutable);
    assert!(
        entries[0].error.contains("BunkerOrderLine.U"),
        "{}",
        entries[0].error
    );
    assert_eq!(store.read(&entries[0].name).unwrap().body, unroutable);
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_total{reason=\"unroutable\",sink=\"rabbitmq\"}")
            .await,
        1.0
    );
    let ready = app
        .client
        .get(format!("{}/health/ready", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn with_unroutable_drop_an_unroutable_notification_is_counted_and_skipped() {
    let exchange = unique("x-drop");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| {
        with_rabbitmq(s, &exchange);
        s.sinks.rabbitmq.as_mut().unwrap().unroutable = UnroutablePolicy::Drop;
    })
    .await;

    assert_eq!(app.post(of_type("Vessel", "drop-1")).await.status(), 200);
    assert_eq!(app.post(sample_with_id("drop-2")).await.status(), 200);

    let got = drain(&port_calls, 1, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ["drop-2"]);
    assert_eq!(
        app.metric("dataloy_gateway_sink_dropped_total{reason=\"unroutable\",sink=\"rabbitmq\"}")
            .await,
        1.0
    );
    assert!(dead_letters(&app).list().unwrap().is_empty());
}

#[tokio::test]
async fn a_routing_key_over_255_bytes_is_a_dead_letter_not_a_panic() {
    // Arrange: a template that renders past AMQP's 255-byte short string for long object types.
    let exchange = unique("x-long");
    let everything = bind_queue(&exchange, "#").await;
    let app = spawn_app_with(|s, _| {
        with_rabbitmq(s, &exchange);
        s.sinks.rabbitmq.as_mut().unwrap().routing_key =
            format!("{}.{{objectType}}", "r".repeat(200));
    })
    .await;

    // Act: 200 + 1 + 60 bytes, then one that fits.
    let long_type = format!("T{}", "x".repeat(59));
    assert_eq!(app.post(of_type(&long_type, "long-1")).await.status(), 200);
    assert_eq!(app.post(sample_with_id("long-2")).await.status(), 200);

    // Assert
    let got = drain(&everything, 1, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ["long-2"]);
    let entries: Vec<_> = dead_letters(&app)
        .list()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, Reason::Unrepresentable);
    assert!(
        entries[0].error.contains("routing key is 261 bytes"),
        "{}",
        entries[0].error
    );
    assert_eq!(
        app.metric("dataloy_gateway_relay_panics_total{sink=\"rabbitmq\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn with_kafka_and_rabbitmq_each_notification_goes_to_both() {
    let brokers = crate::kafka_broker::brokers();
    let prefix = unique("t-both");
    let topic = format!("{prefix}.PortCall");
    crate::kafka_broker::create_topic(&brokers, &topic, 1).await;
    let exchange = unique("x-both");
    let queue = bind_queue(&exchange, "dataloy.#").await;
    let app = spawn_app_with(|s, _| {
        with_rabbitmq(s, &exchange);
        s.sinks.rabbitmq.as_mut().unwrap().routing_key =
            "dataloy.{objectType}.{dataloyObject}".into();
        s.sinks.kafka = Some(dataloy_gateway::config::KafkaSinkSettings {
            brokers: brokers.clone(),
            topic: format!("{prefix}.{{objectType}}"),
            health_interval: Duration::from_millis(200),
            ..Default::default()
        });
    })
    .await;
    let ids: Vec<String> = (0..5).map(|i| format!("both-{i}")).collect();

    for id in &ids {
        assert_eq!(app.post(sample_with_id(id)).await.status(), 200);
    }

    let from_rabbitmq = drain(&queue, 5, Duration::from_secs(30)).await;
    let from_kafka =
        crate::kafka_broker::consume(&brokers, &topic, 1, 5, Duration::from_secs(30)).await;
    assert_eq!(
        from_rabbitmq.iter().map(message_id).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        from_rabbitmq[0].delivery.routing_key.as_str(),
        "dataloy.PortCall.189126972"
    );
    assert_eq!(
        from_kafka
            .iter()
            .map(crate::kafka_broker::message_id)
            .collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn rabbitmq_configuration_errors_name_the_key() {
    let cases = [
        (
            "sinks.rabbitmq.uri",
            "[sinks.rabbitmq]\nuri = \"http://guest:guest@localhost\"\n",
        ),
        (
            "sinks.rabbitmq.routing_key",
            "[sinks.rabbitmq]\nrouting_key = \"{objectType\"\n",
        ),
        (
            "sinks.rabbitmq.exchange",
            "[sinks.rabbitmq]\nexchange = \"\"\n",
        ),
        (
            "exchange_kind",
            "[sinks.rabbitmq]\nexchange_kind = \"random\"\n",
        ),
    ];
    for (key, text) in cases {
        let error = config_error(text);
        assert!(
            error.contains(key),
            "error for `{key}` does not name it: {error}"
        );
        assert!(
            !error.contains("guest:guest"),
            "credentials leaked: {error}"
        );
    }
}

#[test]
fn the_uri_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, "[sinks.rabbitmq]\nexchange = \"dataloy\"\n").unwrap();
    let settings = Settings::load_with_env(
        Some(&path),
        vec![(
            "DATALOY_GATEWAY__SINKS__RABBITMQ__URI".to_string(),
            "amqps://user:pw@rabbit.example:5671/prod".to_string(),
        )],
    )
    .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        settings.sinks.rabbitmq.unwrap().uri.expose_secret(),
        "amqps://user:pw@rabbit.example:5671/prod"
    );
}

#[tokio::test]
async fn a_refusal_in_the_middle_of_a_batch_reports_what_came_after_it_so_nothing_is_sent_twice() {
    // Arrange: PortCall bound, BunkerOrderLine not.
    let exchange = unique("x-mid");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let sink = RabbitMqSink::new(&rabbitmq_settings(&exchange), Metrics::new()).unwrap();
    let notification = |body: Vec<u8>| {
        let body = Bytes::from(body);
        Notification::new(Envelope::parse(&body).unwrap(), body)
    };
    let batch = [
        notification(sample_with_id("mid-pc-1")),
        notification(of_type("BunkerOrderLine", "mid-bol-1")),
        notification(sample_with_id("mid-pc-2")),
        notification(of_type("BunkerOrderLine", "mid-bol-2")),
        notification(sample_with_id("mid-pc-3")),
    ];

    // Act
    let error = sink.publish(&batch).await.unwrap_err();

    // Assert: one confirmed, the refusal, then what became of the three after it.
    assert_eq!(error.confirmed, 1);
    assert!(matches!(
        error.source,
        SinkError::Refused {
            reason: Reason::Unroutable,
            ..
        }
    ));
    let after: Vec<&str> = error
        .settled_after
        .iter()
        .map(|outcome| match outcome {
            Ok(()) => "delivered",
            Err(SinkError::Refused { .. }) => "refused",
            Err(_) => "failed",
        })
        .collect();
    assert_eq!(after, ["delivered", "refused", "delivered"]);
    let got = drain(&port_calls, 3, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        ["mid-pc-1", "mid-pc-2", "mid-pc-3"]
    );
}

#[tokio::test]
async fn refusals_mixed_into_a_batch_go_to_dead_letters_and_every_other_notification_arrives_once()
{
    // Arrange: the sink reaches RabbitMQ through a port nobody listens on yet, so the
    // notifications wait in the spool and the relay reads them as one mixed batch.
    let exchange = unique("x-batch");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let port = free_port();
    let app = spawn_app_with(|s, _| {
        with_rabbitmq(s, &exchange);
        s.sinks.rabbitmq.as_mut().unwrap().uri =
            SecretString::from(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    })
    .await;
    for i in 0..40 {
        let body = if i % 2 == 0 {
            sample_with_id(&format!("batch-pc-{i}"))
        } else {
            of_type("BunkerOrderLine", &format!("batch-bol-{i}"))
        };
        assert_eq!(app.post(body).await.status(), 200);
    }

    // Act: RabbitMQ becomes reachable.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });

    // Assert: each PortCall once, in order; each BunkerOrderLine in dead letters once.
    let got = drain(&port_calls, 20, Duration::from_secs(30)).await;
    let expected: Vec<String> = (0..40)
        .step_by(2)
        .map(|i| format!("batch-pc-{i}"))
        .collect();
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), expected);
    assert!(
        eventually(|| async { app.metric("dataloy_gateway_spool_depth_records").await == 0.0 })
            .await
    );
    assert_eq!(dead_letters(&app).list().unwrap().len(), 20);
}
