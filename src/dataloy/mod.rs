//! A small client for Dataloy's REST API, as far as the subscription keeper needs it: an OAuth2
//! client-credentials token ([`token`]) and the `WebhookSubscription` resource ([`subscription`]).
//! Requests go only to `base_url` (never to a URL Dataloy returned, so the token cannot leak
//! elsewhere); every request has a timeout and every response a size limit; the client secret
//! and the token never reach a log line, a metric or an error message.

pub mod subscription;
mod token;

use std::fmt;

use bytes::{Bytes, BytesMut};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::DataloySettings;
pub use subscription::{RemoteSubscription, SubscriptionKey, SubscriptionRequest, Target};
use token::{BearerToken, TokenSource};

/// The resource holding webhook subscriptions.
const SUBSCRIPTION_RESOURCE: &str = "WebhookSubscription";
/// Longest piece of a Dataloy error message repeated in our own errors.
const MAX_MESSAGE_CHARS: usize = 200;

/// A call to Dataloy; a log field and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Token,
    List,
    Create,
    Update,
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Token,
        Operation::List,
        Operation::Create,
        Operation::Update,
        Operation::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Token => "token",
            Operation::List => "list",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call to Dataloy failed. Messages never contain the client secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum DataloyError {
    #[error("{operation}: Dataloy could not be reached: {reason}")]
    Unreachable {
        operation: Operation,
        reason: String,
    },
    #[error("{operation}: Dataloy answered {status}{}", message_suffix(.message))]
    Refused {
        operation: Operation,
        status: u16,
        message: Option<String>,
    },
    #[error("{operation}: unexpected answer from Dataloy: {reason}")]
    InvalidResponse {
        operation: Operation,
        reason: String,
    },
    #[error(
        "{operation}: Dataloy's answer is larger than dataloy.max_response_bytes ({limit} bytes)"
    )]
    ResponseTooLarge { operation: Operation, limit: usize },
    #[error("cannot build the HTTP client for Dataloy: {0}")]
    Client(String),
}

fn message_suffix(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

impl DataloyError {
    /// The operation that failed.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            DataloyError::Unreachable { operation, .. }
            | DataloyError::Refused { operation, .. }
            | DataloyError::InvalidResponse { operation, .. }
            | DataloyError::ResponseTooLarge { operation, .. } => Some(*operation),
            DataloyError::Client(_) => None,
        }
    }

    fn unreachable(operation: Operation, error: reqwest::Error) -> Self {
        // The chain says why (refused, timed out, TLS); the URLs in it hold no credentials
        // (checked at start-up) and the bodies are never part of it.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        DataloyError::Unreachable { operation, reason }
    }
}

/// Removes the client secret and the `extra` values (which may hold the HTTP channel's
/// credentials) from text that came from outside (an error body may echo the request), and
/// shortens it.
struct Redactor {
    /// Longest first, so that a secret containing another is removed whole.
    secrets: Vec<SecretString>,
}

/// `extra` values shorter than this are not scrubbed (a code such as `HTTP` would wreck every
/// message and is no credential).
const MIN_REDACTED_CHARS: usize = 4;

