//! Several notifications through the one path at once, for a source that reads them faster than
//! one group commit each (the WebSocket source drains everything its socket holds): each is
//! validated, claimed and committed as a webhook would be, but all are made durable in one spool
//! append, in order. Order is what makes this more than a loop: the outcome covers a prefix of
//! the batch, ending at the first notification that could not be stored for now; those after it
//! are left untouched (claims released) for the caller to offer again, so nothing overtakes a
//! notification that is being retried.

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use futures::future::join_all;

use super::{Accepted, Durability, Ingest, IngestError};
use crate::dedup::ClaimToken;
use crate::envelope::{Envelope, EnvelopeError};
use crate::metrics::Source;
use crate::notification::Notification;
use crate::spool::SpoolError;
use crate::trace_context::TraceContext;

/// One body on its way through the batch.
enum Step {
    Invalid(EnvelopeError),
    Duplicate(Envelope),
    /// Claimed; the notification waits for the durable write.
    Claimed(Envelope, ClaimToken),
    Failed(IngestError),
}

impl Ingest {
    /// Takes `bodies` through the pipeline, in order, with one durable write for all of them;
    /// `traces[i]` is the trace context of `bodies[i]`. Returns the outcomes of a prefix of
    /// `bodies` (each logged and counted as [`Ingest::ingest`] does): it ends with the first
    /// that failed for a reason that may pass (spool full, dedup unavailable…), or before a
    /// second copy of an id already in the batch. The caller offers the bodies after the prefix
    /// again.
    pub async fn ingest_batch(
        &self,
        bodies: &[Bytes],
        traces: &[TraceContext],
        source: Source,
    ) -> Vec<Result<Accepted, IngestError>> {
        assert_eq!(bodies.len(), traces.len(), "one trace context per body");
        let started = Instant::now();
        let mut steps = self.claim_all(bodies).await;
        // A claim that failed for now ends the batch: nothing after it may be stored before it.
        if let Some(failed) = steps.iter().position(|s| matches!(s, Step::Failed(_))) {
            self.release(steps.drain(failed + 1..)).await;
        }
        let claimed = steps
            .iter()
            .zip(bodies.iter().zip(traces))
            .filter_map(|(step, (body, trace))| match step {
                Step::Claimed(envelope, _) => Some(
                    Notification::new(envelope.clone(), body.clone()).with_trace(trace.clone()),
                ),
                _ => None,
            })
            .collect();
        let mut stored = self.make_durable_all(claimed).await.into_iter();
        let mut results = Vec::with_capacity(steps.len());
        let mut ended = false;
        for step in steps {
            let result = match step {
                Step::Invalid(e) => Err(IngestError::Invalid(e)),
                Step::Duplicate(envelope) => Ok(Accepted::Duplicate(envelope.id)),
                Step::Failed(e) => Err(e),
                Step::Claimed(envelope, token) => {
                    let closed = || Err(IngestError::Spool(SpoolError::Closed));
                    match stored.next().unwrap_or_else(closed) {
                        Ok(()) => {
                            // Durable (after the end only if the spool broke its promise of
                            // order): committed, so that offering it again finds a duplicate.
                            self.commit(&envelope, token, source).await;
                            Ok(Accepted::New(envelope.id))
                        }
                        Err(e) => {
                            self.release_claim(&envelope, token).await;
                            Err(e)
                        }
                    }
                }
            };
            if ended {
                continue;
            }
            ended = matches!(&result, Err(e) if !e.is_permanent());
            self.metrics.received(source);
            self.record(source, &result, started);
            results.push(result);
        }
        results
    }

    /// Parses and claims every body up to a second copy of an id already in the batch (whose
    /// claim would wait for the first); claims run concurrently.
    async fn claim_all(&self, bodies: &[Bytes]) -> Vec<Step> {
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(bodies.len());
        for body in bodies {
            match Envelope::parse(body) {
                Ok(envelope) => {
                    if !seen.insert(envelope.id.as_str().to_owned()) {
                        break;
                    }
                    parsed.push(Ok(envelope));
                }
                Err(e) => parsed.push(Err(e)),
            }
        }
        let claims = parsed.into_iter().map(|parsed| async move {
            let envelope = match parsed {
                Ok(envelope) => envelope,
                Err(e) => return Step::Invalid(e),
            };
            match self.claim(&envelope.id).await {
                Ok(Some(token)) => Step::Claimed(envelope, token),
                Ok(None) => Step::Duplicate(envelope),
                Err(e) => Step::Failed(e),
            }
        });
        join_all(claims).await
    }

    /// Makes the notifications durable in order; one outcome each. Once one fails for a reason
    /// that may pass, none after it is stored.
    async fn make_durable_all(
        &self,
        notifications: Vec<Notification>,
    ) -> Vec<Result<(), IngestError>> {
        match &self.durability {
            Durability::Spool(spool) => spool
                .append_batch(notifications)
                .await
                .into_iter()
                .map(|stored| match stored {
                    Ok(_) => Ok(()),
                    Err(SpoolError::Full) => Err(IngestError::SpoolFull),
                    Err(e) => Err(IngestError::Spool(e)),
                })
                .collect(),
            Durability::Direct { .. } => {
                let mut outcomes = Vec::with_capacity(notifications.len());
                let mut failed = false;
                for notification in notifications {
                    if failed {
                        outcomes.push(Err(IngestError::SpoolFull));
                        continue;
                    }
                    let outcome = self.make_durable(notification).await;
                    failed = matches!(&outcome, Err(e) if !e.is_permanent());
                    outcomes.push(outcome);
                }
                outcomes
            }
        }
    }

    async fn commit(&self, envelope: &Envelope, token: ClaimToken, source: Source) {
        if let Err(e) = self
            .dedup
            .commit(envelope.id.as_str(), token, self.settings.ttl)
            .await
        {
            // The notification is durable: offering it again would make a second copy.
            self.metrics.dedup_commit_errors.inc();
            tracing::error!(notification_id = %envelope.id, error = %e, "accepted notification, but cannot record its id");
        }
        self.metrics.accepted(source, &envelope.object_type);
    }

    async fn release(&self, steps: impl Iterator<Item = Step>) {
        for step in steps {
            if let Step::Claimed(envelope, token) = step {
                self.release_claim(&envelope, token).await;
            }
        }
    }

    async fn release_claim(&self, envelope: &Envelope, token: ClaimToken) {
        if let Err(e) = self.dedup.release(envelope.id.as_str(), token).await {
            // The claim's lease expires by itself; until then an offer of it waits.
            tracing::error!(notification_id = %envelope.id, error = %e, "cannot release dedup claim");
        }
    }
}
