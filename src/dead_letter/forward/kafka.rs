//! The Kafka dead-letter topic (`[dead_letters.forward.kafka]`), over the `[sinks.kafka]`
//! connection (brokers, TLS, producer properties). `acks=all`: an entry counts as forwarded only
//! on its delivery report. The producer is not idempotent: it sends one entry at a time and
//! waits for its report, so there is nothing to reorder, and an idempotent producer can fail
//! fatally after a timed-out message, which a forwarder that waits out outages would hit.
//! Key: the sink's key template (`{objectType}:{dataloyObject}` by default), so one object's
//! dead letters share a partition. Headers: the sink's (`dataloy-id`, …, `traceparent`) and the
//! reason headers.

use super::Destination;

#[cfg(feature = "kafka")]
pub fn destination(
    sink: &crate::config::KafkaSinkSettings,
    forward: &crate::config::KafkaForwardSettings,
    max_body_bytes: u64,
) -> anyhow::Result<Box<dyn Destination>> {
    Ok(Box::new(imp::KafkaDestination::new(
        sink,
        forward,
        max_body_bytes,
    )?))
}

/// A build without the Kafka sink (the fuzz build leaves out librdkafka) cannot forward there.
#[cfg(not(feature = "kafka"))]
pub fn destination(
    _sink: &crate::config::KafkaSinkSettings,
    _forward: &crate::config::KafkaForwardSettings,
    _max_body_bytes: u64,
) -> anyhow::Result<Box<dyn Destination>> {
    anyhow::bail!("dead_letters.forward.kafka is configured but this build has no Kafka client")
}

#[cfg(feature = "kafka")]
mod imp {
    use std::time::Duration;

    use async_trait::async_trait;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;

    use super::super::{notification_of, reason_headers, Destination, ForwardError};
    use crate::config::{KafkaForwardSettings, KafkaSinkSettings};
    use crate::dead_letter::DeadLetter;
    use crate::sink::kafka::{client_config, headers, with};
    use crate::sink::template::Template;

    pub struct KafkaDestination {
        producer: FutureProducer,
        topic: String,
        key: Template,
    }

    impl KafkaDestination {
        pub fn new(
            sink: &KafkaSinkSettings,
            forward: &KafkaForwardSettings,
            max_body_bytes: u64,
        ) -> Result<Self, KafkaError> {
            let producer = client_config(sink, max_body_bytes)
                .set("enable.idempotence", "false")
                .set("client.id", "dataloy-gateway-dead-letters")
                .create()?;
            Ok(Self {
                producer,
                topic: forward.topic.clone(),
                key: Template::parse(&sink.key).expect("validated at load"),
            })
        }
    }

    #[async_trait]
    impl Destination for KafkaDestination {
        fn name(&self) -> &'static str {
            "kafka"
        }

        async fn publish(&self, entry: &DeadLetter) -> Result<(), ForwardError> {
            let notification = notification_of(entry)?;
            let key = self.key.render(&notification.envelope);
            let mut message_headers = headers(&notification, notification.trace.as_ref(), None);
            for (name, value) in reason_headers(&entry.meta) {
                message_headers = with(message_headers, name, Some(&value));
            }
            let record = FutureRecord::to(&self.topic)
                .payload(&entry.body[..])
                .key(&key)
                // No explicit timestamp: the time of the forward, so the topic's time-based
                // retention counts from when the dead letter got there, not from when the
                // notification was received (a store forwarded late would expire at once).
                .headers(message_headers);
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => Ok(()),
                Err((error, _)) => Err(describe(error, &self.topic)),
            }
        }

        async fn close(&self) {
            let producer = self.producer.clone();
            // Flushing blocks; keep that off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(2));
            })
            .await;
        }
    }

    /// A too-large message is refused for good; anything else (broker away, topic missing) is
    /// waited out.
    fn describe(error: KafkaError, topic: &str) -> ForwardError {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => ForwardError::refused(
                "too_large",
                format!("too large for the dead-letter topic `{topic}`: {error}"),
            ),
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                ForwardError::Unavailable(format!(
                    "the dead-letter topic `{topic}` does not exist (create it): {error}"
                ))
            }
            _ => ForwardError::Unavailable(format!("dead-letter topic `{topic}`: {error}")),
        }
    }
}
