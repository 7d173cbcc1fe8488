//! The RabbitMQ sink (lapin): publishes on a channel in confirm mode, so a publish counts only on
//! the broker's ack; a nack or a closed channel is a failure the relay retries. A returned
//! (unroutable, `mandatory`) message is handled by `sinks.rabbitmq.unroutable`: dead letters by
//! default. A value AMQP cannot carry (a short string over 255 bytes: routing key, message id) is
//! refused for good before anything is sent. A whole batch is published before the confirms are
//! awaited (many publishes in flight), and only the leading confirmed messages count as
//! delivered. Connecting and confirming are bounded by timeouts, so a broker that accepts TCP and
//! never answers makes the sink down instead of hanging it; a publish pending longer than the
//! confirm timeout makes it down whatever it waits on, and closing at shutdown gives up after
//! its own bound. A probe reconnects eagerly so `sink_up` follows the broker.
//!
//! Headers: the `dataloy-*` ones, the trace context (`traceparent`, `tracestate`), and with
//! `[sinks.rabbitmq.cloudevents]` the CloudEvents ones (`cloudEvents_*`; `content_type` is
//! `application/json` always). All are long strings; their names are short strings the
//! gateway chose, and their values are bounded where they enter, so the message's header frame
//! stays under the 4096 bytes every broker accepts (tested in `tests::`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{AMQPUriTcpExt, RustlsConnector, TLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;

use super::cloudevents::{self, CloudEvents};
use super::template::Template;
use super::{PublishError, Sink, SinkError};
use crate::config::{RabbitMqExchangeKind, RabbitMqSinkSettings, UnroutablePolicy};
use crate::dead_letter::Reason;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::telemetry::spans;
use crate::tls::ClientTls;
use crate::trace_context::{TraceContext, TRACEPARENT, TRACEPARENT_LEN, TRACESTATE};

/// Longest AMQP short string, in bytes.
const SHORT_STRING_MAX: usize = 255;

/// A short string, or a refusal naming the field when it is longer than AMQP can carry.
pub(crate) fn short_string(field: &str, value: &str) -> Result<ShortString, SinkError> {
    if value.len() > SHORT_STRING_MAX {
        return Err(SinkError::refused(
            Reason::Unrepresentable,
            format!(
                "{field} is {} bytes; AMQP carries at most {SHORT_STRING_MAX}",
                value.len()
            ),
        ));
    }
    Ok(ShortString::from(value))
}

/// AMQP delivery mode for messages that survive a broker restart.
pub(crate) const PERSISTENT: u8 = 2;

pub struct RabbitMqSink {
    inner: Arc<Inner>,
    probe: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    settings: RabbitMqSinkSettings,
    routing_key: Template,
    /// For an `amqps://` URI: the `[sinks.rabbitmq.tls]` configuration (public roots when absent).
    tls: Option<ClientTls>,
    link: tokio::sync::Mutex<Option<Link>>,
    up: AtomicBool,
    /// A failed connection was logged since the sink was last up (one warning per outage).
    reported_down: AtomicBool,
    /// When the publish in progress sent its first message; `None` between publishes.
    publishing_since: parking_lot::Mutex<Option<Instant>>,
    metrics: Metrics,
    cloudevents: Option<CloudEvents>,
}

/// Marks a publish in progress for as long as it lives (also when the relay abandons it).
struct Publishing<'a>(&'a parking_lot::Mutex<Option<Instant>>);

