//! The gateway's OpenTelemetry spans, after the semantic conventions for HTTP and messaging: a
//! SERVER span per webhook request (its parent the caller's `traceparent`), a CONSUMER span per
//! WebSocket message (a new trace: Dataloy sends no context there), and a PRODUCER span per
//! published message, `send {topic}` or `publish {exchange}:{routing key}`, whose context is the
//! `traceparent` written into that message. Its parent is the context the notification kept in
//! the spool, so a relay after a restart or from dead letters still joins the request's trace.
//!
//! Only made while spans are exported ([`exporting`]: `[tracing.otlp]` configured, the export
//! installed). Otherwise none of these functions makes a span, and each message carries the
//! notification's own context: the caller's `traceparent` passed through unchanged, or the new
//! trace the gateway started for it.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;

use crate::trace_context::TraceContext;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether OpenTelemetry spans are recorded and exported in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

#[cfg(feature = "otlp")]
pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The SERVER span of a webhook request, with the context its notification keeps (the span's
/// own, so the messages descend from it). `None` while not exporting.
pub fn webhook_request(incoming: Option<&TraceContext>) -> Option<(Span, TraceContext)> {
    if !exporting() {
        return None;
    }
    #[cfg(feature = "otlp")]
    {
        let span = tracing::info_span!(
            "notification",
            otel.name = "POST /webhooks/dataloy",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.route = "/webhooks/dataloy",
            url.path = "/webhooks/dataloy",
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            source = "webhook",
            notification_id = tracing::field::Empty,
        );
        with_parent(span, incoming)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = incoming;
        None
    }
}

/// Records a webhook request's answer on its span: 5xx is an error of the gateway (4xx is the
/// caller's, per the HTTP conventions for servers).
pub fn record_response(span: &Span, status: u16, reason: Option<&'static str>) {
    if !exporting() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", reason.unwrap_or("_OTHER"));
    }
}

/// The CONSUMER span of a message read from the WebSocket source `source`: the root of a new
/// trace. `None` while not exporting.
pub fn websocket_message(source: &str) -> Option<(Span, TraceContext)> {
    if !exporting() {
        return None;
    }
    #[cfg(feature = "otlp")]
    {
        let span = tracing::info_span!(
            "notification",
            otel.name = %format_args!("receive {source}"),
            otel.kind = "consumer",
            messaging.operation.type = "receive",
            messaging.operation.name = "receive",
            messaging.destination.name = source,
            network.protocol.name = "websocket",
            source = "websocket",
            notification_id = tracing::field::Empty,
        );
        with_parent(span, None)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = source;
        None
    }
}

/// What a PRODUCER span knows before the message is sent.
pub struct Publish<'a> {
    /// `kafka` or `rabbitmq`.
    pub system: &'static str,
    /// Kafka: the topic. RabbitMQ: the exchange.
    pub destination: &'a str,
    /// Kafka: the message key. RabbitMQ: the routing key.
    pub key: &'a str,
    /// The notification id (the message id on both).
    pub message_id: &'a str,
}

/// The PRODUCER span of one message and the context to write into it; `None` while not
/// exporting. Its parent is `parent`, the notification's kept context (none: a new trace).
pub fn publish(
    message: &Publish<'_>,
    parent: Option<&TraceContext>,
) -> Option<(Span, TraceContext)> {
    if !exporting() {
        return None;
    }
    #[cfg(feature = "otlp")]
    {
        let Publish {
            system,
            destination,
            key,
            message_id,
        } = message;
        let span = if *system == "kafka" {
            tracing::info_span!(
                "publish",
                otel.name = %format_args!("send {destination}"),
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                messaging.system = "kafka",
                messaging.operation.type = "send",
                messaging.operation.name = "send",
                messaging.destination.name = destination,
                messaging.message.id = message_id,
                messaging.kafka.message.key = key,
                messaging.client.id = "dataloy-gateway",
                messaging.destination.partition.id = tracing::field::Empty,
                messaging.kafka.offset = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "publish",
                otel.name = %format_args!("publish {destination}:{key}"),
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                messaging.system = *system,
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = destination,
                messaging.rabbitmq.destination.routing_key = key,
                messaging.message.id = message_id,
                error.type = tracing::field::Empty,
            )
        };
        with_parent(span, parent)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (message, parent);
        None
    }
}

/// Records where Kafka stored the message.
pub fn record_kafka_delivery(span: &Span, partition: i32, offset: i64) {
    span.record(
        "messaging.destination.partition.id",
        tracing::field::display(partition),
    );
    span.record("messaging.kafka.offset", offset);
}

/// Records that the operation failed, with a low-cardinality `error.type`.
pub fn record_error(span: &Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// Sets `parent` (a remote context) as the span's parent and returns the span with its own
/// context; `None` when the span layer did not take the span.
#[cfg(feature = "otlp")]
fn with_parent(span: Span, parent: Option<&TraceContext>) -> Option<(Span, TraceContext)> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use std::str::FromStr;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::trace_context::{self, TraceParent};

    let parent_context = match parent {
        Some(parent) => {
            let state = TraceState::from_str(parent.tracestate()).unwrap_or_default();
            opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.parent.trace_id),
                SpanId::from_bytes(parent.parent.parent_id),
                TraceFlags::new(parent.parent.flags),
                true,
                state,
            ))
        }
        // A root, not a child of whatever span happens to be current.
        None => opentelemetry::Context::new(),
    };
    span.set_parent(parent_context).ok()?;
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    let parent_fields = TraceParent::new(
        own.trace_id().to_bytes(),
        own.span_id().to_bytes(),
        own.trace_flags().to_u8() & trace_context::SAMPLED,
    )?;
    let header = own.trace_state().header();
    let state = trace_context::TraceState::from_canonical(&header)
        .or_else(|| parent.map(|p| p.state.clone()))
        .unwrap_or_default();
    Some((
        span,
        TraceContext {
            parent: parent_fields,
            state,
        },
    ))
}
