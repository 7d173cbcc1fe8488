//! W3C trace context across the hop, with spans not exported (the default): the `traceparent`
//! and `tracestate` a webhook carries reach the real Kafka and RabbitMQ messages unchanged (the
//! caller's trace continues in the consumers), through the spool across a restart, and through
//! dead letters and `dead-letters replay`; without a valid `traceparent` each notification starts
//! a new trace, and an invalid one is never copied onto a queue. The body stays byte for byte.

use std::collections::HashMap;
use std::time::Duration;

use dataloy_gateway::config::{RabbitMqSinkSettings, Settings, UnroutablePolicy};
use dataloy_gateway::trace_context::TraceParent;
use lapin::message::BasicGetMessage;
use lapin::types::AMQPValue;
use rdkafka::message::{Message, OwnedMessage};

use crate::dead_letters_cli::{json, write_config};
use crate::helpers::*;
use crate::kafka::kafka_settings;
use crate::kafka_broker::*;
use crate::rabbitmq::{of_type, rabbitmq_settings};
use crate::rabbitmq_broker::*;

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Posts `body` with these extra headers.
pub async fn post_with(app: &TestApp, body: Vec<u8>, headers: &[(&str, &str)]) -> u16 {
    let mut request = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Every header of an AMQP message, as text.
pub fn amqp_headers(message: &BasicGetMessage) -> HashMap<String, String> {
    let headers = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .expect("headers");
    headers
        .inner()
        .iter()
        .map(|(name, value)| match value {
            AMQPValue::LongString(text) => (name.to_string(), text.to_string()),
            other => panic!("header {name} is not a long string: {other:?}"),
        })
        .collect()
}

/// Kafka (topic `{prefix}`) and RabbitMQ (`exchange`), no file sink.
fn with_both(settings: &mut Settings, prefix: &str, exchange: &str) {
    settings.sinks.file = None;
    let mut kafka = kafka_settings(&brokers(), prefix);
    kafka.topic = prefix.to_owned();
    settings.sinks.kafka = Some(kafka);
    settings.sinks.rabbitmq = Some(rabbitmq_settings(exchange));
}

struct Delivered {
    kafka: Vec<OwnedMessage>,
    rabbitmq: Vec<BasicGetMessage>,
}

/// A body and the headers it is posted with.
type Post<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>);

/// Posts each `(body, headers)` to a gateway with both sinks and returns the messages, in order.
async fn through_both(posts: Vec<Post<'_>>) -> Delivered {
    let prefix = unique("trace");
    create_topic(&brokers(), &prefix, 1).await;
    let exchange = unique("x-trace");
    let queue = bind_queue(&exchange, "#").await;
    let app = spawn_app_with(|s, _| with_both(s, &prefix, &exchange)).await;
    let count = posts.len();
    for (body, headers) in posts {
        assert_eq!(post_with(&app, body, &headers).await, 200);
    }
    let kafka = consume(&brokers(), &prefix, 1, count, Duration::from_secs(30)).await;
    let rabbitmq = drain(&queue, count, Duration::from_secs(30)).await;
    assert_eq!((kafka.len(), rabbitmq.len()), (count, count));
    Delivered { kafka, rabbitmq }
}

#[tokio::test]
async fn a_received_traceparent_continues_unchanged_in_kafka_and_amqp_headers() {
    // Arrange: one traceparent, tracestate in two headers with optional whitespace.
    let body = sample_with_id("tc-1");
    let headers = vec![
        ("traceparent", TRACEPARENT),
        ("tracestate", " rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE"),
        ("tracestate", "t3n@dt=x y"),
    ];

    // Act
    let delivered = through_both(vec![(body.clone(), headers)]).await;

    // Assert: the same context on both, tracestate combined in canonical form; nothing else
    // changed, and no CloudEvents header while that is off.
    let canonical = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t3n@dt=x y";
    let kafka = header_map(&delivered.kafka[0]);
    assert_eq!(kafka["traceparent"], TRACEPARENT);
    assert_eq!(kafka["tracestate"], canonical);
    assert_eq!(kafka["dataloy-id"], "tc-1");
    assert!(!kafka
        .keys()
        .any(|k| k.starts_with("ce_") || k == "content-type"));
    assert_eq!(
        delivered.kafka[0].payload(),
        Some(&body[..]),
        "byte for byte"
    );
    let amqp = amqp_headers(&delivered.rabbitmq[0]);
    assert_eq!(amqp["traceparent"], TRACEPARENT);
    assert_eq!(amqp["tracestate"], canonical);
    assert!(!amqp.keys().any(|k| k.starts_with("cloudEvents_")));
    assert_eq!(delivered.rabbitmq[0].delivery.data, body, "byte for byte");
}

