//! Opt-in degraded mode (`dedup.on_backend_error = "fallback_memory"`): when the shared backend
//! fails, dedup continues in this process's memory, with a warning and a metric, instead of
//! answering 503. Replicas then no longer see each other's ids, so a retry that lands on another
//! replica during the outage can be relayed twice; the default refuses instead.
//!
//! Ids this replica accepted (and claims it holds in memory) are consulted before Redis on every
//! claim, for their whole TTL, also after Redis answers again: an id accepted into the fallback
//! during an outage is known to Redis only if the commit reached it, and without this a retry
//! after Redis returned was accepted and published again. Other replicas do not see these ids.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{ClaimOutcome, ClaimToken, CommitOutcome, DedupError, Deduplicator, MemoryDedup};
use crate::metrics::Metrics;

/// Marks tokens handed out by the fallback, so commit and release go to the same backend.
const FALLBACK_BIT: u64 = 1 << 63;

pub struct WithMemoryFallback {
    primary: Arc<dyn Deduplicator>,
    fallback: MemoryDedup,
    metrics: Metrics,
}

impl WithMemoryFallback {
    pub fn new(primary: Arc<dyn Deduplicator>, max_entries: usize, metrics: Metrics) -> Self {
        Self {
            primary,
            fallback: MemoryDedup::new(max_entries),
            metrics,
        }
    }

    fn fell_back(&self, op: &'static str, error: &DedupError) {
        self.metrics.dedup_fallback.inc();
        tracing::warn!(operation = op, error = %error, "dedup backend failed; using in-memory dedup for this notification");
    }
}

#[async_trait]
impl Deduplicator for WithMemoryFallback {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        if let Some(held) = self.fallback.peek(id) {
            return Ok(held);
        }
        match self.primary.claim(id, lease).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.fell_back("claim", &e);
                Ok(match self.fallback.claim(id, lease).await? {
                    ClaimOutcome::Claimed(token) => {
                        ClaimOutcome::Claimed(ClaimToken(token.0 | FALLBACK_BIT))
                    }
                    other => other,
                })
            }
        }
    }

    async fn renew(
        &self,
        id: &str,
        token: ClaimToken,
        lease: Duration,
    ) -> Result<bool, DedupError> {
        match local_token(token) {
            Some(local) => self.fallback.renew(id, local, lease).await,
            None => self.primary.renew(id, token, lease).await,
        }
    }

    async fn commit(
        &self,
        id: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<CommitOutcome, DedupError> {
        // Recorded locally either way, so this replica recognises the id even if Redis is down
        // or forgets it.
        let local = self
            .fallback
            .commit(id, local_token(token).unwrap_or(token), ttl)
            .await?;
        if local_token(token).is_some() {
            return Ok(local);
        }
        match self.primary.commit(id, token, ttl).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.fell_back("commit", &e);
                Ok(local)
            }
        }
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        if let Some(local) = local_token(token) {
            return self.fallback.release(id, local).await;
        }
        if let Err(e) = self.primary.release(id, token).await {
            // The claim's lease expires by itself.
            self.fell_back("release", &e);
        }
        Ok(())
    }

    fn entry_count(&self) -> Option<usize> {
        self.fallback.entry_count()
    }

    /// Whether Redis answers; readiness shows "fallback" while it does not (never unready).
    fn usable(&self) -> bool {
        self.primary.usable()
    }

    fn backend(&self) -> &'static str {
        self.primary.backend()
    }
}

/// The memory backend's token, when `token` was handed out by the fallback.
fn local_token(token: ClaimToken) -> Option<ClaimToken> {
    (token.0 & FALLBACK_BIT != 0).then_some(ClaimToken(token.0 & !FALLBACK_BIT))
}
