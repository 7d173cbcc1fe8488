//! The Kafka sink (rdkafka): an idempotent producer with `acks=all`, so a publish counts only on
//! a successful delivery report and librdkafka's own retries neither reorder nor duplicate. Topic
//! and key come from templates over the envelope; the value is the received body, unchanged.
//! Headers: the `dataloy-*` ones, the trace context (`traceparent`, `tracestate`), and with
//! `[sinks.kafka.cloudevents]` the CloudEvents binary-mode ones (`ce_*`, `content-type`).

mod delivery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureProducer, Producer, ThreadedProducer};

use self::delivery::{BatchReports, Failure, ReportCounter};
use super::cloudevents::{self, CloudEvents};
use super::template::Template;
use super::{PublishError, Sink, SinkError};
use crate::config::KafkaSinkSettings;
use crate::dead_letter::Reason;
use crate::notification::Notification;
use crate::telemetry::spans;
use crate::trace_context::{TraceContext, TRACEPARENT, TRACEPARENT_LEN, TRACESTATE};
use secrecy::ExposeSecret;

/// How long a metadata request of the health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("invalid configuration: `sinks.kafka.properties` {}", without_value(.0))]
    Client(KafkaError),
}

/// librdkafka's error text, without the property's value: rdkafka prints it, and it may be a
/// secret (`sasl.password` under a misspelt name).
fn without_value(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, key, _) => {
            format!("{description} (property `{key}`; its value is not shown)")
        }
        other => other.to_string(),
    }
}

/// librdkafka properties that turn the broker certificate's check off, and the values that do.
const UNVERIFIED_TLS: &[(&str, &str)] = &[
    ("enable.ssl.certificate.verification", "false"),
    ("ssl.endpoint.identification.algorithm", "none"),
];

/// Says loudly, at every start, that Kafka's TLS is not verified (allowed for development: the
/// property is explicit, and this log line keeps it from going unnoticed).
fn warn_unverified_tls(settings: &KafkaSinkSettings) {
    for (name, off) in UNVERIFIED_TLS {
        let value = settings
            .properties
            .get(*name)
            .map(|v| v.expose_secret().trim().to_ascii_lowercase());
        if value.as_deref() == Some(*off) {
            tracing::error!(
                sink = "kafka",
                property = *name,
                "sinks.kafka.properties.\"{name}\" = \"{off}\": the Kafka brokers' TLS certificates \
                 are NOT verified; anyone on the path can read and alter notifications. Use this \
                 for development only; give the brokers' CA in ssl.ca.location instead"
            );
        }
    }
}

pub struct KafkaSink {
    config: ClientConfig,
    producer: RwLock<ThreadedProducer<ReportCounter>>,
    /// Set when the producer timed out or failed fatally: its idempotence state (producer id
    /// and sequence numbers) may no longer match the broker's, e.g. after a broker lost its
    /// state. A fresh producer is created once the broker answers again.
    stale: AtomicBool,
    topic: Template,
    key: Template,
    up: Arc<AtomicBool>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    missing_topics: MissingTopics,
    cloudevents: Option<CloudEvents>,
}

impl KafkaSink {
    /// Creates the producer and starts the broker health probe. Connecting happens in the
    /// background: an unreachable broker makes the sink down, not the start-up fail.
    /// `max_body_bytes` (from `server.max_body_bytes`) sizes the producer's `message.max.bytes`,
    /// so that every body the gateway accepts fits a message.
    pub fn new(settings: &KafkaSinkSettings, max_body_bytes: u64) -> Result<Self, KafkaSinkError> {
        warn_unverified_tls(settings);
        let config = client_config(settings, max_body_bytes);
        let producer = config
            .create_with_context(ReportCounter)
            .map_err(KafkaSinkError::Client)?;
        // The probe has a client of its own, so its view of the broker does not depend on the
        // producer's state.
        let probe_client: FutureProducer = config
            .clone()
            .set("enable.idempotence", "false")
            .create()
            .map_err(KafkaSinkError::Client)?;
        let topic = Template::parse(&settings.topic).expect("validated at load");
        let key = Template::parse(&settings.key).expect("validated at load");
        let up = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(probe_broker(
            probe_client,
            up.clone(),
            topic.is_constant().then(|| settings.topic.clone()),
            settings.health_interval,
        ));
        Ok(Self {
            config,
            producer: RwLock::new(producer),
            stale: AtomicBool::new(false),
            topic,
            key,
            up,
            probe: Mutex::new(Some(probe)),
            missing_topics: MissingTopics {
                grace: settings.missing_topic_grace,
                since: Mutex::new(HashMap::new()),
            },
            cloudevents: CloudEvents::from_settings(&settings.cloudevents),
        })
    }
}

