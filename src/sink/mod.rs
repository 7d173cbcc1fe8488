//! Sinks: where notifications are relayed to. Every sink publishes a batch in order and reports
//! success only once its destination confirmed every notification in it, so the relay never
//! acknowledges (and the spool never deletes) something that is not safely delivered.

pub mod file;
pub mod kafka;
pub mod rabbitmq;
pub mod template;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::SinksSettings;
use crate::notification::Notification;

pub use file::FileSink;
pub use kafka::KafkaSink;
pub use rabbitmq::RabbitMqSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("destination unavailable: {0}")]
    Unavailable(String),
    #[error("destination refused the message: {0}")]
    Refused(String),
}

/// A failed batch: the first `confirmed` notifications were delivered, the rest were not.
#[derive(Debug, thiserror::Error)]
#[error("{source} (after {confirmed} confirmed)")]
pub struct PublishError {
    pub confirmed: usize,
    #[source]
    pub source: SinkError,
}

impl PublishError {
    pub fn none_confirmed(source: impl Into<SinkError>) -> Self {
        Self {
            confirmed: 0,
            source: source.into(),
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
    /// Flushes and releases connections at shutdown.
    async fn close(&self) {}
}

/// Builds every sink whose table is present in the configuration.
pub async fn build_all(settings: &SinksSettings) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(file) = &settings.file {
        sinks.push(Arc::new(FileSink::new(file).await));
    }
    if let Some(kafka) = &settings.kafka {
        sinks.push(Arc::new(KafkaSink::new(kafka)?));
    }
    if let Some(rabbitmq) = &settings.rabbitmq {
        sinks.push(Arc::new(RabbitMqSink::new(rabbitmq)));
    }
    Ok(sinks)
}