impl Redactor {
    fn new(client_secret: &SecretString, also: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<SecretString> = std::iter::once(client_secret.clone())
            .chain(
                also.into_iter()
                    .filter(|s| s.chars().count() >= MIN_REDACTED_CHARS)
                    .map(SecretString::from),
            )
            .filter(|s| !s.expose_secret().is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose_secret().len()));
        Self { secrets }
    }

    fn clean(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            text = text.replace(secret, "[redacted]");
            // As Rust's `{:?}` (serde's messages) writes it, quotes and escapes included.
            let debug = format!("{secret:?}");
            let escaped = &debug[1..debug.len() - 1];
            if escaped != secret {
                text = text.replace(escaped, "[redacted]");
            }
        }
        let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        short
    }

    /// Why an answer did not parse, without quoting any value from it: serde's own message
    /// quotes the offending value (`invalid type: string "…"`), which may be the secret echoed
    /// back.
    fn parse_error(&self, error: &serde_json::Error) -> String {
        use serde_json::error::Category;
        let at = format!("at line {} column {}", error.line(), error.column());
        let text = match error.classify() {
            Category::Io => "cannot be read".to_owned(),
            Category::Syntax => format!("not valid JSON {at}"),
            Category::Eof => format!("the JSON ends early {at}"),
            Category::Data => {
                let message = error.to_string();
                // `missing field `x`` names one of our own fields, never a value.
                match message.strip_suffix(&format!(" {at}")) {
                    Some(missing) if missing.starts_with("missing field `") => missing.to_owned(),
                    _ => format!("a member has the wrong type or value {at}"),
                }
            }
        };
        self.clean(&text)
    }

    /// Dataloy's or the token endpoint's explanation in an error body (`message`,
    /// `error_description`, `error`), cleaned; `None` when the body holds none.
    fn message_of(&self, body: &[u8]) -> Option<String> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let message = ["message", "error_description", "error"]
            .iter()
            .find_map(|name| value.get(name).and_then(Value::as_str))?;
        Some(self.clean(message))
    }
}

