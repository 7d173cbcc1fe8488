//! `[dead_letters.forward.*]` against the real brokers: a notification RabbitMQ cannot route
//! (issue 19's reproduction: a queue bound only to `PortCall.*`, a `BunkerOrderLine`
//! notification) is stored as a dead letter, then forwarded to a RabbitMQ dead-letter exchange
//! or a Kafka dead-letter topic with its body byte for byte and the reason headers; a restart
//! does not forward it again; forwarding waits for a DLX that does not exist yet and resumes
//! once it is declared, without holding the stream back; an entry the DLX cannot route is
//! marked and does not block the next one.

use std::time::Duration;

use dataloy_gateway::config::{
    DeadLetterForwardSettings, KafkaForwardSettings, RabbitMqForwardSettings, Settings,
};
use dataloy_gateway::dead_letter::DeadLetterStore;

use crate::helpers::*;
use crate::kafka::kafka_settings;
use crate::kafka_broker::{self, create_topic, header_map};
use crate::rabbitmq::{of_type, rabbitmq_settings};
use crate::rabbitmq_broker::{self, bind_queue, drain, header};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// RabbitMQ on `exchange` (the sink), forwarding to the DLX `dlx` with `routing_key`.
fn with_dlx(settings: &mut Settings, exchange: &str, dlx: &str, routing_key: &str) {
    settings.sinks.rabbitmq = Some(rabbitmq_settings(exchange));
    settings.dead_letters.forward = DeadLetterForwardSettings {
        rabbitmq: Some(RabbitMqForwardSettings {
            exchange: dlx.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_millis(300),
        scan_interval: Duration::from_millis(300),
        ..DeadLetterForwardSettings::default()
    };
}

async fn post_traced(app: &TestApp, body: Vec<u8>) {
    let response = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .header("content-type", "application/json")
        .header("traceparent", TRACEPARENT)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn entries(app: &TestApp) -> usize {
    DeadLetterStore::inspect(&app.dir.path().join("spool/dead-letters"), 1 << 30)
        .unwrap()
        .list()
        .unwrap()
        .len()
}

#[tokio::test]
async fn an_unroutable_notification_reaches_the_dlx_with_reason_headers_once_even_across_a_restart()
{
    // Arrange: the usual consumer (PortCall only), and a DLX with a queue for `{sink}.{reason}`.
    let exchange = unique("x-fwd");
    let dlx = unique("dlx-fwd");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let dead = bind_queue(&dlx, "rabbitmq.unroutable").await;
    let app = spawn_app_with(|s, _| with_dlx(s, &exchange, &dlx, "{sink}.{reason}")).await;

    // Act
    let body = of_type("BunkerOrderLine", "fwd-bol-1");
    post_traced(&app, body.clone()).await;

    // Assert: on the DLX, byte for byte, with the id and the reason headers.
    let got = drain(&dead, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "forwarded once");
    let message = &got[0];
    assert_eq!(message.delivery.data, body);
    assert_eq!(rabbitmq_broker::message_id(message), "fwd-bol-1");
    assert_eq!(header(message, "dataloy-id"), "fwd-bol-1");
    assert_eq!(header(message, "dataloy-dead-letter-reason"), "unroutable");
    assert_eq!(header(message, "dataloy-dead-letter-sink"), "rabbitmq");
    let error = header(message, "dataloy-dead-letter-error");
    assert!(
        error.contains("no queue is bound") && error.contains("BunkerOrderLine.U"),
        "{error}"
    );
    assert_eq!(header(message, "dataloy-dead-letter-attempts"), "1");
    for time in ["first", "last"] {
        let value = header(message, &format!("dataloy-dead-letter-{time}-attempt"));
        assert!(
            value.len() == 24 && value.ends_with('Z') && value.starts_with("20"),
            "{value}"
        );
    }
    assert_eq!(header(message, "dataloy-object-type"), "BunkerOrderLine");
    assert_eq!(header(message, "dataloy-event-type"), "U");
    assert_eq!(header(message, "traceparent"), TRACEPARENT);
    assert!(header(message, "dataloy-dead-letter-entry").ends_with("-rabbitmq"));
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"rabbitmq\"}")
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
            .await,
        0.0
    );
    assert_eq!(entries(&app), 1, "the local store keeps the entry");

    // Act: restart on the same spool and dead-letter store.
    let dir = app.stop().await;
    let restarted = spawn_app_on(dir.path(), |s| {
        with_dlx(s, &exchange, &dlx, "{sink}.{reason}")
    })
    .await;

    // Assert: nothing is forwarded again, and the entry is still not waiting.
    assert!(
        drain(&dead, 0, Duration::from_secs(3)).await.is_empty(),
        "forwarded again after a restart"
    );
    assert_eq!(
        restarted
            .metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"rabbitmq\"}")
            .await,
        0.0
    );
    assert_eq!(
        restarted
            .metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
            .await,
        0.0
    );
    drop(dir);
}

