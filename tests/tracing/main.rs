//! OpenTelemetry spans, exported to an in-memory span exporter through the same installation
//! the server uses (`telemetry::otel`), against the real server, Kafka and RabbitMQ: an incoming
//! `traceparent` is the parent of the request's SERVER span; each consumed message's
//! `traceparent` is the context of its exported PRODUCER span (`send {topic}`, `publish
//! {exchange}:{routing key}`), a child of the SERVER span, with the messaging attributes; without
//! a `traceparent` the SERVER span starts the trace; an unsampled caller is followed (nothing
//! exported, the messages still carry its trace, unsampled).
//!
//! Its own test binary: span export is installed in the global subscriber, once per process, and
//! must not change what the other tests (spans not exported) see.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/kafka_broker.rs"]
mod kafka_broker;
#[allow(dead_code)]
#[path = "../api/rabbitmq_broker.rs"]
mod rabbitmq_broker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dataloy_gateway::config::{
    KafkaSinkSettings, LogFormat, LogSettings, RabbitMqSinkSettings, TracingSettings,
};
use dataloy_gateway::telemetry::otel;
use dataloy_gateway::trace_context::TraceParent;
use lapin::types::AMQPValue;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use secrecy::SecretString;

use helpers::*;
use kafka_broker::*;
use rabbitmq_broker::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Keeps every span it is given.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Captured {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// The process's exporter, installed on first use.
fn exported() -> &'static Captured {
    static EXPORTER: OnceLock<Captured> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = Captured::default();
        let log = LogSettings {
            format: LogFormat::Json,
            level: "warn".into(),
        };
        let (_, export) =
            otel::init_with_exporter(&log, &TracingSettings::default(), exporter.clone());
        // Kept for the life of the process: dropping it would not stop export, leaking is fine.
        std::mem::forget(export.expect("the first global subscriber of this test binary"));
        exporter
    })
}

/// The spans of `trace` exported so far.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exported()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect()
}

/// Waits until `count` spans of `trace` were exported.
async fn wait_for_spans(trace: TraceId, count: usize) -> Vec<SpanData> {
    assert!(
        eventually(|| async { spans_of(trace).len() >= count }).await,
        "{count} spans of {trace}: {:#?}",
        spans_of(trace)
    );
    spans_of(trace)
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).map_or_else(|| "<absent>".into(), |v| v.as_str().into_owned())
}

struct Brokers {
    topic: String,
    exchange: String,
    queue: String,
}

async fn brokers_for(prefix: &str) -> Brokers {
    let topic = unique(prefix);
    create_topic(&brokers(), &topic, 1).await;
    let exchange = unique(&format!("x-{prefix}"));
    let queue = bind_queue(&exchange, "#").await;
    Brokers {
        topic,
        exchange,
        queue,
    }
}

async fn gateway(to: &Brokers) -> TestApp {
    exported();
    spawn_app_with(|s, _| {
        s.sinks.file = None;
        s.sinks.kafka = Some(KafkaSinkSettings {
            brokers: brokers(),
            topic: to.topic.clone(),
            health_interval: Duration::from_millis(200),
            message_timeout: Duration::from_secs(5),
            ..KafkaSinkSettings::default()
        });
        s.sinks.rabbitmq = Some(RabbitMqSinkSettings {
            uri: SecretString::from(AMQP_URI),
            exchange: to.exchange.clone(),
            health_interval: Duration::from_millis(200),
            ..RabbitMqSinkSettings::default()
        });
    })
    .await
}

async fn post(app: &TestApp, id: &str, headers: &[(&str, &str)]) {
    let mut request = app
        .client
        .post(format!("{}/webhooks/dataloy", app.address))
        .body(sample_with_id(id));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
}

/// The `traceparent` (and `tracestate`) of the one Kafka record and the one RabbitMQ message.
async fn message_contexts(to: &Brokers) -> [(TraceParent, Option<String>); 2] {
    let records = consume(&brokers(), &to.topic, 1, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1);
    let kafka = header_map(&records[0]);
    let messages = drain(&to.queue, 1, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 1);
    let headers = messages[0].delivery.properties.headers().as_ref().unwrap();
    let amqp: HashMap<String, String> = headers
        .inner()
        .iter()
        .filter_map(|(k, v)| match v {
            AMQPValue::LongString(v) => Some((k.to_string(), v.to_string())),
            _ => None,
        })
        .collect();
    [kafka, amqp].map(|h| {
        let parent = TraceParent::parse(h["traceparent"].as_bytes()).expect("a valid traceparent");
        (parent, h.get("tracestate").cloned())
    })
}

fn ids(parent: &TraceParent) -> (TraceId, SpanId) {
    (
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
    )
}

