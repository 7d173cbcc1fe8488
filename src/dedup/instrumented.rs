//! Wraps any dedup backend to count claims by outcome, errors by operation, and time every
//! call, in one place, with the backend's name as the only label.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ClaimOutcome, ClaimToken, CommitOutcome, DedupError, Deduplicator};
use crate::metrics::{ClaimResult, DedupCall, DedupSeries, Metrics};

pub struct Instrumented {
    inner: Arc<dyn Deduplicator>,
    series: DedupSeries,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Deduplicator>, metrics: Metrics) -> Self {
        let series = metrics.dedup_series(inner.backend());
        Self { inner, series }
    }

    fn record<T>(&self, call: DedupCall, started: Instant, result: &Result<T, DedupError>) {
        self.series.call(call, started.elapsed(), result.is_ok());
    }
}

#[async_trait]
impl Deduplicator for Instrumented {
    async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, DedupError> {
        let started = Instant::now();
        let result = self.inner.claim(id, lease).await;
        self.record(DedupCall::Claim, started, &result);
        if let Ok(outcome) = &result {
            self.series.claimed(match outcome {
                ClaimOutcome::Claimed(_) => ClaimResult::Claimed,
                ClaimOutcome::Duplicate => ClaimResult::Duplicate,
                ClaimOutcome::InFlight => ClaimResult::InFlight,
            });
        }
        result
    }

    async fn renew(
        &self,
        id: &str,
        token: ClaimToken,
        lease: Duration,
    ) -> Result<bool, DedupError> {
        let started = Instant::now();
        let result = self.inner.renew(id, token, lease).await;
        self.record(DedupCall::Renew, started, &result);
        result
    }

    async fn commit(
        &self,
        id: &str,
        token: ClaimToken,
        ttl: Duration,
    ) -> Result<CommitOutcome, DedupError> {
        let started = Instant::now();
        let result = self.inner.commit(id, token, ttl).await;
        self.record(DedupCall::Commit, started, &result);
        result
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), DedupError> {
        let started = Instant::now();
        let result = self.inner.release(id, token).await;
        self.record(DedupCall::Release, started, &result);
        result
    }

    fn entry_count(&self) -> Option<usize> {
        self.inner.entry_count()
    }

    fn usable(&self) -> bool {
        self.inner.usable()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