#[tokio::test]
async fn forwarding_waits_for_a_dlx_that_does_not_exist_yet_without_holding_the_stream_back() {
    // Arrange: the DLX is not declared.
    let exchange = unique("x-fwd-wait");
    let dlx = unique("dlx-fwd-wait");
    let port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| with_dlx(s, &exchange, &dlx, "{sink}.{reason}")).await;

    // Act: a dead letter, then a notification that is delivered.
    let body = of_type("BunkerOrderLine", "fwd-wait-1");
    assert_eq!(app.post(body.clone()).await.status(), 200);
    assert_eq!(app.post(sample_with_id("fwd-wait-2")).await.status(), 200);

    // Assert: the stream moved on; the forward is retried and waits.
    let delivered = drain(&port_calls, 1, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(rabbitmq_broker::message_id(&delivered[0]), "fwd-wait-2");
    assert!(
        eventually(|| async {
            app.metric(
                "dataloy_gateway_dead_letter_forward_errors_total{destination=\"rabbitmq\",kind=\"unavailable\"}",
            )
            .await
                >= 2.0
        })
        .await,
        "retried"
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"rabbitmq\"}")
            .await,
        0.0
    );

    // Act: two more dead letters while the first is still being retried.
    for id in ["fwd-wait-3", "fwd-wait-4"] {
        assert_eq!(app.post(of_type("BunkerOrderLine", id)).await.status(), 200);
    }

    // Assert: the gauge counts them too (it stayed at the scan's count before).
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
                .await
                == 3.0
        })
        .await,
        "entries stored while one is retried are waiting"
    );

    // Act: the operator declares the DLX and binds a queue.
    let dead = bind_queue(&dlx, "#").await;

    // Assert: forwarded, once each, oldest first.
    let got = drain(&dead, 3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].delivery.data, body);
    assert_eq!(rabbitmq_broker::message_id(&got[0]), "fwd-wait-1");
    assert_eq!(rabbitmq_broker::message_id(&got[1]), "fwd-wait-3");
    assert_eq!(rabbitmq_broker::message_id(&got[2]), "fwd-wait-4");
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
                .await
                == 0.0
        })
        .await
    );
}

