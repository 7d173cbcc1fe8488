//! `POST /webhooks/dataloy`: authenticates, bounds and reads the body, and hands it to the ingest
//! pipeline. The answer is 200 only once the notification is durable (or a known duplicate).

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

/// What the notification route needs, shared by all workers.
pub struct WebhookState {
    pub ingest: Arc<Ingest>,
    pub auth: Authenticator,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub retry_after_seconds: u32,
    pub metrics: Metrics,
    /// Bounds the notifications processed at once (load shedding).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or wrong credentials")]
    Unauthorized { challenge: Option<&'static str> },
    #[error("content type must be application/json")]
    UnsupportedMediaType,
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
            WebhookError::UnsupportedMediaType => "unsupported_media_type",
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
            WebhookError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        state.metrics.received(Source::Webhook);
        state.metrics.unavailable(Source::Webhook, "overloaded");
        return Err(WebhookError::Overloaded {
            retry_after_seconds: state.retry_after_seconds,
        });
    };
    let body = match check_and_read(&request, payload, &state).await {
        Ok(body) => body,
        Err(e) => {
            state.metrics.received(Source::Webhook);
            state.metrics.rejected(Source::Webhook, e.reason());
            tracing::info!(reason = e.reason(), "webhook request rejected");
            return Err(e);
        }
    };
    let span = tracing::info_span!(
        "notification",
        source = "webhook",
        notification_id = tracing::field::Empty
    );
    // Run the pipeline as its own task: if Dataloy hangs up mid-way, the claim is still
    // committed or released instead of being abandoned with the request.
    let ingest = state.ingest.clone();
    let outcome =
        tokio::spawn(async move { ingest.ingest(body, Source::Webhook).await }.instrument(span))
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

async fn check_and_read(
    request: &HttpRequest,
    payload: web::Payload,
    state: &WebhookState,
) -> Result<Bytes, WebhookError> {
    if !state.auth.verify(request.headers()) {
        return Err(WebhookError::Unauthorized {
            challenge: state.auth.challenge(),
        });
    }
    if !is_json_or_absent(request.headers()) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let limit = state.max_body_bytes;
    let declared = declared_length(request.headers());
    if declared.is_some_and(|len| len > limit) {
        return Err(WebhookError::TooLarge { limit });
    }
    let capacity = declared.unwrap_or(8 * 1024).min(limit);
    tokio::time::timeout(state.body_timeout, read_body(payload, limit, capacity))
        .await
        .map_err(|_| WebhookError::BodyTimeout)?
}

async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    capacity: usize,
) -> Result<Bytes, WebhookError> {
    let mut body = BytesMut::with_capacity(capacity);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| WebhookError::BodyRead)?;
        if body.len() + chunk.len() > limit {
            return Err(WebhookError::TooLarge { limit });
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

/// `application/json`, any `application/…+json`, or no content type at all (Dataloy's own).
fn is_json_or_absent(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
