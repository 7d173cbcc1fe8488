//! Opt-in degraded mode (`dedup.on_backend_error = "fallback_memory"`): when the shared backend
//! fails, dedup continues in this process's memory, with a warning and a metric, instead of
//! answering 503. Replicas then no longer see each other's ids, so a retry that lands on another
//! replica during the outage can be relayed twice; the default refuses instead.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{ClaimOutcome, ClaimToken, DedupError, Deduplicator, MemoryDedup};
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

    async fn commit(&self, id: &str, token: ClaimToken, ttl: Duration) -> Result<(), DedupError> {
        // Recorded locally either way, so this replica recognises the id even if Redis is down.
        self.fallback.commit(id, token, ttl).await?;
        if token.0 & FALLBACK_BIT == 0 {
            if let Err(e) = self.primary.commit(id, token, ttl).await {
                self.fell_back("commit", &e);
            }
        }
        Ok(())
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        if token.0 & FALLBACK_BIT != 0 {
            return self
                .fallback
                .release(id, ClaimToken(token.0 & !FALLBACK_BIT))
                .await;
        }
        if let Err(e) = self.primary.release(id, token).await {
            // The claim's lease expires by itself.
            self.fell_back("release", &e);
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        self.primary.backend()
    }
}
