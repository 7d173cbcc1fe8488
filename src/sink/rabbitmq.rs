//! The RabbitMQ sink (lapin): publishes on a channel in confirm mode, so a publish counts only on
//! the broker's ack; a nack, a returned (unroutable, `mandatory`) message or a closed channel is
//! a failure the relay retries. A whole batch is published before the confirms are awaited (many
//! publishes in flight). The connection is re-established with the relay's backoff, and a probe
//! reconnects eagerly so `/health/ready` follows the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;

use super::template::Template;
use super::{PublishError, Sink, SinkError};
use crate::config::{RabbitMqExchangeKind, RabbitMqSinkSettings};
use crate::notification::Notification;

/// AMQP delivery mode for messages that survive a broker restart.
const PERSISTENT: u8 = 2;

pub struct RabbitMqSink {
    inner: Arc<Inner>,
    probe: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    settings: RabbitMqSinkSettings,
    routing_key: Template,
    link: tokio::sync::Mutex<Option<Link>>,
    up: AtomicBool,
}

/// A connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl RabbitMqSink {
    /// Creates the sink and starts connecting in the background: an unreachable broker makes
    /// the sink down, not the start-up fail.
    pub fn new(settings: &RabbitMqSinkSettings) -> Self {
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            routing_key: Template::parse(&settings.routing_key).expect("validated at load"),
            link: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(false),
        });
        let probe = tokio::spawn(probe(inner.clone(), settings.health_interval));
        Self {
            inner,
            probe: parking_lot::Mutex::new(Some(probe)),
        }
    }
}

/// Keeps a connection open while idle, so readiness reflects the broker and the first publish
/// after an outage does not pay for the reconnect.
async fn probe(inner: Arc<Inner>, interval: Duration) {
    loop {
        {
            let mut link = inner.link.lock().await;
            if let Err(e) = inner.ensure_link(&mut link).await {
                tracing::debug!(sink = "rabbitmq", error = %e, "RabbitMQ not reachable");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

impl Inner {
    /// Opens a connection and a confirm-mode channel if there is none, or it closed.
    async fn ensure_link<'a>(&self, link: &'a mut Option<Link>) -> Result<&'a Link, SinkError> {
        if link.as_ref().is_some_and(Link::is_open) {
            return Ok(link.as_ref().expect("checked"));
        }
        if link.take().is_some() {
            self.set_up(false, "RabbitMQ connection lost");
        }
        match self.connect().await {
            Ok(fresh) => {
                self.set_up(true, "RabbitMQ connected");
                Ok(link.insert(fresh))
            }
            Err(e) => {
                self.set_up(false, "RabbitMQ unreachable");
                Err(SinkError::Unavailable(e.to_string()))
            }
        }
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let uri = self.settings.uri.expose_secret();
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if self.settings.declare_exchange {
            channel
                .exchange_declare(
                    ShortString::from(self.settings.exchange.as_str()),
                    exchange_kind(self.settings.exchange_kind),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Link {
            connection,
            channel,
        })
    }

    fn set_up(&self, up: bool, message: &'static str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(sink = "rabbitmq", "{message}");
            } else {
                tracing::warn!(sink = "rabbitmq", "{message}");
            }
        }
    }

    fn properties(&self, notification: &Notification) -> BasicProperties {
        let env = &notification.envelope;
        let mut headers = FieldTable::default();
        let mut put = |name: &str, value: String| {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        };
        put("dataloy-id", env.id.to_string());
        put("dataloy-object-type", env.object_type.clone());
        put("dataloy-event-type", env.event_type.as_str().to_owned());
        put("dataloy-event-time", env.event_time.clone());
        if let Some(key) = env.subscription_key {
            put("dataloy-subscription-key", key.to_string());
        }
        BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(env.id.as_str()))
            .with_content_type(ShortString::from("application/json"))
            .with_timestamp(notification.received_at_ms / 1000)
            .with_type(ShortString::from(env.object_type.as_str()))
            .with_headers(headers)
    }
}

fn exchange_kind(kind: RabbitMqExchangeKind) -> ExchangeKind {
    match kind {
        RabbitMqExchangeKind::Direct => ExchangeKind::Direct,
        RabbitMqExchangeKind::Fanout => ExchangeKind::Fanout,
        RabbitMqExchangeKind::Topic => ExchangeKind::Topic,
        RabbitMqExchangeKind::Headers => ExchangeKind::Headers,
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, batch: &[Notification]) -> Result<(), PublishError> {
        let inner = &self.inner;
        let mut guard = inner.link.lock().await;
        let link = inner
            .ensure_link(&mut guard)
            .await
            .map_err(PublishError::none_confirmed)?;
        let exchange = ShortString::from(inner.settings.exchange.as_str());
        let mut confirms = Vec::with_capacity(batch.len());
        let mut failure = None;
        for notification in batch {
            let routing_key = inner.routing_key.render(&notification.envelope);
            let published = link
                .channel
                .basic_publish(
                    exchange.clone(),
                    ShortString::from(routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &notification.body,
                    inner.properties(notification),
                )
                .await;
            match published {
                Ok(confirm) => confirms.push((confirm, routing_key)),
                Err(e) => {
                    failure = Some(SinkError::Unavailable(e.to_string()));
                    break;
                }
            }
        }
        let mut confirmed = 0;
        for (confirm, routing_key) in confirms {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err(SinkError::Refused(format!(
                    "unroutable: no queue is bound to exchange `{}` for routing key `{routing_key}`",
                    inner.settings.exchange
                ))),
                Ok(Confirmation::Nack(_)) => {
                    Err(SinkError::Refused("the broker nacked the message".into()))
                }
                Ok(Confirmation::NotRequested) => Err(SinkError::Unavailable(
                    "channel is not in confirm mode".into(),
                )),
                Err(e) => Err(SinkError::Unavailable(e.to_string())),
            };
            match outcome {
                Ok(()) if failure.is_none() => confirmed += 1,
                Ok(()) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(source) => {
                if matches!(source, SinkError::Unavailable(_)) && !link.is_open() {
                    *guard = None;
                    inner.set_up(false, "RabbitMQ connection lost");
                }
                Err(PublishError { confirmed, source })
            }
        }
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        if let Some(probe) = self.probe.lock().take() {
            probe.abort();
        }
        if let Some(link) = self.inner.link.lock().await.take() {
            let _ = link.channel.close(200, "gateway stopping".into()).await;
            let _ = link.connection.close(200, "gateway stopping".into()).await;
        }
    }
}