#[tokio::test]
async fn an_entry_the_dlx_cannot_route_is_set_aside_and_the_next_one_is_forwarded() {
    // Arrange: the DLX routes by object type and has a queue for `Vessel` only.
    let exchange = unique("x-fwd-refuse");
    let dlx = unique("dlx-fwd-refuse");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let vessels = bind_queue(&dlx, "Vessel").await;
    let app = spawn_app_with(|s, _| with_dlx(s, &exchange, &dlx, "{objectType}")).await;

    // Act: two notifications the sink cannot route; only the second one the DLX can.
    assert_eq!(
        app.post(of_type("BunkerOrderLine", "fwd-refuse-1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post(of_type("Vessel", "fwd-refuse-2")).await.status(),
        200
    );

    // Assert
    let got = drain(&vessels, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(rabbitmq_broker::message_id(&got[0]), "fwd-refuse-2");
    assert!(
        eventually(|| async {
            app.metric(
                "dataloy_gateway_dead_letter_forward_errors_total{destination=\"rabbitmq\",kind=\"unroutable\"}",
            )
            .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"rabbitmq\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
            .await,
        0.0
    );
    assert_eq!(entries(&app), 2, "both stay in the local store");

    // The operator's listing says what became of each, oldest first.
    let config = crate::dead_letters_cli::write_config(
        app.dir.path(),
        &app.dir.path().join("spool"),
        &app.events_path,
        &exchange,
        "",
    );
    let listing = crate::dead_letters_cli::json(&config, &["dead-letters", "list", "--json"]);
    let forward: Vec<String> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["id"], e["forward"]["rabbitmq"]))
        .collect();
    assert_eq!(
        forward,
        [
            "\"fwd-refuse-1\" \"refused\"",
            "\"fwd-refuse-2\" \"forwarded\""
        ],
        "{listing}"
    );
}

#[tokio::test]
async fn a_dead_letter_reaches_the_kafka_dead_letter_topic_with_its_headers() {
    // Arrange: Kafka (the connection) and RabbitMQ (which refuses the notification).
    let brokers = kafka_broker::brokers();
    let prefix = unique("t-fwd");
    create_topic(&brokers, &format!("{prefix}.BunkerOrderLine"), 1).await;
    let dlt = unique("dlt-fwd");
    create_topic(&brokers, &dlt, 1).await;
    let exchange = unique("x-fwd-kafka");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(kafka_settings(&brokers, &prefix));
        s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange));
        s.dead_letters.forward = DeadLetterForwardSettings {
            kafka: Some(KafkaForwardSettings { topic: dlt.clone() }),
            retry_initial_backoff: Duration::from_millis(50),
            retry_max_backoff: Duration::from_millis(300),
            ..DeadLetterForwardSettings::default()
        };
    })
    .await;

    // Act
    let body = of_type("BunkerOrderLine", "fwd-kafka-1");
    post_traced(&app, body.clone()).await;

    // Assert
    let got = kafka_broker::consume(&brokers, &dlt, 1, 1, Duration::from_secs(40)).await;
    assert_eq!(got.len(), 1, "forwarded once");
    let message = &got[0];
    assert_eq!(rdkafka::Message::payload(message), Some(&body[..]));
    let headers = header_map(message);
    assert_eq!(headers["dataloy-id"], "fwd-kafka-1");
    assert_eq!(headers["dataloy-dead-letter-reason"], "unroutable");
    assert_eq!(headers["dataloy-dead-letter-sink"], "rabbitmq");
    assert!(headers["dataloy-dead-letter-error"].contains("no queue is bound"));
    assert_eq!(headers["dataloy-dead-letter-attempts"], "1");
    assert!(headers["dataloy-dead-letter-first-attempt"].ends_with('Z'));
    assert!(headers["dataloy-dead-letter-last-attempt"].ends_with('Z'));
    assert_eq!(headers["dataloy-object-type"], "BunkerOrderLine");
    assert_eq!(headers["dataloy-event-type"], "U");
    assert_eq!(headers["traceparent"], TRACEPARENT);
    assert!(
        eventually(|| async {
            app.metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"kafka\"}")
                .await
                == 1.0
        })
        .await
    );
}

#[test]
fn forwarding_without_the_sink_that_holds_its_connection_is_refused_naming_both_keys() {
    let base = "[sinks.file]\npath = \"events.jsonl\"\n";
    let kafka = config_error(&format!(
        "{base}[dead_letters.forward.kafka]\ntopic = \"dlt\"\n"
    ));
    assert!(
        kafka.contains("dead_letters.forward.kafka") && kafka.contains("[sinks.kafka]"),
        "{kafka}"
    );
    let rabbitmq = config_error(&format!(
        "{base}[dead_letters.forward.rabbitmq]\nexchange = \"dlx\"\n"
    ));
    assert!(
        rabbitmq.contains("dead_letters.forward.rabbitmq") && rabbitmq.contains("[sinks.rabbitmq]"),
        "{rabbitmq}"
    );
    let rabbit = "[sinks.rabbitmq]\nuri = \"amqp://127.0.0.1:5672/%2f\"\nexchange = \"x\"\n";
    let placeholder = config_error(&format!(
        "{rabbit}[dead_letters.forward.rabbitmq]\nexchange = \"dlx\"\nrouting_key = \"{{id}}\"\n"
    ));
    assert!(
        placeholder.contains("dead_letters.forward.rabbitmq.routing_key")
            && placeholder.contains("{id}"),
        "{placeholder}"
    );
    let no_exchange = config_error(&format!("{rabbit}[dead_letters.forward.rabbitmq]\n"));
    assert!(
        no_exchange.contains("dead_letters.forward.rabbitmq.exchange"),
        "{no_exchange}"
    );
    let topic = config_error(
        "[sinks.kafka]\nbrokers = \"127.0.0.1:9092\"\n[dead_letters.forward.kafka]\ntopic = \"dead letters\"\n",
    );
    assert!(
        topic.contains("dead_letters.forward.kafka.topic"),
        "{topic}"
    );
}

