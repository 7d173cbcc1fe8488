//! The RabbitMQ dead-letter exchange (`[dead_letters.forward.rabbitmq]`), over the
//! `[sinks.rabbitmq]` connection settings (URI, TLS, timeouts) but a connection of its own, so
//! forwarding never competes with the sink. The exchange is not declared: it belongs to the
//! operator, and until it exists every publish fails (404) and is retried with backoff.
//!
//! A channel in confirm mode; every publish is `mandatory`. An entry counts as forwarded on the
//! broker's ack; a returned message (no queue bound for its routing key) is refused for good
//! (`unroutable`): counted, logged, marked not forwardable, kept in the local store. A nack, a
//! closed channel or connection, or no confirm within `sinks.rabbitmq.confirm_timeout` is retried.
//! Properties: `message_id` (the notification id), `type` (the object type), persistent; short
//! strings over 255 bytes are refused (`unrepresentable`), never truncated. Headers: the sink's
//! `dataloy-*` and trace headers, and the reason headers, all long strings.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use secrecy::{ExposeSecret, SecretString};

use super::{notification_of, reason_headers, Destination, ForwardError, RoutingKey};
use crate::config::{RabbitMqForwardSettings, RabbitMqSinkSettings};
use crate::dead_letter::DeadLetter;
use crate::sink::cloudevents::CONTENT_TYPE;
use crate::sink::rabbitmq::{client_tls, headers, open_connection, short_string, PERSISTENT};
use crate::sink::SinkError;
use crate::tls::ClientTls;

/// How often the channel's state is looked at while a confirm is awaited.
const CLOSED_POLL: Duration = Duration::from_millis(100);

pub struct RabbitMqDestination {
    uri: SecretString,
    tls: Option<ClientTls>,
    exchange: String,
    routing_key: RoutingKey,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl RabbitMqDestination {
    pub fn new(
        sink: &RabbitMqSinkSettings,
        forward: &RabbitMqForwardSettings,
    ) -> Result<Self, crate::tls::TlsError> {
        Ok(Self {
            uri: sink.uri.clone(),
            tls: client_tls(sink)?,
            exchange: forward.exchange.clone(),
            routing_key: RoutingKey::parse(&forward.routing_key).expect("validated at load"),
            connect_timeout: sink.connect_timeout,
            confirm_timeout: sink.confirm_timeout,
            link: tokio::sync::Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<(Connection, Channel), lapin::Error> {
        let connection = open_connection(self.uri.expose_secret(), self.tls.as_ref()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    fn properties(&self, entry: &DeadLetter) -> Result<BasicProperties, ForwardError> {
        let notification = notification_of(entry)?;
        let message_id = short_string("message_id (the notification id)", &entry.meta.id)
            .map_err(unrepresentable)?;
        let kind = short_string("type (the object type)", &entry.meta.object_type)
            .map_err(unrepresentable)?;
        let mut table = headers(&notification, notification.trace.as_ref(), None);
        for (name, value) in reason_headers(&entry.meta) {
            table.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        Ok(BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(message_id)
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_timestamp(entry.meta.received_at_ms / 1000)
            .with_type(kind)
            .with_headers(table))
    }

    /// What the broker's answer (or its absence within the confirm timeout) means.
    fn outcome(
        &self,
        confirmed: Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>,
        routing_key: &str,
    ) -> Result<(), ForwardError> {
        let exchange = &self.exchange;
        Err(match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => ForwardError::refused(
                "unroutable",
                format!(
                    "no queue is bound to the dead-letter exchange `{exchange}` for routing key \
                     `{routing_key}`"
                ),
            ),
            Ok(Ok(Confirmation::Nack(_))) => {
                ForwardError::Unavailable("the broker nacked the message".into())
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                ForwardError::Unavailable("the channel is not in confirm mode".into())
            }
            Ok(Err(e)) => {
                let text = e.to_string();
                // RabbitMQ closes the channel with PRECONDITION_FAILED "message size … is
                // larger than configured max size …".
                if text.contains("larger than") && text.contains("max size") {
                    ForwardError::refused(
                        "too_large",
                        format!("dead-letter exchange `{exchange}`: {text}"),
                    )
                } else {
                    ForwardError::Unavailable(format!("dead-letter exchange `{exchange}`: {text}"))
                }
            }
            Err(_) => ForwardError::Unavailable(format!(
                "no confirm within sinks.rabbitmq.confirm_timeout ({:?})",
                self.confirm_timeout
            )),
        })
    }
}

fn unrepresentable(error: SinkError) -> ForwardError {
    let detail = match error {
        SinkError::Refused { detail, .. } => detail,
        other => other.to_string(),
    };
    ForwardError::refused("unrepresentable", detail)
}

#[async_trait]
impl Destination for RabbitMqDestination {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, entry: &DeadLetter) -> Result<(), ForwardError> {
        let routing_key = self.routing_key.render(&entry.meta);
        let key =
            short_string("the dead-letter routing key", &routing_key).map_err(unrepresentable)?;
        let properties = self.properties(entry)?;
        let mut link = self.link.lock().await;
        if !link
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            *link = None;
            let connected = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| {
                    ForwardError::Unavailable(format!(
                        "no connection within sinks.rabbitmq.connect_timeout ({:?})",
                        self.connect_timeout
                    ))
                })?
                .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
            *link = Some(connected);
        }
        let (connection, channel) = link.as_ref().expect("connected above");
        let exchange = &self.exchange;
        let confirm = tokio::time::timeout(self.confirm_timeout, async {
            channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &entry.body,
                    properties,
                )
                .await?
                .await
        });
        // A channel the broker closed (a missing exchange: 404) fails the confirm; should the
        // close overtake the publish, the confirm could wait for its whole timeout: stop
        // waiting as soon as the channel or connection is no longer open.
        let closed = async {
            loop {
                tokio::time::sleep(CLOSED_POLL).await;
                if !(connection.status().connected() && channel.status().connected()) {
                    break;
                }
            }
        };
        let confirmed = tokio::select! {
            biased;
            confirmed = confirm => Some(confirmed),
            () = closed => None,
        };
        let outcome = match confirmed.map(|confirmed| self.outcome(confirmed, &routing_key)) {
            Some(Ok(())) => return Ok(()),
            // A returned message leaves the channel open.
            Some(Err(
                unroutable @ ForwardError::Refused {
                    kind: "unroutable", ..
                },
            )) => return Err(unroutable),
            Some(Err(failure)) => failure,
            None => ForwardError::Unavailable(format!(
                "the channel closed while waiting for the confirm (does the dead-letter exchange \
                 `{exchange}` exist?)"
            )),
        };
        // The channel may be closed (a missing exchange closes it) or stuck: start afresh.
        if let Some((connection, _)) = link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.close(200, "reconnecting".into()),
            )
            .await;
        }
        Err(outcome)
    }