#[tokio::test]
async fn without_a_valid_traceparent_each_notification_starts_a_new_trace_and_nothing_invalid_is_copied(
) {
    // Arrange: none; upper-case hex (invalid) with a tracestate; two valid traceparents
    // (ambiguous); a version-00 value with a trailing field.
    let invalid = TRACEPARENT.to_uppercase();
    let trailing = format!("{TRACEPARENT}-00");
    let posts = vec![
        (sample_with_id("nt-0"), vec![]),
        (
            sample_with_id("nt-1"),
            vec![("traceparent", invalid.as_str()), ("tracestate", "a=1")],
        ),
        (
            sample_with_id("nt-2"),
            vec![("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],
        ),
        (
            sample_with_id("nt-3"),
            vec![("traceparent", trailing.as_str())],
        ),
    ];

    // Act
    let delivered = through_both(posts).await;

    // Assert: a valid, sampled, new trace each, the same on both sinks; no tracestate.
    let mut trace_ids = Vec::new();
    for (kafka, amqp) in delivered.kafka.iter().zip(&delivered.rabbitmq) {
        let kafka = header_map(kafka);
        let amqp = amqp_headers(amqp);
        let id = &kafka["dataloy-id"];
        let parent = TraceParent::parse(kafka["traceparent"].as_bytes())
            .unwrap_or_else(|| panic!("{id}: a valid traceparent"));
        assert!(parent.is_sampled(), "{id}");
        assert_eq!(kafka["traceparent"], parent.render(), "{id}: version 00");
        assert_eq!(amqp["traceparent"], kafka["traceparent"], "{id}");
        assert_ne!(
            parent.trace_id,
            TraceParent::parse(TRACEPARENT.as_bytes()).unwrap().trace_id
        );
        assert!(
            !kafka.contains_key("tracestate") && !amqp.contains_key("tracestate"),
            "{id}"
        );
        trace_ids.push(parent.trace_id);
    }
    trace_ids.sort();
    trace_ids.dedup();
    assert_eq!(trace_ids.len(), 4, "a trace of its own each");
}

#[tokio::test]
async fn the_trace_context_kept_in_the_spool_survives_a_restart() {
    // Arrange: no queue is bound, so the notification stays in the spool (retried).
    let exchange = unique("x-trace-restart");
    let rabbitmq = move |exchange: &str| RabbitMqSinkSettings {
        unroutable: UnroutablePolicy::Retry,
        ..rabbitmq_settings(exchange)
    };
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(rabbitmq(&exchange));
    })
    .await;
    let body = sample_with_id("restart-1");
    let headers = [("traceparent", TRACEPARENT), ("tracestate", "rojo=1")];
    assert_eq!(post_with(&app, body.clone(), &headers).await, 200);
    let kept = app.stop().await;

    // Act: a queue is bound, the gateway starts again on the same spool.
    let queue = bind_queue(&exchange, "#").await;
    let spool = kept.path().join("spool");
    let app = spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.rabbitmq = Some(rabbitmq(&exchange));
        s.spool.dir = spool;
    })
    .await;

    // Assert
    let got = drain(&queue, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let amqp = amqp_headers(&got[0]);
    assert_eq!(
        (amqp["traceparent"].as_str(), amqp["tracestate"].as_str()),
        (TRACEPARENT, "rojo=1")
    );
    assert_eq!(got[0].delivery.data, body);
    app.stop().await;
}

#[tokio::test]
async fn a_dead_letter_keeps_its_trace_context_and_a_replay_continues_it() {
    // Arrange: unroutable, so it goes to dead letters.
    let exchange = unique("x-trace-dl");
    let app = spawn_app_with(|s, _| s.sinks.rabbitmq = Some(rabbitmq_settings(&exchange))).await;
    let config = write_config(
        app.dir.path(),
        &app.dir.path().join("spool"),
        &app.events_path,
        &exchange,
        "",
    );
    let body = of_type("BunkerOrderLine", "dl-trace-1");
    let headers = [
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ];
    assert_eq!(post_with(&app, body.clone(), &headers).await, 200);
    assert!(
        eventually(|| async { json(&config, &["dead-letters", "list", "--json"])["count"] == 1 })
            .await
    );
    let shown = json(&config, &["dead-letters", "show", "dl-trace-1", "--json"]);
    assert_eq!(shown[0]["traceparent"], TRACEPARENT, "{shown}");

    // Act
    let queue = bind_queue(&exchange, "BunkerOrderLine.*").await;
    let replayed = json(&config, &["dead-letters", "replay", "--json"]);

    // Assert
    assert_eq!(replayed["done"], 1, "{replayed}");
    let got = drain(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let amqp = amqp_headers(&got[0]);
    assert_eq!(amqp["traceparent"], TRACEPARENT);
    assert_eq!(amqp["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(got[0].delivery.data, body);
}