impl KafkaSink {
    /// The producer to publish with, replacing a stale one once the broker answers again.
    fn current_producer(&self) -> Result<ThreadedProducer<ReportCounter>, PublishError> {
        if self.stale.load(Ordering::Relaxed) && self.up.load(Ordering::Relaxed) {
            let fresh = self
                .config
                .create_with_context(ReportCounter)
                .map_err(|e| PublishError::none_confirmed(SinkError::Unavailable(e.to_string())))?;
            tracing::info!(
                sink = "kafka",
                "replaced the Kafka producer after a failed delivery"
            );
            let old = std::mem::replace(&mut *self.producer.write(), fresh);
            // Destroying a librdkafka client can block; keep that off the async threads.
            tokio::task::spawn_blocking(move || drop(old));
            self.stale.store(false, Ordering::Relaxed);
        }
        Ok(self.producer.read().clone())
    }
}

pub(crate) fn client_config(settings: &KafkaSinkSettings, max_body_bytes: u64) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "dataloy-gateway")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            settings.message_timeout.as_millis().to_string(),
        )
        .set("compression.type", settings.compression.as_str())
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set("batch.size", settings.batch_size.bytes().to_string())
        .set(
            "message.max.bytes",
            settings.message_max_bytes(max_body_bytes).to_string(),
        );
    for (name, value) in &settings.properties {
        config.set(name, value.expose_secret());
    }
    config
}

/// Asks the broker for metadata every `interval`; the answer (or its absence) is the sink's
/// health. Also reports plainly when a fixed topic does not exist.
async fn probe_broker(
    producer: FutureProducer,
    up: Arc<AtomicBool>,
    fixed_topic: Option<String>,
    interval: Duration,
) {
    let mut reported_missing = false;
    loop {
        let client = producer.clone();
        let topic = fixed_topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            let metadata = client
                .client()
                .fetch_metadata(topic.as_deref(), PROBE_TIMEOUT)?;
            let missing = metadata
                .topics()
                .iter()
                .any(|t| t.error().is_some() || t.partitions().is_empty());
            Ok::<bool, KafkaError>(topic.is_some() && missing)
        })
        .await;
        match metadata {
            Ok(Ok(topic_missing)) => {
                if !up.swap(true, Ordering::Relaxed) {
                    tracing::info!(sink = "kafka", "Kafka broker reachable");
                }
                if topic_missing && !reported_missing {
                    tracing::error!(
                        sink = "kafka",
                        topic = fixed_topic.as_deref().unwrap_or_default(),
                        "Kafka topic does not exist; create it (notifications stay in the spool)"
                    );
                }
                reported_missing = topic_missing;
            }
            Ok(Err(e)) => {
                if up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(sink = "kafka", error = %e, "Kafka broker unreachable");
                }
            }
            Err(_) => return, // runtime shutting down
        }
        tokio::time::sleep(interval).await;
    }
}

/// A message's headers: the `dataloy-*` ones, its trace context, and the CloudEvents ones.
pub(crate) fn headers(
    notification: &Notification,
    trace: Option<&TraceContext>,
    cloudevents: Option<&CloudEvents>,
) -> OwnedHeaders {
    let env = &notification.envelope;
    let mut headers = OwnedHeaders::new_with_capacity(16)
        .insert(Header {
            key: "dataloy-id",
            value: Some(env.id.as_str()),
        })
        .insert(Header {
            key: "dataloy-object-type",
            value: Some(env.object_type.as_str()),
        })
        .insert(Header {
            key: "dataloy-event-type",
            value: Some(env.event_type.as_str()),
        })
        .insert(Header {
            key: "dataloy-event-time",
            value: Some(env.event_time.as_str()),
        });
    if let Some(key) = env.subscription_key {
        headers = headers.insert(Header {
            key: "dataloy-subscription-key",
            value: Some(&key.to_string()),
        });
    }
    let mut rendered = [0u8; TRACEPARENT_LEN];
    let traceparent = trace.map(|t| t.parent.render_into(&mut rendered));
    let tracestate = trace.map(|t| t.tracestate()).filter(|s| !s.is_empty());
    headers = with(headers, TRACEPARENT, traceparent);
    headers = with(headers, TRACESTATE, tracestate);
    let Some(cloudevents) = cloudevents else {
        return headers;
    };
    let names = &cloudevents::KAFKA;
    let attributes = cloudevents.attributes(env);
    [
        (names.specversion, Some(cloudevents::SPEC_VERSION)),
        (names.id, Some(attributes.id)),
        (names.source, Some(attributes.source)),
        (names.event_type, Some(attributes.event_type.as_str())),
        (names.time, attributes.time.as_deref()),
        (names.subject, Some(attributes.subject.as_str())),
        ("content-type", Some(cloudevents::CONTENT_TYPE)),
        (names.traceparent, traceparent),
        (names.tracestate, tracestate),
    ]
    .into_iter()
    .fold(headers, |headers, (key, value)| with(headers, key, value))
}