#[tokio::test]
async fn after_sigkill_the_real_binary_does_not_forward_a_confirmed_dead_letter_again() {
    // Arrange: the real binary, forwarding to a DLX with a queue for everything.
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("x-fwd-kill");
    let dlx = unique("dlx-fwd-kill");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let dead = bind_queue(&dlx, "#").await;
    let config = crate::dead_letters_cli::write_config(
        dir.path(),
        &dir.path().join("spool"),
        &dir.path().join("out/events.jsonl"),
        &exchange,
        &format!(
            "[dead_letters.forward]\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \
             \"300ms\"\nscan_interval = \"300ms\"\n[dead_letters.forward.rabbitmq]\nexchange = \
             \"{dlx}\"\n"
        ),
    );
    let post = |port: u16, body: Vec<u8>| async move {
        let answer = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/webhooks/dataloy"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    };
    let (mut gateway, port) = crate::dead_letters_cli::start(&config);
    post(port, of_type("BunkerOrderLine", "fwd-kill-1")).await;
    let first = drain(&dead, 1, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(rabbitmq_broker::message_id(&first[0]), "fwd-kill-1");

    // Act: SIGKILL once it was confirmed (and marked), then start again.
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let (_gateway, port) = crate::dead_letters_cli::start(&config);

    // Assert: not forwarded again; a new dead letter still is, once.
    assert!(
        drain(&dead, 0, Duration::from_secs(3)).await.is_empty(),
        "forwarded again after SIGKILL"
    );
    post(port, of_type("BunkerOrderLine", "fwd-kill-2")).await;
    let second = drain(&dead, 1, Duration::from_secs(30)).await;
    let ids: Vec<String> = second.iter().map(rabbitmq_broker::message_id).collect();
    assert_eq!(ids, ["fwd-kill-2"]);
}

#[tokio::test]
async fn an_entry_purged_while_its_dlx_is_missing_is_not_forwarded_and_stops_waiting() {
    // Arrange: the DLX is not declared; one dead letter waits.
    let exchange = unique("x-fwd-purge");
    let dlx = unique("dlx-fwd-purge");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| with_dlx(s, &exchange, &dlx, "{sink}.{reason}")).await;
    assert_eq!(
        app.post(of_type("BunkerOrderLine", "fwd-purge-1"))
            .await
            .status(),
        200
    );
    let waiting = "dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}";
    assert!(eventually(|| async { app.metric(waiting).await == 1.0 }).await);

    // Act: an operator's purge (what `dead-letters purge` does), then the DLX appears.
    let store =
        DeadLetterStore::inspect(&app.dir.path().join("spool/dead-letters"), 1 << 30).unwrap();
    for name in store.select(Some("fwd-purge-1"), None).unwrap() {
        store.remove(&name).unwrap();
    }
    assert!(eventually(|| async { app.metric(waiting).await == 0.0 }).await);
    let dead = bind_queue(&dlx, "#").await;

    // Assert: nothing is forwarded.
    assert!(drain(&dead, 0, Duration::from_secs(2)).await.is_empty());
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forwarded_total{destination=\"rabbitmq\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn an_existing_dead_letter_waits_while_the_broker_is_unreachable_and_is_forwarded_once_it_is_reachable(
) {
    // Arrange: a dead letter stored while forwarding was off.
    let exchange = unique("x-fwd-port");
    let dlx = unique("dlx-fwd-port");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let dead = bind_queue(&dlx, "#").await;
    let app = spawn_app_with(|s, _| s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange))).await;
    assert_eq!(
        app.post(of_type("BunkerOrderLine", "fwd-port-1"))
            .await
            .status(),
        200
    );
    assert!(eventually(|| async { entries(&app) == 1 }).await);
    let dir = app.stop().await;

    // Act: forwarding on, with the RabbitMQ URI on a port nothing listens on.
    let closed = free_port();
    let unreachable = spawn_app_on(dir.path(), |s| {
        with_dlx(s, &exchange, &dlx, "{sink}.{reason}");
        let sink = s.sinks.rabbitmq.as_mut().unwrap();
        sink.uri = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f").into();
    })
    .await;

    // Assert: it waits, and the attempts are counted.
    assert!(
        eventually(|| async {
            unreachable
                .metric(
                    "dataloy_gateway_dead_letter_forward_errors_total{destination=\"rabbitmq\",kind=\"unavailable\"}",
                )
                .await
                >= 2.0
        })
        .await
    );
    assert_eq!(
        unreachable
            .metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
            .await,
        1.0
    );
    // (The spool and store stay in `dir`; this app's own scratch directory goes.)
    drop(unreachable.stop().await);
    assert!(drain(&dead, 0, Duration::from_millis(500)).await.is_empty());

    // Act: the right configuration.
    let reachable = spawn_app_on(dir.path(), |s| {
        with_dlx(s, &exchange, &dlx, "{sink}.{reason}")
    })
    .await;

    // Assert: forwarded, once.
    let got = drain(&dead, 1, Duration::from_secs(20)).await;
    let ids: Vec<String> = got.iter().map(rabbitmq_broker::message_id).collect();
    assert_eq!(ids, ["fwd-port-1"]);
    assert!(
        eventually(|| async {
            reachable
                .metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"rabbitmq\"}")
                .await
                == 0.0
        })
        .await
    );
    drop(dir);
}

