//! `[dead_letters.forward]`: copies of dead letters published to the operators' own brokers
//! (a Kafka dead-letter topic, a RabbitMQ dead-letter exchange), over the connection of the
//! matching sink. Off unless a table is present; the local store stays the durable record.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, SinksSettings};

/// Longest Kafka topic name (Kafka's own limit).
const MAX_TOPIC_LEN: usize = 249;
/// Longest AMQP short string (exchange name, routing key), in bytes.
const SHORT_STRING_MAX: usize = 255;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterForwardSettings {
    /// Publish every dead letter to this Kafka topic (the `[sinks.kafka]` connection).
    pub kafka: Option<KafkaForwardSettings>,
    /// Publish every dead letter to this RabbitMQ exchange (the `[sinks.rabbitmq]` connection).
    pub rabbitmq: Option<RabbitMqForwardSettings>,
    /// First delay after a failed forward; doubles (with jitter) up to `retry_max_backoff`,
    /// forever: a destination that is away is waited for.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How often the store is looked at again for entries written by another process (the
    /// gateway's own new entries wake the forwarder at once).
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
}

impl Default for DeadLetterForwardSettings {
    fn default() -> Self {
        Self {
            kafka: None,
            rabbitmq: None,
            retry_initial_backoff: Duration::from_millis(500),
            retry_max_backoff: Duration::from_secs(60),
            scan_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaForwardSettings {
    /// The dead-letter topic; it must exist (the gateway creates no topic).
    pub topic: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqForwardSettings {
    /// The dead-letter exchange; it must exist (the gateway declares nothing here).
    pub exchange: String,
    /// Routing key template: `{sink}`, `{reason}`, `{objectType}`, `{eventType}`.
    pub routing_key: String,
}

impl Default for RabbitMqForwardSettings {
    fn default() -> Self {
        Self {
            exchange: String::new(),
            routing_key: "{sink}.{reason}".into(),
        }
    }
}

impl DeadLetterForwardSettings {
    /// Whether any destination is configured.
    pub fn any(&self) -> bool {
        self.kafka.is_some() || self.rabbitmq.is_some()
    }

    pub(super) fn validate(&self, sinks: &SinksSettings) -> Result<(), ConfigError> {
        if self.retry_initial_backoff.is_zero()
            || self.retry_initial_backoff > self.retry_max_backoff
        {
            return Err(invalid(
                "dead_letters.forward.retry_initial_backoff",
                "must be greater than 0 and at most dead_letters.forward.retry_max_backoff",
            ));
        }
        if self.scan_interval.is_zero() {
            return Err(invalid(
                "dead_letters.forward.scan_interval",
                "must be greater than 0",
            ));
        }
        if let Some(kafka) = &self.kafka {
            if sinks.kafka.is_none() {
                return Err(invalid(
                    "dead_letters.forward.kafka",
                    "needs [sinks.kafka] (its brokers, TLS and producer properties are the \
                     connection): add [sinks.kafka] or remove [dead_letters.forward.kafka]",
                ));
            }
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if kafka.topic.is_empty()
                || kafka.topic.len() > MAX_TOPIC_LEN
                || matches!(kafka.topic.as_str(), "." | "..")
                || !kafka.topic.chars().all(legal)
            {
                return Err(invalid(
                    "dead_letters.forward.kafka.topic",
                    "must be a Kafka topic name: 1 to 249 letters, digits, '.', '_', '-' \
                     (not \".\" or \"..\")",
                ));
            }
        }
        if let Some(rabbitmq) = &self.rabbitmq {
            if sinks.rabbitmq.is_none() {
                return Err(invalid(
                    "dead_letters.forward.rabbitmq",
                    "needs [sinks.rabbitmq] (its URI and TLS are the connection): add \
                     [sinks.rabbitmq] or remove [dead_letters.forward.rabbitmq]",
                ));
            }
            if rabbitmq.exchange.is_empty() {
                return Err(invalid(
                    "dead_letters.forward.rabbitmq.exchange",
                    "must name the dead-letter exchange",
                ));
            }
            if rabbitmq.exchange.len() > SHORT_STRING_MAX {
                return Err(invalid(
                    "dead_letters.forward.rabbitmq.exchange",
                    "is longer than 255 bytes (an AMQP short string)",
                ));
            }
            let template = crate::dead_letter::forward::RoutingKey::parse(&rabbitmq.routing_key)
                .map_err(|e| invalid("dead_letters.forward.rabbitmq.routing_key", e))?;
            if template.literal_len() > SHORT_STRING_MAX {
                return Err(invalid(
                    "dead_letters.forward.rabbitmq.routing_key",
                    "is longer than 255 bytes without its placeholders (an AMQP short string)",
                ));
            }
        }
        Ok(())
    }
}