/// `headers` with `key` added, when there is a value.
pub(crate) fn with(headers: OwnedHeaders, key: &str, value: Option<&str>) -> OwnedHeaders {
    match value {
        Some(value) => headers.insert(Header {
            key,
            value: Some(value),
        }),
        None => headers,
    }
}

/// Sorts a delivery failure: refused for good, or worth retrying. A missing topic is retried for
/// `sinks.kafka.missing_topic_grace` (it may be being created), then refused.
fn describe(error: KafkaError, topic: &str, missing: &MissingTopics) -> SinkError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            let detail = format!("Kafka topic `{topic}` does not exist: {error}");
            if missing.past_grace(topic) {
                SinkError::refused(Reason::UnknownTopic, detail)
            } else {
                SinkError::Unavailable(detail)
            }
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => SinkError::refused(
            Reason::TooLarge,
            format!("message too large for topic `{topic}`: {error}"),
        ),
        Some(RDKafkaErrorCode::InvalidTopic) => SinkError::refused(
            Reason::InvalidTopic,
            format!("`{topic}` is not a valid Kafka topic name: {error}"),
        ),
        _ => SinkError::Unavailable(error.to_string()),
    }
}

/// Topics found missing, and since when; cleared by any successful delivery.
struct MissingTopics {
    grace: Duration,
    since: Mutex<HashMap<String, Instant>>,
}

impl MissingTopics {
    fn past_grace(&self, topic: &str) -> bool {
        let mut since = self.since.lock();
        let first = *since.entry(topic.to_owned()).or_insert_with(Instant::now);
        first.elapsed() >= self.grace
    }

    fn clear(&self) {
        let mut since = self.since.lock();
        if !since.is_empty() {
            since.clear();
        }
    }
}

impl KafkaSink {
    /// What a failed message's report means for the relay.
    fn describe(&self, failure: Failure, notification: &Notification) -> SinkError {
        match failure {
            Failure::Kafka(e) => {
                let topic = self.topic.render(&notification.envelope);
                describe(e, &topic, &self.missing_topics)
            }
            Failure::Unreported => SinkError::Unavailable("producer dropped the message".into()),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, batch: &[Notification]) -> Result<(), PublishError> {
        let producer = self.current_producer()?;
        // Enqueue the whole batch first (librdkafka batches and pipelines it), then wait until
        // every enqueued message is reported.
        let reports = BatchReports::new();
        for (index, notification) in batch.iter().enumerate() {
            let topic = self.topic.render(&notification.envelope);
            let key = self.key.render(&notification.envelope);
            // While spans are exported, the message carries its PRODUCER span's context; else
            // the notification's own.
            let produced = spans::publish(
                &spans::Publish {
                    system: "kafka",
                    destination: &topic,
                    key: &key,
                    message_id: notification.envelope.id.as_str(),
                },
                notification.trace.as_ref(),
            );
            let (span, trace) = match &produced {
                Some((span, trace)) => (Some(span.clone()), Some(trace)),
                None => (None, notification.trace.as_ref()),
            };
            let headers = headers(notification, trace, self.cloudevents.as_ref());
            let mut record = BaseRecord::with_opaque_to(&topic, reports.expect(index, span))
                .payload(&notification.body[..])
                .key(&key)
                .headers(headers)
                .timestamp(notification.received_at_ms as i64);
            let enqueued = loop {
                match producer.send(record) {
                    Ok(()) => break true,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, mut back)) => {
                        back.delivery_opaque.fail(e);
                        break false;
                    }
                }
            };
            if !enqueued {
                break;
            }
        }
        let Some(failures) = reports.finish().await else {
            self.up.store(true, Ordering::Relaxed);
            self.missing_topics.clear();
            return Ok(());
        };
        let (confirmed, failure) = failures.first.clone();
        let source = self.describe(failure, &batch[confirmed]);
        // Messages after a refused one were sent too (librdkafka pipelines the batch, and they
        // may be on other partitions): the delivered ones, and the ones refused for good, must
        // not be sent again.
        let settled_after = if matches!(source, SinkError::Refused { .. }) {
            failures.settled_after(|index, failure| self.describe(failure, &batch[index]))
        } else {
            Vec::new()
        };
        if matches!(source, SinkError::Unavailable(_)) {
            self.up.store(false, Ordering::Relaxed);
            self.stale.store(true, Ordering::Relaxed);
        }
        if producer.client().fatal_error().is_some() {
            self.stale.store(true, Ordering::Relaxed);
        }
        Err(PublishError {
            confirmed,
            source,
            settled_after,
        })
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn close(&self, within: Duration) {
        if let Some(probe) = self.probe.lock().take() {
            probe.abort();
        }
        let producer = self.producer.read().clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(within)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(sink = "kafka", error = %e, "Kafka producer not flushed at shutdown");
        }
    }
}
