//! Deduplication by notification id. Dataloy resends an id it got no answer for, so the same id
//! arriving twice is normal traffic. A backend records ids in two steps: `claim` before the
//! notification is made durable, then `commit` once it is (or `release` if that failed, so the
//! sender's retry is processed instead of being dropped as a duplicate).

pub mod fallback;
pub mod instrumented;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;

use crate::config::{DedupBackend, DedupSettings, OnBackendError};
use crate::metrics::Metrics;
pub use memory::MemoryDedup;
pub use redis::RedisDedup;

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

/// A deduplication backend. Every backend passes the same behaviour tests (`tests/api/dedup.rs`).
#[async_trait]
pub trait Deduplicator: Send + Sync + 'static {
    /// Claims `id` for `lease`, unless it is already claimed or committed.
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError>;
    /// Marks a claimed id as accepted for `ttl`.
    async fn commit(&self, id: &str, token: ClaimToken, ttl: Duration) -> Result<(), DedupError>;
    /// Forgets a claim that did not lead to a durable notification.
    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError>;
    /// Ids currently held, when the backend can tell cheaply.
    fn entry_count(&self) -> Option<usize> {
        None
    }
    /// Backend name for metric labels.
    fn backend(&self) -> &'static str;
}

/// The configured backend, instrumented, with the memory fallback when asked for.
pub fn build(
    settings: &DedupSettings,
    metrics: &Metrics,
) -> Result<Arc<dyn Deduplicator>, DedupError> {
    let backend: Arc<dyn Deduplicator> = match settings.backend {
        DedupBackend::Memory => Arc::new(MemoryDedup::new(settings.max_entries)),
        DedupBackend::Redis => {
            let redis = RedisDedup::new(
                settings.redis_url.expose_secret(),
                &settings.redis_key_prefix,
                settings.redis_timeout,
            )?;
            Arc::new(redis)
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
