//! Sinks: where notifications are relayed to. Every sink publishes a batch in order and reports
//! success only once its destination confirmed every notification in it, so the relay never
//! acknowledges (and the spool never deletes) something that is not safely delivered. A failure
//! says which notification failed and whether a retry can help: a transient one (broker away,
//! timeout) is retried in order; a refusal for good goes to dead letters and the stream moves on.

pub mod cloudevents;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rabbitmq;
pub mod template;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::SinksSettings;
use crate::dead_letter::Reason;
use crate::metrics::Metrics;
use crate::notification::Notification;

pub use file::FileSink;
#[cfg(feature = "kafka")]
pub use kafka::KafkaSink;
pub use rabbitmq::RabbitMqSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("destination unavailable: {0}")]
    Unavailable(String),
    /// Refused for good: retrying the same notification cannot succeed.
    #[error("destination refused the message ({}): {detail}", reason.as_str())]
    Refused { reason: Reason, detail: String },
}

impl SinkError {
    pub fn refused(reason: Reason, detail: impl Into<String>) -> Self {
        SinkError::Refused {
            reason,
            detail: detail.into(),
        }
    }
}

/// A failed batch: the first `confirmed` notifications were delivered, the one after them
/// failed with `source`. When `source` is a refusal for good, `settled_after` holds what became
/// of the notifications right after it that the destination had already dealt with (delivered,
/// or refused for good too), in order: they must not be sent again. The rest were not
/// delivered.
#[derive(Debug, thiserror::Error)]
#[error("{source} (after {confirmed} confirmed)")]
pub struct PublishError {
    pub confirmed: usize,
    #[source]
    pub source: SinkError,
    pub settled_after: Vec<Result<(), SinkError>>,
}

impl PublishError {
    pub fn none_confirmed(source: impl Into<SinkError>) -> Self {
        Self::after(0, source.into())
    }

    /// `confirmed` delivered, then `source`; nothing known after it.
    pub fn after(confirmed: usize, source: SinkError) -> Self {
        Self {
            confirmed,
            source,
            settled_after: Vec::new(),
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Low-cardinality name used in logs and metric labels.
    fn name(&self) -> &'static str;
    /// Publishes `batch` in order and returns once the destination confirmed all of it.
    async fn publish(&self, batch: &[Notification]) -> Result<(), PublishError>;
    /// Whether the destination is reachable as far as the sink knows (cheap, no I/O).
    fn is_up(&self) -> bool;
    /// Flushes and releases connections at shutdown, giving up after `within` (a broker that
    /// hangs must not hold the process: what it did not confirm is still in the spool).
    async fn close(&self, _within: std::time::Duration) {}
}

/// Builds every sink whose table is present in the configuration.
pub async fn build_all(
    settings: &SinksSettings,
    max_body_bytes: u64,
    metrics: &Metrics,
) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(file) = &settings.file {
        sinks.push(Arc::new(FileSink::new(file).await));
    }
    if let Some(kafka) = &settings.kafka {
        sinks.push(kafka_sink(kafka, max_body_bytes)?);
    }
    if let Some(rabbitmq) = &settings.rabbitmq {
        sinks.push(Arc::new(RabbitMqSink::new(rabbitmq, metrics.clone())?));
    }
    Ok(sinks)
}

/// Builds only the sink named `name` (as [`Sink::name`] says it), if its table is present: what
/// `dead-letters replay` publishes through.
pub async fn build_named(
    settings: &SinksSettings,
    name: &str,
    max_body_bytes: u64,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<dyn Sink>>> {
    Ok(match name {
        "file" => match &settings.file {
            Some(file) => Some(Arc::new(FileSink::new(file).await)),
            None => None,
        },
        "kafka" => match &settings.kafka {
            Some(kafka) => Some(kafka_sink(kafka, max_body_bytes)?),
            None => None,
        },
        "rabbitmq" => match &settings.rabbitmq {
            Some(rabbitmq) => Some(Arc::new(RabbitMqSink::new(rabbitmq, metrics.clone())?)),
            None => None,
        },
        _ => None,
    })
}

/// The Kafka sink.
#[cfg(feature = "kafka")]
fn kafka_sink(
    kafka: &crate::config::KafkaSinkSettings,
    max_body_bytes: u64,
) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(Arc::new(KafkaSink::new(kafka, max_body_bytes)?))
}

/// A build without the Kafka sink (the fuzz build leaves out librdkafka) refuses its table.
#[cfg(not(feature = "kafka"))]
fn kafka_sink(
    _kafka: &crate::config::KafkaSinkSettings,
    _max_body_bytes: u64,
) -> anyhow::Result<Arc<dyn Sink>> {
    anyhow::bail!(
        "sinks.kafka is configured but this build has no Kafka sink (built without the `kafka` \
         feature, as the fuzz build is)"
    )
}