/// Reads a response body, refusing one larger than `limit`.
async fn read_limited(
    operation: Operation,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, DataloyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(DataloyError::ResponseTooLarge { operation, limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DataloyError::unreachable(operation, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(DataloyError::ResponseTooLarge { operation, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Dataloy's REST API for webhook subscriptions.
pub struct DataloyClient {
    http: reqwest::Client,
    resource: reqwest::Url,
    list_query: Vec<(String, String)>,
    tokens: TokenSource,
    redactor: Redactor,
    max_response_bytes: usize,
}

impl DataloyClient {
    /// A client for `settings`; `also_secret` are further values (the `extra` members'
    /// strings) scrubbed, like the client secret, from every error text built from an answer.
    pub fn new(
        settings: &DataloySettings,
        also_secret: impl IntoIterator<Item = String>,
    ) -> Result<Self, DataloyError> {
        let invalid = |what: &str| DataloyError::Client(format!("{what} is not a URL"));
        let base = settings.base_url.trim_end_matches('/');
        let resource = reqwest::Url::parse(&format!("{base}/ws/rest/{SUBSCRIPTION_RESOURCE}"))
            .map_err(|_| invalid("dataloy.base_url"))?;
        let token_url =
            reqwest::Url::parse(&settings.token_url).map_err(|_| invalid("dataloy.token_url"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A redirect would carry the secret or the token to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dataloy-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DataloyError::Client(e.to_string()))?;
        Ok(Self {
            http,
            resource,
            list_query: settings
                .list_query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tokens: TokenSource::new(
                token_url,
                settings.client_id.clone(),
                settings.client_secret.clone(),
                settings.audience.clone(),
            ),
            redactor: Redactor::new(&settings.client_secret, also_secret),
            max_response_bytes: settings.max_response_bytes.bytes() as usize,
        })
    }

    /// `GET /WebhookSubscription`: every subscription the API user can see.
    pub async fn list_subscriptions(&self) -> Result<Vec<RemoteSubscription>, DataloyError> {
        let operation = Operation::List;
        let body = self
            .send(operation, |http| {
                http.get(self.resource.clone()).query(&self.list_query)
            })
            .await?;
        serde_json::from_slice(&body).map_err(|e| DataloyError::InvalidResponse {
            operation,
            reason: format!(
                "the list is not a JSON array of subscriptions: {}",
                self.redactor.parse_error(&e)
            ),
        })
    }

    /// `POST /WebhookSubscription` with `body`.
    pub async fn create_subscription(&self, body: &Value) -> Result<(), DataloyError> {
        self.send(Operation::Create, |http| {
            http.post(self.resource.clone()).json(body)
        })
        .await
        .map(drop)
    }

    /// `PUT /WebhookSubscription/{key}` (the path of the subscription's `self`) with `body`.
    pub async fn update_subscription(
        &self,
        key: &SubscriptionKey,
        body: &Value,
    ) -> Result<(), DataloyError> {
        let url = self.subscription_url(Operation::Update, key)?;
        self.send(Operation::Update, |http| http.put(url.clone()).json(body))
            .await
            .map(drop)
    }

    /// `DELETE /WebhookSubscription/{key}`.
    pub async fn delete_subscription(&self, key: &SubscriptionKey) -> Result<(), DataloyError> {
        let url = self.subscription_url(Operation::Delete, key)?;
        self.send(Operation::Delete, |http| http.delete(url.clone()))
            .await
            .map(drop)
    }

    fn subscription_url(
        &self,
        operation: Operation,
        key: &SubscriptionKey,
    ) -> Result<reqwest::Url, DataloyError> {
        let mut url = self.resource.clone();
        url.path_segments_mut()
            .map_err(|_| DataloyError::Client("dataloy.base_url cannot have a path".into()))?
            .push(&key.0);
        if key.0.is_empty() {
            return Err(DataloyError::InvalidResponse {
                operation,
                reason: "a subscription without a key".into(),
            });
        }
        Ok(url)
    }

    /// Sends the request `build` makes with the current token; if Dataloy refuses the token
    /// (401, e.g. "Token expired."), fetches a new one and sends it once more.
    async fn send(
        &self,
        operation: Operation,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, DataloyError> {
        let mut retried = false;
        loop {
            let token = self.bearer().await?;
            let response = build(&self.http)
                .bearer_auth(token.value.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| DataloyError::unreachable(operation, e))?;
            let status = response.status();
            let body = read_limited(operation, response, self.max_response_bytes).await?;
            if status == reqwest::StatusCode::UNAUTHORIZED && !retried {
                tracing::info!(
                    operation = operation.as_str(),
                    message = self.redactor.message_of(&body),
                    "Dataloy refused the access token; fetching a new one"
                );
                self.tokens.forget(&token).await;
                retried = true;
                continue;
            }
            if !status.is_success() {
                return Err(DataloyError::Refused {
                    operation,
                    status: status.as_u16(),
                    message: self.redactor.message_of(&body),
                });
            }
            return Ok(body);
        }
    }

    async fn bearer(&self) -> Result<BearerToken, DataloyError> {
        self.tokens
            .bearer(&self.http, self.max_response_bytes, &self.redactor)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_lose_the_secret_and_stay_short() {
        let redactor = Redactor::new(&SecretString::from("s3cret"), ["hunter2-pw".to_owned()]);
        let body = br#"{"error":"invalid_client","error_description":"bad secret s3cret"}"#;
        assert_eq!(
            redactor.message_of(body).as_deref(),
            Some("bad secret [redacted]")
        );
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        let message = redactor.message_of(long.as_bytes()).unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(redactor.message_of(b"<html>"), None);
        let echoed = br#"{"message":"bad password hunter2-pw"}"#;
        assert_eq!(
            redactor.message_of(echoed).as_deref(),
            Some("bad password [redacted]")
        );
    }

    #[test]
    fn parse_errors_quote_no_value_from_the_answer() {
        let secret = r#"se"c\ret-value"#;
        let redactor = Redactor::new(&SecretString::from(secret), []);
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answers = [
            serde_json::json!({"access_token": "t", "expires_in": secret}).to_string(),
            serde_json::json!({"expires_in": 1}).to_string(),
            serde_json::json!([secret]).to_string(),
            format!(r#"{{"access_token": {secret}"#),
        ];
        for answer in answers {
            let error = serde_json::from_str::<Token>(&answer).unwrap_err();
            let text = redactor.parse_error(&error);
            assert!(
                !text.contains("se\\\"c") && !text.contains("ret-value"),
                "{text}"
            );
            assert!(
                text.contains("line 1 column") || text.contains("missing field"),
                "{text}"
            );
        }
        let missing = serde_json::from_str::<Token>(r#"{"expires_in": 1}"#).unwrap_err();
        assert_eq!(
            redactor.parse_error(&missing),
            "missing field `access_token`"
        );
        assert_eq!(
            redactor.clean(&format!("{:?} and {secret}", secret)),
            "\"[redacted]\" and [redacted]"
        );
    }
}