impl<'a> Publishing<'a> {
    fn start(since: &'a parking_lot::Mutex<Option<Instant>>) -> Self {
        *since.lock() = Some(Instant::now());
        Self(since)
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
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
    pub fn new(
        settings: &RabbitMqSinkSettings,
        metrics: Metrics,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = client_tls(settings)?;
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            routing_key: Template::parse(&settings.routing_key).expect("validated at load"),
            tls,
            link: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            reported_down: AtomicBool::new(false),
            publishing_since: parking_lot::Mutex::new(None),
            metrics,
            cloudevents: CloudEvents::from_settings(&settings.cloudevents),
        });
        let probe = tokio::spawn(probe(inner.clone(), settings.health_interval));
        Ok(Self {
            inner,
            probe: parking_lot::Mutex::new(Some(probe)),
        })
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
        let timeout = self.settings.connect_timeout;
        match tokio::time::timeout(timeout, self.connect()).await {
            Ok(Ok(fresh)) => {
                self.set_up(true, "RabbitMQ connected");
                Ok(link.insert(fresh))
            }
            Ok(Err(e)) => {
                // The reason matters here: a TLS failure (a CA not trusted, a refused client
                // certificate) is a configuration error to fix, not an outage to wait out.
                let was_up = self.up.swap(false, Ordering::Relaxed);
                let reported = self.reported_down.swap(true, Ordering::Relaxed);
                if was_up || !reported {
                    tracing::warn!(sink = "rabbitmq", error = %e, "RabbitMQ unreachable");
                }
                Err(SinkError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.set_up(false, "RabbitMQ did not answer in time");
                Err(SinkError::Unavailable(format!(
                    "no connection within sinks.rabbitmq.connect_timeout ({timeout:?})"
                )))
            }
        }
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let connection =
            open_connection(self.settings.uri.expose_secret(), self.tls.as_ref()).await?;
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
        if up {
            self.reported_down.store(false, Ordering::Relaxed);
        }
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(sink = "rabbitmq", "{message}");
            } else {
                tracing::warn!(sink = "rabbitmq", "{message}");
            }
        }
    }

    fn properties(
        &self,
        notification: &Notification,
        trace: Option<&TraceContext>,
    ) -> Result<BasicProperties, SinkError> {
        let env = &notification.envelope;
        let message_id = short_string("message_id (the notification id)", env.id.as_str())?;
        let kind = short_string("type (the object type)", &env.object_type)?;
        Ok(BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(message_id)
            .with_content_type(ShortString::from(cloudevents::CONTENT_TYPE))
            .with_timestamp(notification.received_at_ms / 1000)
            .with_type(kind)
            .with_headers(headers(notification, trace, self.cloudevents.as_ref())))
    }

    /// What a returned (unroutable) message means under `sinks.rabbitmq.unroutable`: `Ok` when
    /// it counts as handled (dropped), else the failure.
    fn unroutable(&self, notification: &Notification, routing_key: &str) -> Result<(), SinkError> {
        let detail = format!(
            "unroutable: no queue is bound to exchange `{}` for routing key `{routing_key}`",
            self.settings.exchange
        );
        match self.settings.unroutable {
            UnroutablePolicy::DeadLetter => Err(SinkError::refused(Reason::Unroutable, detail)),
            UnroutablePolicy::Retry => Err(SinkError::Unavailable(detail)),
            UnroutablePolicy::Drop => {
                self.metrics
                    .sink_dropped("rabbitmq", Reason::Unroutable.as_str());
                tracing::warn!(
                    sink = "rabbitmq",
                    notification_id = %notification.envelope.id,
                    routing_key,
                    "unroutable notification dropped (sinks.rabbitmq.unroutable = \"drop\")"
                );
                Ok(())
            }
        }
    }
}

/// The TLS configuration for `settings.uri`: `Some` for `amqps://` (`[sinks.rabbitmq.tls]`, or
/// the public roots when absent).
pub(crate) fn client_tls(
    settings: &RabbitMqSinkSettings,
) -> Result<Option<ClientTls>, crate::tls::TlsError> {
    if settings.uri.expose_secret().starts_with("amqps://") {
        let tls_settings = settings.tls.clone().unwrap_or_default();
        Ok(Some(ClientTls::new(
            &tls_settings,
            &crate::tls::RABBITMQ_KEYS,
        )?))
    } else {
        Ok(None)
    }
}

