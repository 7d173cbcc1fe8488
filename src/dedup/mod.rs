//! Deduplication by notification id. Dataloy resends an id it got no answer for, so the same id
//! arriving twice is normal traffic. A backend records ids in two steps: `claim` before the
//! notification is made durable, then `commit` once it is (or `release` if that failed, so the
//! sender's retry is processed instead of being dropped as a duplicate).
//!
//! A claim carries a token, and every later call is fenced by it: `renew` keeps the claim alive
//! while a slow durable write runs, and `commit` reports when another request took the id over
//! meanwhile (its lease had run out), instead of overwriting that request's claim unseen.

pub mod fallback;
pub mod instrumented;
pub mod memory;
pub mod redis;
mod redis_connection;
mod redis_eviction;
mod redis_fence;
mod redis_target;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;

use crate::config::{DedupBackend, DedupSettings, OnBackendError};
use crate::metrics::Metrics;
pub use memory::{IdKey, MemoryDedup};
pub use redis::{RedisDedup, RedisOptions};
pub use redis_target::RedisTarget;

/// Identifies one claim, so that a late `release` cannot free an id someone else claimed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(pub u64);

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The id is new: the caller owns it until it commits or releases.
    Claimed(ClaimToken),
    /// The id was accepted before and has not expired.
    Duplicate,
    /// Another request holds a claim on the id and has not finished yet.
    InFlight,
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("dedup backend unavailable: {0}")]
    Unavailable(String),
}

/// What a commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The id is now recorded as accepted: the claim was still the caller's, or it had lapsed
    /// without anyone else taking it.
    Committed,
    /// Another request claimed or committed the id after the caller's lease ran out, so a second
    /// copy may have been (or be about to be) made durable. The id is recorded as accepted
    /// either way, so no third copy follows.
    LeaseLost,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("`dedup.redis_url` {0}")]
    Url(String),
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    #[error(
        "Redis (dedup.redis_url) refused the TLS handshake: {0}. Check dedup.tls (ca_file for a \
         private CA, server_name when the certificate names another host, cert_file and \
         key_file when Redis asks for a client certificate)"
    )]
    Handshake(String),
    #[error(
        "Redis evicts keys (maxmemory {maxmemory} bytes, maxmemory-policy {policy}): an evicted \
         id is accepted again and published twice. Set maxmemory-policy noeviction, or \
         dedup.redis_allow_eviction = true to run anyway"
    )]
    Evicting { policy: String, maxmemory: u64 },
}

/// A deduplication backend. Every backend passes the same behaviour tests (`tests/api/dedup.rs`).
#[async_trait]
pub trait Deduplicator: Send + Sync + 'static {
    /// Claims `id` for `lease`, unless it is already claimed or committed.
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError>;
    /// Extends the caller's claim by `lease` from now (taking it again if it lapsed and nobody
    /// else took it); false when another request holds the id now.
    async fn renew(&self, id: &str, token: ClaimToken, lease: Duration)
        -> Result<bool, DedupError>;
    /// Marks a claimed id as accepted for `ttl`, and says whether the claim was still the caller's.
    async fn commit(
        &self,
        id: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<CommitOutcome, DedupError>;
    /// Forgets a claim that did not lead to a durable notification.
    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError>;
    /// Ids currently held, when the backend can tell cheaply.
    fn entry_count(&self) -> Option<usize> {
        None
    }
    /// False while the backend refuses every call (unreachable, wrong password, …): readiness
    /// reports it.
    fn usable(&self) -> bool {
        true
    }
    /// Backend name for metric labels.
    fn backend(&self) -> &'static str;
}

/// The configured backend, instrumented, with the memory fallback when asked for. Call it on
/// the application's main runtime: the Redis connection lives there, not on an HTTP worker.
/// `remembered` is the memory backend's table when the caller filled it already (from the id
/// journal); otherwise the memory backend starts empty.
pub async fn build(
    settings: &DedupSettings,
    remembered: Option<MemoryDedup>,
    metrics: &Metrics,
) -> Result<Arc<dyn Deduplicator>, BuildError> {
    let backend: Arc<dyn Deduplicator> = match settings.backend {
        DedupBackend::Memory => {
            Arc::new(remembered.unwrap_or_else(|| MemoryDedup::new(settings.max_entries)))
        }
        DedupBackend::Redis => {
            let options = redis::RedisOptions {
                url: settings.redis_url.expose_secret().to_owned(),
                key_prefix: settings.redis_key_prefix.clone(),
                timeout: settings.redis_timeout,
                allow_eviction: settings.redis_allow_eviction,
                max_lease: settings.claim_lease,
                tls: settings.tls.clone(),
            };
            Arc::new(RedisDedup::connect(options).await?)
        }
    };
    let backend: Arc<dyn Deduplicator> =
        Arc::new(instrumented::Instrumented::new(backend, metrics.clone()));
    Ok(match (settings.backend, settings.on_backend_error) {
        (DedupBackend::Redis, OnBackendError::FallbackMemory) => Arc::new(
            fallback::WithMemoryFallback::new(backend, settings.max_entries, metrics.clone()),
        ),
        _ => backend,
    })
}
