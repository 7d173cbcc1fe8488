//! The OAuth2 client-credentials token for Dataloy's REST API, fetched once and reused until it
//! is about to expire, or until Dataloy refuses it ("Token expired."): never one per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{read_limited, DataloyError, Operation, Redactor};

/// A token is replaced this long before it expires (at most a tenth of its lifetime), so a
/// request never leaves with a token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A bearer token as handed to one request; `id` tells which fetch it came from.
pub struct BearerToken {
    pub(super) value: SecretString,
    id: u64,
}

struct CachedToken {
    value: SecretString,
    id: u64,
    /// `None` when the token endpoint did not say: the token is used until Dataloy refuses it.
    refresh_at: Option<Instant>,
}

pub(super) struct TokenSource {
    url: reqwest::Url,
    client_id: String,
    client_secret: SecretString,
    audience: Option<String>,
    cached: Mutex<Option<CachedToken>>,
    fetches: AtomicU64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenSource {
    pub(super) fn new(
        url: reqwest::Url,
        client_id: String,
        client_secret: SecretString,
        audience: Option<String>,
    ) -> Self {
        Self {
            url,
            client_id,
            client_secret,
            audience,
            cached: Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// The cached token, or a new one when there is none or it is about to expire.
    pub(super) async fn bearer(
        &self,
        http: &reqwest::Client,
        max_bytes: usize,
        redactor: &Redactor,
    ) -> Result<BearerToken, DataloyError> {
        let mut cached = self.cached.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|t| t.refresh_at.is_none_or(|at| Instant::now() < at));
        if !fresh {
            *cached = Some(self.fetch(http, max_bytes, redactor).await?);
        }
        let token = cached.as_ref().expect("just filled");
        Ok(BearerToken {
            value: token.value.clone(),
            id: token.id,
        })
    }

    /// Forgets `refused` if it is still the cached token (another request may have replaced it
    /// already), so the next [`TokenSource::bearer`] fetches a new one.
    pub(super) async fn forget(&self, refused: &BearerToken) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.id == refused.id) {
            *cached = None;
        }
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        max_bytes: usize,
        redactor: &Redactor,
    ) -> Result<CachedToken, DataloyError> {
        let operation = Operation::Token;
        let body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose_secret(),
            "audience": self.audience,
            "grant_type": "client_credentials",
        });
        let sent_at = Instant::now();
        let response = http
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| DataloyError::unreachable(operation, e))?;
        let status = response.status();
        let bytes = read_limited(operation, response, max_bytes).await?;
        if !status.is_success() {
            return Err(DataloyError::Refused {
                operation,
                status: status.as_u16(),
                message: redactor.message_of(&bytes),
            });
        }
        let token: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| DataloyError::InvalidResponse {
                operation,
                reason: format!("not a token response: {}", redactor.parse_error(&e)),
            })?;
        if token.access_token.is_empty() {
            return Err(DataloyError::InvalidResponse {
                operation,
                reason: "the access_token is empty".into(),
            });
        }
        let id = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
        // A lifetime too long to represent counts as none.
        let refresh_at = token.expires_in.and_then(|seconds| {
            let lifetime = Duration::from_secs(seconds);
            sent_at.checked_add(lifetime - REFRESH_MARGIN.min(lifetime / 10))
        });
        tracing::debug!(
            expires_in = token.expires_in,
            "fetched a Dataloy access token"
        );
        Ok(CachedToken {
            value: SecretString::from(token.access_token),
            id,
            refresh_at,
        })
    }
}