/// Opens a connection to `uri`, over TLS with `tls` (for `amqps://`).
pub(crate) async fn open_connection(
    uri: &str,
    tls: Option<&ClientTls>,
) -> Result<Connection, lapin::Error> {
    Ok(match tls {
        None => Connection::connect(uri, ConnectionProperties::default()).await?,
        Some(tls) => {
            // Validated at load; the parser's message is not repeated (it may quote the URI).
            let uri: AMQPUri = uri.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "sinks.rabbitmq.uri is not a valid AMQP URI",
                )
            })?;
            let tls = tls.clone();
            Connection::connector(
                uri,
                lapin::runtime::default_runtime()?,
                async move |uri: AMQPUri, runtime| {
                    // TCP as for amqp://, then the handshake with the gateway's own TLS
                    // configuration ([sinks.rabbitmq.tls]).
                    let name = tls.server_name_text(&uri.authority.host);
                    let mut plain = uri;
                    plain.scheme = AMQPScheme::AMQP;
                    let stream = plain
                        .connect_with_config_async(TLSConfig::default(), &runtime)
                        .await?;
                    let connector = RustlsConnector::from(tls.config());
                    Ok(stream.into_rustls(&connector, &name).await?)
                },
                ConnectionProperties::default(),
            )
            .await?
        }
    })
}