    async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "gateway stopping".into()),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dead_letter::{DeadLetterMeta, Reason};
    use crate::envelope::{MAX_EVENT_TIME_LEN, MAX_ID_LEN, MAX_OBJECT_TYPE_LEN};
    use crate::trace_context::{TraceContext, TraceParent, TraceState};

    /// An entry whose every header is at its longest: the notification's (id, object type,
    /// event time, trace state) and a broker error far over the header's bound.
    fn longest_entry() -> DeadLetter {
        let id = "😀".repeat(MAX_ID_LEN / 4);
        let object_type = format!("B{}", "x".repeat(MAX_OBJECT_TYPE_LEN - 1));
        let event_time = "9999-12-31T23:59:59.999999999+23:59";
        assert_eq!(event_time.len(), MAX_EVENT_TIME_LEN);
        let body = format!(
            r#"{{"id":"{id}","eventTime":"{event_time}","objectType":"{object_type}","eventType":"U","dataloyObject":-9223372036854775808,"subscription":{{"key":-9223372036854775808}},"resource":{{}}}}"#
        );
        let members: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}={}", "v".repeat(12)))
            .collect();
        let trace = TraceContext {
            parent: TraceParent::new_root(),
            state: TraceState::from_headers([members.join(",").as_bytes()]),
        };
        DeadLetter {
            meta: DeadLetterMeta {
                name: format!(
                    "{:013}-{:06}-{:08x}-rabbitmq",
                    u64::MAX / 2,
                    999_999,
                    u32::MAX
                ),
                id,
                sink: "rabbitmq".into(),
                reason: Reason::Unrepresentable,
                error: "é".repeat(5000),
                object_type,
                event_type: "U".into(),
                received_at_ms: 1,
                first_attempt_ms: u64::MAX,
                last_attempt_ms: u64::MAX,
                attempts: u32::MAX,
                body_bytes: body.len() as u64,
                body_crc32: crc32fast::hash(body.as_bytes()),
                traceparent: Some(trace.traceparent()),
                tracestate: Some(trace.tracestate().to_owned()),
            },
            body: Bytes::from(body),
        }
    }

    #[test]
    fn the_longest_headers_fit_the_smallest_amqp_frame_and_the_error_says_it_was_cut() {
        let sink = RabbitMqSinkSettings::default();
        let forward = RabbitMqForwardSettings {
            exchange: "dlx".into(),
            ..RabbitMqForwardSettings::default()
        };
        let destination = RabbitMqDestination::new(&sink, &forward).unwrap();
        let entry = longest_entry();
        let properties = destination.properties(&entry).unwrap();
        let headers = properties.headers().as_ref().unwrap();
        let value = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(value)) => value.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(value("dataloy-dead-letter-error").contains("[cut: 10000 bytes in all"));
        assert_eq!(value("dataloy-id"), entry.meta.id);
        assert_eq!(
            value("traceparent"),
            entry.meta.traceparent.clone().unwrap()
        );
        crate::sink::rabbitmq::tests::assert_header_frame_fits(&properties);
    }

    #[test]
    fn a_routing_key_over_255_bytes_is_refused_not_cut() {
        let sink = RabbitMqSinkSettings::default();
        let forward = RabbitMqForwardSettings {
            exchange: "dlx".into(),
            routing_key: format!("{}.{{objectType}}", "r".repeat(200)),
        };
        let destination = RabbitMqDestination::new(&sink, &forward).unwrap();
        let entry = longest_entry();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(destination.publish(&entry)).unwrap_err();
        assert!(
            matches!(&error, ForwardError::Refused { kind: "unrepresentable", detail } if detail.contains("329 bytes")),
            "{error}"
        );
    }
}