fn one<'a>(spans: &'a [SpanData], kind: SpanKind, name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == kind && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span `{name}` in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn an_incoming_traceparent_parents_the_server_span_and_each_message_carries_its_producer_span(
) {
    // Arrange
    let to = brokers_for("otel").await;
    let app = gateway(&to).await;
    let (trace, caller) = ids(&TraceParent::parse(TRACEPARENT.as_bytes()).unwrap());

    // Act
    post(
        &app,
        "otel-1",
        &[("traceparent", TRACEPARENT), ("tracestate", "rojo=1")],
    )
    .await;
    let [(kafka, kafka_state), (amqp, amqp_state)] = message_contexts(&to).await;
    let spans = wait_for_spans(trace, 3).await;

    // Assert: the SERVER span is the caller's child.
    let server = one(&spans, SpanKind::Server, "POST /webhooks/dataloy");
    assert_eq!(server.parent_span_id, caller);
    assert!(server.parent_span_is_remote);
    assert_eq!(text(server, "http.response.status_code"), "200");
    assert_eq!(text(server, "notification_id"), "otel-1");

    // Each message's traceparent is its PRODUCER span, a child of the SERVER span.
    let send = one(&spans, SpanKind::Producer, &format!("send {}", to.topic));
    assert_eq!(ids(&kafka), (trace, send.span_context.span_id()));
    assert!(kafka.is_sampled());
    assert_eq!(send.parent_span_id, server.span_context.span_id());
    assert_eq!(text(send, "messaging.system"), "kafka");
    assert_eq!(text(send, "messaging.destination.name"), to.topic);
    assert_eq!(text(send, "messaging.message.id"), "otel-1");
    assert_eq!(text(send, "messaging.destination.partition.id"), "0");
    assert_eq!(
        text(send, "messaging.kafka.message.key"),
        "PortCall:189126972"
    );
    assert!(
        attribute(send, "messaging.kafka.offset").is_some(),
        "{send:#?}"
    );

    let publish = one(
        &spans,
        SpanKind::Producer,
        &format!("publish {}:PortCall.U", to.exchange),
    );
    assert_eq!(ids(&amqp), (trace, publish.span_context.span_id()));
    assert_eq!(publish.parent_span_id, server.span_context.span_id());
    assert_eq!(text(publish, "messaging.system"), "rabbitmq");
    assert_eq!(text(publish, "messaging.destination.name"), to.exchange);
    assert_eq!(
        text(publish, "messaging.rabbitmq.destination.routing_key"),
        "PortCall.U"
    );
    assert_eq!(text(publish, "messaging.message.id"), "otel-1");

    // The vendors' tracestate travels on.
    assert_eq!(kafka_state.as_deref(), Some("rojo=1"));
    assert_eq!(amqp_state.as_deref(), Some("rojo=1"));
}

#[tokio::test]
async fn without_a_traceparent_the_server_span_starts_the_trace() {
    let to = brokers_for("otel-root").await;
    let app = gateway(&to).await;

    post(&app, "otel-root-1", &[]).await;
    let [(kafka, _), (amqp, _)] = message_contexts(&to).await;

    let (trace, _) = ids(&kafka);
    assert_eq!(ids(&amqp).0, trace, "one trace for both messages");
    let spans = wait_for_spans(trace, 3).await;
    let server = one(&spans, SpanKind::Server, "POST /webhooks/dataloy");
    assert_eq!(server.parent_span_id, SpanId::INVALID, "a root");
    let send = one(&spans, SpanKind::Producer, &format!("send {}", to.topic));
    assert_eq!(ids(&kafka).1, send.span_context.span_id());
    assert_eq!(send.parent_span_id, server.span_context.span_id());
}

#[tokio::test]
async fn an_unsampled_caller_is_followed_and_its_trace_still_reaches_the_messages() {
    let to = brokers_for("otel-unsampled").await;
    let app = gateway(&to).await;
    let unsampled = TRACEPARENT.replace("-01", "-00").replace("4bf9", "5bf9");
    let (trace, caller) = ids(&TraceParent::parse(unsampled.as_bytes()).unwrap());

    post(&app, "otel-unsampled-1", &[("traceparent", &unsampled)]).await;
    let [(kafka, _), (amqp, _)] = message_contexts(&to).await;

    for parent in [kafka, amqp] {
        assert_eq!(ids(&parent).0, trace);
        assert_ne!(
            ids(&parent).1,
            caller,
            "the gateway's own (unrecorded) span"
        );
        assert!(!parent.is_sampled());
    }
    // Something sampled of this test arrives after the spans it would come with.
    post(&app, "otel-unsampled-2", &[]).await;
    consume(&brokers(), &to.topic, 1, 2, Duration::from_secs(30)).await;
    assert!(spans_of(trace).is_empty(), "{:#?}", spans_of(trace));
}
