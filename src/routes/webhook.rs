//! `POST /webhooks/dataloy`: authenticates, bounds and reads the body, and hands it to the ingest
//! pipeline. The answer is 200 only once the notification is durable (or a known duplicate).
//! A W3C `traceparent` (with `tracestate`) on the request is the trace the notification's
//! messages continue; without a valid one the gateway starts a new trace (an invalid header is
//! ignored, never an error). While spans are exported, the request has a SERVER span, the
//! caller's context its parent.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Serialize;
use tracing::Instrument;

use super::error::json_error;
use crate::auth::Authenticator;
use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::{Metrics, Source};
use crate::telemetry::spans;
use crate::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// The trace context's headers as names made once (looking one up by `&str` parses the name on
/// every request).
static TRACEPARENT_HEADER: header::HeaderName = header::HeaderName::from_static(TRACEPARENT);
static TRACESTATE_HEADER: header::HeaderName = header::HeaderName::from_static(TRACESTATE);

/// What the notification route needs, shared by all workers.
pub struct WebhookState {
    pub ingest: Arc<Ingest>,
    pub auth: Authenticator,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub retry_after_seconds: u32,
    pub metrics: Metrics,
    /// Bounds the notifications processed at once (load shedding). Taken once the body is read,
    /// so a slow sender holds none.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Bytes of bodies buffered at once, over all connections; one permit a byte, taken as the
    /// bytes arrive (never for a declared length).
    pub buffered_bytes: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or wrong credentials")]
    Unauthorized { challenge: Option<&'static str> },
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("charset `{0}` is not supported; send the body as UTF-8")]
    UnsupportedCharset(String),
    #[error("content encoding `{0}` is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body was not received in time")]
    BodyTimeout,
    #[error("body could not be read")]
    BodyRead,
    #[error("too many notifications in progress; retry later")]
    Overloaded { retry_after_seconds: u32 },
    #[error("{0}")]
    Invalid(IngestError),
    #[error("the notification could not be stored; retry later")]
    Unavailable {
        cause: IngestError,
        retry_after_seconds: u32,
    },
}

impl WebhookError {
    fn reason(&self) -> &'static str {
        match self {
            WebhookError::Unauthorized { .. } => "unauthorized",
            WebhookError::UnsupportedMediaType
            | WebhookError::UnsupportedCharset(_)
            | WebhookError::UnsupportedEncoding(_) => "unsupported_media_type",
            WebhookError::TooLarge { .. } => "payload_too_large",
            WebhookError::BodyTimeout => "request_timeout",
            WebhookError::BodyRead => "invalid_body",
            WebhookError::Overloaded { .. } => "overloaded",
            WebhookError::Invalid(e) | WebhookError::Unavailable { cause: e, .. } => e.reason(),
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebhookError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            WebhookError::UnsupportedMediaType
            | WebhookError::UnsupportedCharset(_)
            | WebhookError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebhookError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            WebhookError::BodyRead | WebhookError::Invalid(_) => StatusCode::BAD_REQUEST,
            WebhookError::Unavailable { .. } | WebhookError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = self.to_string();
        let mut response = match self {
            WebhookError::Invalid(IngestError::Invalid(e)) => {
                json_error(status, e.code(), &e.to_string(), e.field())
            }
            WebhookError::Unavailable { .. } => json_error(status, "unavailable", &message, None),
            _ => json_error(status, self.reason(), &message, None),
        };
        let headers = response.headers_mut();
        match self {
            WebhookError::Unauthorized {
                challenge: Some(challenge),
            } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(challenge),
                );
            }
            WebhookError::Unavailable {
                retry_after_seconds,
                ..
            }
            | WebhookError::Overloaded {
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, (*retry_after_seconds).into());
            }
            _ => {}
        }
        response
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    status: &'static str,
    id: &'a str,
}

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    let headers = request.headers();
    let incoming = TraceContext::from_headers(
        headers.get_all(&TRACEPARENT_HEADER).map(|v| v.as_bytes()),
        headers.get_all(&TRACESTATE_HEADER).map(|v| v.as_bytes()),
    );
    let Some((span, trace)) = spans::webhook_request(incoming.as_ref()) else {
        let trace = incoming.unwrap_or_else(TraceContext::new_root);
        return handle(request, payload, state, trace, None).await;
    };
    let answer = handle(request, payload, state, trace, Some(span.clone()))
        .instrument(span.clone())
        .await;
    let (status, reason) = match &answer {
        Ok(response) => (response.status().as_u16(), None),
        Err(e) => (e.status_code().as_u16(), Some(e.reason())),
    };
    spans::record_response(&span, status, reason);
    answer
}