#[tokio::test]
async fn forwarding_to_kafka_waits_while_the_broker_is_away_and_resumes_when_it_is_back() {
    // Arrange: Kafka on a broker of this test's own, which is stopped before the dead letter.
    let data = tempfile::tempdir().unwrap();
    let mut broker = kafka_broker::OwnBroker::start(data.path());
    let brokers = broker.address();
    let dlt = unique("dlt-fwd-away");
    let exchange = unique("x-fwd-away");
    let _port_calls = bind_queue(&exchange, "PortCall.*").await;
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(dataloy_gateway::config::KafkaSinkSettings {
            // Each attempt while the broker is away fails after this.
            message_timeout: Duration::from_secs(1),
            ..kafka_settings(&brokers, &unique("t-fwd-away"))
        });
        s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange));
        s.dead_letters.forward = DeadLetterForwardSettings {
            kafka: Some(KafkaForwardSettings { topic: dlt.clone() }),
            retry_initial_backoff: Duration::from_millis(50),
            retry_max_backoff: Duration::from_millis(300),
            ..DeadLetterForwardSettings::default()
        };
    })
    .await;
    broker.stop();

    // Act: a dead letter while the broker is away.
    assert_eq!(
        app.post(of_type("BunkerOrderLine", "fwd-away-1"))
            .await
            .status(),
        200
    );

    // Assert: it waits, retried again and again (never given up), each attempt counted.
    assert!(
        eventually(|| async {
            app.metric(
                "dataloy_gateway_dead_letter_forward_errors_total{destination=\"kafka\",kind=\"unavailable\"}",
            )
            .await
                >= 4.0
        })
        .await,
        "failed attempts, retried"
    );
    assert_eq!(
        app.metric("dataloy_gateway_dead_letters_forward_waiting{destination=\"kafka\"}")
            .await,
        1.0
    );

    // Act: the broker comes back (empty: tansu keeps its data in memory) with the topic.
    broker.restart();
    create_topic(&brokers, &dlt, 1).await;

    // Assert: forwarded.
    let got = kafka_broker::consume(&brokers, &dlt, 1, 1, Duration::from_secs(60)).await;
    let ids: Vec<String> = got.iter().map(kafka_broker::message_id).collect();
    assert_eq!(ids, ["fwd-away-1"]);
}
