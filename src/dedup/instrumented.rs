//! Wraps any dedup backend to count claims by outcome, errors by operation, and time every
//! call, in one place, with the backend's name as the only label.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ClaimOutcome, ClaimToken, DedupError, Deduplicator};
use crate::metrics::Metrics;

pub struct Instrumented {
    inner: Arc<dyn Deduplicator>,
    metrics: Metrics,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Deduplicator>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(&self, op: &'static str, started: Instant, result: &Result<T, DedupError>) {
        let backend = self.inner.backend();
        self.metrics
            .dedup_call(backend, op, started.elapsed(), result.is_ok());
    }
}

#[async_trait]
impl Deduplicator for Instrumented {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        let started = Instant::now();
        let result = self.inner.claim(id, lease).await;
        self.record("claim", started, &result);
        if let Ok(outcome) = &result {
            let label = match outcome {
                ClaimOutcome::Claimed(_) => "claimed",
                ClaimOutcome::Duplicate => "duplicate",
                ClaimOutcome::InFlight => "in_flight",
            };
            self.metrics.dedup_claimed(self.inner.backend(), label);
        }
        result
    }

    async fn commit(&self, id: &str, token: ClaimToken, ttl: Duration) -> Result<(), DedupError> {
        let started = Instant::now();
        let result = self.inner.commit(id, token, ttl).await;
        self.record("commit", started, &result);
        result
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        let started = Instant::now();
        let result = self.inner.release(id, token).await;
        self.record("release", started, &result);
        result
    }

    fn entry_count(&self) -> Option<usize> {
        self.inner.entry_count()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