/// A message's headers: the `dataloy-*` ones, its trace context, and the CloudEvents ones.
pub(crate) fn headers(
    notification: &Notification,
    trace: Option<&TraceContext>,
    cloudevents: Option<&CloudEvents>,
) -> FieldTable {
    let env = &notification.envelope;
    let mut headers = FieldTable::default();
    let mut put = |name: &'static str, value: Option<&str>| {
        if let Some(value) = value {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    };
    put("dataloy-id", Some(env.id.as_str()));
    put("dataloy-object-type", Some(&env.object_type));
    put("dataloy-event-type", Some(env.event_type.as_str()));
    put("dataloy-event-time", Some(&env.event_time));
    if let Some(key) = env.subscription_key {
        put("dataloy-subscription-key", Some(&key.to_string()));
    }
    let mut rendered = [0u8; TRACEPARENT_LEN];
    let traceparent = trace.map(|t| t.parent.render_into(&mut rendered));
    let tracestate = trace.map(|t| t.tracestate()).filter(|s| !s.is_empty());
    put(TRACEPARENT, traceparent);
    put(TRACESTATE, tracestate);
    if let Some(cloudevents) = cloudevents {
        let names = &cloudevents::AMQP;
        let attributes = cloudevents.attributes(env);
        put(names.specversion, Some(cloudevents::SPEC_VERSION));
        put(names.id, Some(attributes.id));
        put(names.source, Some(attributes.source));
        put(names.event_type, Some(&attributes.event_type));
        put(names.time, attributes.time.as_deref());
        put(names.subject, Some(&attributes.subject));
        put(names.traceparent, traceparent);
        put(names.tracestate, tracestate);
    }
    headers
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
        let _publishing = Publishing::start(&inner.publishing_since);
        let exchange = ShortString::from(inner.settings.exchange.as_str());
        // lapin hands each publish to its IO thread and resolves it once the frames are
        // written, so awaiting one publish before starting the next costs a round trip between
        // threads per message. Instead every message of the batch is queued first, then the
        // writes are awaited. A publish takes its delivery tag and queues its frames when its
        // future is first polled, so polling each once, in batch order, keeps the order.
        let mut writes = Vec::with_capacity(batch.len());
        // Why publishing stopped before the end of the batch: it concerns `batch[confirms.len()]`.
        let mut stopped = None;
        for notification in batch {
            let routing_key = inner.routing_key.render(&notification.envelope);
            let key = match short_string("routing key", &routing_key) {
                Ok(key) => key,
                Err(refusal) => {
                    stopped = Some(refusal);
                    break;
                }
            };
            // While spans are exported, the message carries its PRODUCER span's context; else
            // the notification's own.
            let produced = spans::publish(
                &spans::Publish {
                    system: "rabbitmq",
                    destination: &inner.settings.exchange,
                    key: &routing_key,
                    message_id: notification.envelope.id.as_str(),
                },
                notification.trace.as_ref(),
            );
            let trace = produced
                .as_ref()
                .map_or(notification.trace.as_ref(), |(_, trace)| Some(trace));
            let properties = match inner.properties(notification, trace) {
                Ok(properties) => properties,
                Err(refusal) => {
                    if let Some((span, _)) = &produced {
                        spans::record_error(span, "unrepresentable");
                    }
                    stopped = Some(refusal);
                    break;
                }
            };
            let span = produced.map(|(span, _)| span);
            let mut write = Box::pin(link.channel.basic_publish(
                exchange.clone(),
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &notification.body,
                properties,
            ));
            let queued = futures::poll!(write.as_mut());
            writes.push((queued, write, routing_key, span));
        }
        let mut confirms = Vec::with_capacity(writes.len());
        for (queued, write, routing_key, span) in writes {
            let written = match queued {
                Poll::Ready(written) => written,
                Poll::Pending => write.await,
            };
            match written {
                Ok(confirm) => confirms.push((confirm, routing_key, span)),
                Err(e) => {
                    if let Some(span) = &span {
                        spans::record_error(span, "publish_failed");
                    }
                    // Supersedes a refusal further on: that message is offered again.
                    stopped = Some(SinkError::Unavailable(e.to_string()));
                    break;
                }
            }
        }
        // Only the leading confirmed messages count as confirmed. A refusal for good does not
        // stop the count of what follows: those messages were published all the same, and
        // their outcomes go back in `settled_after`, so the relay does not send them again. A
        // transient failure stops it: the relay resends from there.
        let mut confirmed = 0;
        let mut failure = None;
        let mut settled_after = Vec::new();
        let deadline = tokio::time::Instant::now() + inner.settings.confirm_timeout;
        for (index, (confirm, routing_key, span)) in confirms.into_iter().enumerate() {
            let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)))) => inner.unroutable(&batch[index], &routing_key),
                Ok(Ok(Confirmation::Nack(_))) => Err(SinkError::Unavailable(
                    "the broker nacked the message".into(),
                )),
                Ok(Ok(Confirmation::NotRequested)) => Err(SinkError::Unavailable(
                    "channel is not in confirm mode".into(),
                )),
                Ok(Err(e)) => Err(SinkError::Unavailable(e.to_string())),
                Err(_) => {
                    if let Some(span) = &span {
                        spans::record_error(span, "confirm_timeout");
                    }
                    // A broker that stopped answering: drop the link, so the retry reconnects.
                    *guard = None;
                    inner.set_up(false, "RabbitMQ stopped confirming");
                    failure.get_or_insert(SinkError::Unavailable(format!(
                        "no confirm within sinks.rabbitmq.confirm_timeout ({:?})",
                        inner.settings.confirm_timeout
                    )));
                    break;
                }
            };
            if let (Some(span), Err(e)) = (&span, &outcome) {
                let error_type = match e {
                    SinkError::Refused { reason, .. } => reason.as_str(),
                    _ => "not_confirmed",
                };
                spans::record_error(span, error_type);
            }
            match (outcome, &failure) {
                (Ok(()), None) => confirmed += 1,
                (Err(e), None) => {
                    let refused = matches!(e, SinkError::Refused { .. });
                    failure = Some(e);
                    if !refused {
                        break;
                    }
                }
                (Ok(()), Some(_)) => settled_after.push(Ok(())),
                (Err(e @ SinkError::Refused { .. }), Some(_)) => settled_after.push(Err(e)),
                (Err(_), Some(_)) => break,
            }
        }
        let Some(source) = failure.or(stopped) else {
            return Ok(());
        };
        if matches!(source, SinkError::Unavailable(_))
            && guard.as_ref().is_some_and(|link| !link.is_open())
        {
            *guard = None;
            inner.set_up(false, "RabbitMQ connection lost");
        }
        Err(PublishError {
            confirmed,
            source,
            settled_after,
        })
    }

    /// Down while unreachable, and while a publish has been pending longer than
    /// `sinks.rabbitmq.confirm_timeout`: a broker frozen mid-connection keeps the TCP
    /// connection open but moves nothing.
    fn is_up(&self) -> bool {
        let stalled = self
            .inner
            .publishing_since
            .lock()
            .is_some_and(|since| since.elapsed() > self.inner.settings.confirm_timeout);
        self.inner.up.load(Ordering::Relaxed) && !stalled
    }

    async fn close(&self, within: Duration) {
        if let Some(probe) = self.probe.lock().take() {
            probe.abort();
        }
        // Closing waits for the broker's close-ok, which a hung broker never sends.
        let closed = tokio::time::timeout(within, async {
            if let Some(link) = self.inner.link.lock().await.take() {
                let _ = link.channel.close(200, "gateway stopping".into()).await;
                let _ = link.connection.close(200, "gateway stopping".into()).await;
            }
        })
        .await;
        if closed.is_err() {
            tracing::warn!(
                sink = "rabbitmq",
                "RabbitMQ did not answer the close in time; leaving the connection"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use secrecy::SecretString;

    use super::*;
    use crate::config::CloudEventsSettings;
    use crate::envelope::{Envelope, MAX_EVENT_TIME_LEN, MAX_ID_LEN, MAX_OBJECT_TYPE_LEN};
    use crate::trace_context::{TraceParent, TraceState, MAX_TRACESTATE_LEN};

    /// The smallest `frame_max` a broker may negotiate (AMQP 0-9-1, 4.2.3).
    const MIN_FRAME_MAX: usize = 4096;

    /// Asserts that the content header frame of a message with `properties` fits the smallest
    /// frame a broker may use: one frame of header (7), class, weight and body size (12),
    /// properties, end (1). Shared with the dead-letter forwarder's tests.
    pub(crate) fn assert_header_frame_fits(properties: &BasicProperties) {
        let (encoded, _) = cookie_factory::gen(
            lapin::protocol::basic::gen_properties(properties),
            Vec::new(),
        )
        .unwrap();
        let frame = 7 + 12 + encoded.len() + 1;
        assert!(frame <= MIN_FRAME_MAX, "header frame of {frame} bytes");
    }

    /// Every header value at the longest the gateway lets in, with CloudEvents on: the header
    /// frame still fits the smallest frame a broker may use, so no message can be one the broker
    /// must refuse for its headers alone.
    #[tokio::test]
    async fn the_longest_headers_fit_the_smallest_amqp_frame() {
        let body = include_bytes!("../../tests/fixtures/bunker-order-updated.json");
        let mut envelope = Envelope::parse(body).unwrap();
        envelope.id = crate::envelope::NotificationId::parse(&"😀".repeat(MAX_ID_LEN / 4)).unwrap();
        envelope.object_type = format!("B{}", "x".repeat(MAX_OBJECT_TYPE_LEN - 1));
        envelope.event_time = "9999-12-31T23:59:59.999999999+23:59".into();
        assert_eq!(envelope.event_time.len(), MAX_EVENT_TIME_LEN);
        envelope.dataloy_object = i64::MIN;
        envelope.subscription_key = Some(i64::MIN);
        envelope.origin = Some(format!(
            "http://{}",
            "a".repeat(crate::envelope::MAX_ORIGIN_LEN - 7)
        ));
        let members: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}={}", "v".repeat(12)))
            .collect();
        let state = TraceState::from_headers([members.join(",").as_bytes()]);
        assert!(
            state.as_str().len() > MAX_TRACESTATE_LEN - 20,
            "{}",
            state.as_str().len()
        );
        let trace = TraceContext {
            parent: TraceParent::new_root(),
            state,
        };
        let notification = Notification::new(envelope, Bytes::from_static(body)).with_trace(trace);
        let settings = RabbitMqSinkSettings {
            uri: SecretString::from("amqp://127.0.0.1:1/%2f"),
            cloudevents: Some(CloudEventsSettings {
                source: Some("s".repeat(crate::config::MAX_ATTRIBUTE_LEN)),
                event_type: format!("{}{{objectType}}", "t".repeat(127)),
                ..CloudEventsSettings::default()
            }),
            ..RabbitMqSinkSettings::default()
        };
        let sink = RabbitMqSink::new(&settings, Metrics::new()).expect("no tls table");
        let properties = sink
            .inner
            .properties(&notification, notification.trace.as_ref())
            .unwrap();
        let headers = properties.headers().as_ref().unwrap();
        let value = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(value)) => value.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(value("cloudEvents_type").len(), 255);
        assert_eq!(
            value("cloudEvents_source").len(),
            crate::config::MAX_ATTRIBUTE_LEN
        );
        assert_eq!(value("cloudEvents_tracestate"), value("tracestate"));

        assert_header_frame_fits(&properties);
        sink.close(std::time::Duration::from_millis(10)).await;
    }
}