/// The request, its notification keeping `trace`; `server_span` is the request's span while
/// spans are exported (the pipeline runs in it), else a plain one is made for the logs.
async fn handle(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
    trace: TraceContext,
    server_span: Option<tracing::Span>,
) -> Result<HttpResponse, WebhookError> {
    let (body, _buffered) = match check_and_read(&request, payload, &state).await {
        Ok(read) => read,
        Err(e @ WebhookError::Overloaded { .. }) => {
            state.metrics.received(Source::Webhook);
            state.metrics.unavailable(Source::Webhook, "overloaded");
            return Err(e);
        }
        Err(e) => {
            state.metrics.received(Source::Webhook);
            state.metrics.rejected(Source::Webhook, e.reason());
            tracing::info!(reason = e.reason(), "webhook request rejected");
            return Err(e);
        }
    };
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        state.metrics.received(Source::Webhook);
        state.metrics.unavailable(Source::Webhook, "overloaded");
        return Err(WebhookError::Overloaded {
            retry_after_seconds: state.retry_after_seconds,
        });
    };
    let span = server_span.unwrap_or_else(|| {
        tracing::info_span!(
            "notification",
            source = "webhook",
            notification_id = tracing::field::Empty
        )
    });
    // Run the pipeline as its own task: if Dataloy hangs up mid-way, the claim is still
    // committed or released instead of being abandoned with the request. Boxed where it is
    // made: the pipeline's future is kilobytes, and spawning moved it by value several times
    // (memcpy, about 2 % of a request's instructions; BENCHMARKS.md).
    let ingest = state.ingest.clone();
    let outcome = tokio::spawn(Box::pin(
        async move { ingest.ingest(body, Source::Webhook, trace).await }.instrument(span),
    ))
    .await
    .expect("ingest task panicked");
    match outcome {
        Ok(Accepted::New(id)) => Ok(HttpResponse::Ok().json(Answer {
            status: "accepted",
            id: id.as_str(),
        })),
        Ok(Accepted::Duplicate(id)) => Ok(HttpResponse::Ok().json(Answer {
            status: "duplicate",
            id: id.as_str(),
        })),
        Err(e @ IngestError::Invalid(_)) => Err(WebhookError::Invalid(e)),
        Err(cause) => Err(WebhookError::Unavailable {
            cause,
            retry_after_seconds: state.retry_after_seconds,
        }),
    }
}

/// Any other path or method on the notification listener: credentials are checked first, so
/// the listener reveals nothing to a caller without them.
pub async fn unknown_route(
    request: HttpRequest,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    if !state.auth.verify(request.headers()) {
        return Err(WebhookError::Unauthorized {
            challenge: state.auth.challenge(),
        });
    }
    Ok(super::error::not_found().await)
}

/// `/webhooks/dataloy` asked with another method than POST: 405 with `Allow: POST`, once the
/// credentials are checked (as for any other request on this listener).
pub async fn method_not_allowed(
    request: HttpRequest,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    if !state.auth.verify(request.headers()) {
        return Err(WebhookError::Unauthorized {
            challenge: state.auth.challenge(),
        });
    }
    Ok(super::error::method_not_allowed(
        &super::Endpoint::Webhook.method(),
    ))
}

/// Checks credentials and headers, then reads the body within the byte budget; returns it with
/// the budget it holds (released when the request is done).
async fn check_and_read(
    request: &HttpRequest,
    payload: web::Payload,
    state: &WebhookState,
) -> Result<(Bytes, BufferedBytes), WebhookError> {
    if !state.auth.verify(request.headers()) {
        return Err(WebhookError::Unauthorized {
            challenge: state.auth.challenge(),
        });
    }
    check_content_headers(request.headers())?;
    let limit = state.max_body_bytes;
    let declared = declared_length(request.headers());
    if declared.is_some_and(|len| len > limit) {
        return Err(WebhookError::TooLarge { limit });
    }
    // A declared length is a promise, not bytes: reserve little up front and grow as data comes.
    let capacity = declared.unwrap_or(0).min(INITIAL_CAPACITY);
    let mut buffered = BufferedBytes {
        budget: state.buffered_bytes.clone(),
        held: None,
        retry_after_seconds: state.retry_after_seconds,
    };
    let body = tokio::time::timeout(
        state.body_timeout,
        read_body(payload, limit, capacity, &mut buffered),
    )
    .await
    .map_err(|_| WebhookError::BodyTimeout)??;
    Ok((body, buffered))
}

/// Most bytes reserved for a body before any arrive.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// The share of `server.max_buffered_bytes` one request holds.
pub struct BufferedBytes {
    budget: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    retry_after_seconds: u32,
}

impl BufferedBytes {
    /// Takes `bytes` more from the budget, or fails at once when it is spent.
    fn take(&mut self, bytes: usize) -> Result<(), WebhookError> {
        let Ok(bytes) = u32::try_from(bytes) else {
            return Err(self.overloaded_error());
        };
        let more = self
            .budget
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| self.overloaded_error())?;
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }

    fn overloaded_error(&self) -> WebhookError {
        WebhookError::Overloaded {
            retry_after_seconds: self.retry_after_seconds,
        }
    }
}

async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    capacity: usize,
    buffered: &mut BufferedBytes,
) -> Result<Bytes, WebhookError> {
    let mut body = BytesMut::with_capacity(capacity);
    buffered.take(capacity)?;
    let mut reserved = capacity;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| WebhookError::BodyRead)?;
        if body.len() + chunk.len() > limit {
            return Err(WebhookError::TooLarge { limit });
        }
        let needed = body.len() + chunk.len();
        if needed > reserved {
            buffered.take(needed - reserved)?;
            reserved = needed;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses what the gateway cannot read as JSON text: a content type other than
/// `application/json`, `application/…+json` or none at all (Dataloy's own); a charset other than
/// UTF-8 (JSON's only encoding, RFC 8259); any content encoding but `identity` (the body is
/// relayed byte for byte, so it is not decompressed here).
fn check_content_headers(headers: &HeaderMap) -> Result<(), WebhookError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for coding in text.split(',').map(str::trim) {
            if !coding.eq_ignore_ascii_case("identity") && !coding.is_empty() {
                return Err(WebhookError::UnsupportedEncoding(printable(coding)));
            }
        }
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let Ok(value) = value.to_str() else {
        return Err(WebhookError::UnsupportedMediaType);
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().as_bytes();
    let json = essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() >= b"application/+json".len()
            && essence[..b"application/".len()].eq_ignore_ascii_case(b"application/")
            && essence[essence.len() - b"+json".len()..].eq_ignore_ascii_case(b"+json"));
    if !json {
        return Err(WebhookError::UnsupportedMediaType);
    }
    for parameter in parts {
        let Some((name, charset)) = parameter.split_once('=') else {
            continue;
        };
        let charset = charset.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !charset.eq_ignore_ascii_case("utf-8")
            && !charset.eq_ignore_ascii_case("utf8")
        {
            return Err(WebhookError::UnsupportedCharset(printable(charset)));
        }
    }
    Ok(())
}

/// A header value short and safe enough to echo in an error message.
fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(40).collect()
}
