//! The one path every source (webhook, WebSocket) takes: validate the envelope, claim its id,
//! make the notification durable, then commit the id. Any failure before the notification is
//! durable releases the claim, so the sender's retry is processed rather than dropped as a
//! duplicate. Every outcome is logged and counted here, once.
//!
//! The claim is renewed every third of `dedup.claim_lease` while the durable write runs (an fsync
//! stall, or a broker slow to confirm with the spool off), so a retry arriving meanwhile waits
//! and gets 503 `in_flight` instead of claiming the id and making a second copy. Should the claim
//! still be lost (Redis lost it, or renewal failed for a whole lease), the commit says so: the
//! sender is answered 200 `accepted` all the same, because this copy is durable and will be
//! delivered (a 503 would only invite a third), and the loss is logged and counted
//! (`dedup_lease_lost_total`) since a second copy may be published.

mod batch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::DedupSettings;
use crate::dead_letter::{Attempts, DeadLetterStore};
use crate::dedup::{ClaimOutcome, ClaimToken, CommitOutcome, DedupError, Deduplicator};
use crate::envelope::{Envelope, EnvelopeError, NotificationId};
use crate::metrics::{Metrics, Outcome, Source};
use crate::notification::{unix_millis, Notification};
use crate::sink::{PublishError, Sink, SinkError};
use crate::spool::{Spool, SpoolError};
use crate::trace_context::TraceContext;

/// Where an accepted notification is made durable before it is acknowledged.
pub enum Durability {
    /// Appended to the local spool; the relay publishes it later.
    Spool(Arc<Spool>),
    /// No spool: published to every sink and confirmed before the answer; a notification a sink
    /// refused for good is stored in dead letters instead, which is durable too.
    Direct {
        sinks: Vec<Arc<dyn Sink>>,
        dead_letters: Arc<DeadLetterStore>,
    },
}

/// A notification the gateway now answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    New(NotificationId),
    Duplicate(NotificationId),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid notification: {0}")]
    Invalid(#[from] EnvelopeError),
    #[error("deduplication unavailable")]
    Dedup(#[source] DedupError),
    #[error("another request with the same id is still being processed")]
    StillInFlight,
    #[error("spool is full")]
    SpoolFull,
    #[error("cannot write to the spool")]
    Spool(#[source] SpoolError),
    #[error("a sink did not confirm the notification")]
    Sink(#[source] PublishError),
}

impl IngestError {
    /// Low-cardinality reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Invalid(e) => e.code(),
            IngestError::Dedup(_) => "dedup_unavailable",
            IngestError::StillInFlight => "in_flight",
            IngestError::SpoolFull => "spool_full",
            IngestError::Spool(_) => "spool_error",
            IngestError::Sink(_) => "sink_error",
        }
    }

    /// Whether offering the same notification again can never succeed: it is invalid, or the
    /// spool cannot represent it.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            IngestError::Invalid(_) | IngestError::Spool(SpoolError::Unrepresentable(_))
        )
    }
}

pub struct Ingest {
    dedup: Arc<dyn Deduplicator>,
    durability: Durability,
    settings: DedupSettings,
    metrics: Metrics,
}

impl Ingest {
    pub fn new(
        dedup: Arc<dyn Deduplicator>,
        durability: Durability,
        settings: DedupSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            dedup,
            durability,
            settings,
            metrics,
        }
    }

    /// Takes a received body through the pipeline; records the outcome in logs and metrics.
    /// `trace` is the context its messages continue (kept in the spool with it).
    pub async fn ingest(
        &self,
        body: Bytes,
        source: Source,
        trace: TraceContext,
    ) -> Result<Accepted, IngestError> {
        let started = Instant::now();
        self.metrics.received(source);
        let result = self.process(body, source, trace).await;
        self.record(source, &result, started);
        result
    }

    /// Logs and counts one outcome.
    fn record(&self, source: Source, result: &Result<Accepted, IngestError>, started: Instant) {
        let outcome = match result {
            Ok(Accepted::New(id)) => {
                tracing::debug!(notification_id = %id, "notification accepted");
                Outcome::Accepted
            }
            Ok(Accepted::Duplicate(id)) => {
                self.metrics.duplicate(source);
                tracing::debug!(notification_id = %id, "duplicate notification ignored");
                Outcome::Duplicate
            }
            Err(IngestError::Invalid(e)) => {
                self.metrics.rejected(source, e.code());
                tracing::info!(error = %e, "invalid notification rejected");
                Outcome::Rejected
            }
            Err(e) => {
                self.metrics.unavailable(source, e.reason());
                tracing::warn!(error = %e, cause = ?std::error::Error::source(e), "notification not accepted; sender must retry");
                Outcome::Unavailable
            }
        };
        self.metrics
            .request_finished(source, outcome, started.elapsed());
    }

    async fn process(
        &self,
        body: Bytes,
        source: Source,
        trace: TraceContext,
    ) -> Result<Accepted, IngestError> {
        let envelope = Envelope::parse(&body)?;
        tracing::Span::current().record("notification_id", envelope.id.as_str());
        let id = envelope.id.clone();
        let Some(token) = self.claim(&id).await? else {
            return Ok(Accepted::Duplicate(id));
        };
        let object_type = envelope.object_type.clone();
        let durable = self.make_durable(Notification::new(envelope, body).with_trace(trace));
        if let Err(e) = self.renewing_claim(&id, token, durable).await {
            if let Err(release_error) = self.dedup.release(id.as_str(), token).await {
                // The claim's lease expires by itself; until then a retry waits, then gets 503.
                tracing::error!(notification_id = %id, error = %release_error, "cannot release dedup claim");
            }
            return Err(e);
        }
        match self
            .dedup
            .commit(id.as_str(), token, self.settings.ttl)
            .await
        {
            Ok(CommitOutcome::Committed) => {}
            Ok(CommitOutcome::LeaseLost) => {
                // Durable all the same: answering 503 would only make Dataloy send a third copy.
                self.metrics.dedup_lease_lost.inc();
                tracing::error!(notification_id = %id, "another request took over this notification's dedup claim while it was made durable; it may be published twice");
            }
            Err(e) => {
                // The notification is durable: answering 503 now would make the retry a second copy.
                self.metrics.dedup_commit_errors.inc();
                tracing::error!(notification_id = %id, error = %e, "accepted notification, but cannot record its id");
            }
        }
        self.metrics.accepted(source, &object_type);
        Ok(Accepted::New(id))
    }

    /// Claims the id; `None` when it was accepted before. Waits a little while another request
    /// holds the same id, so concurrent retries resolve to one accept and duplicates.
    async fn claim(&self, id: &NotificationId) -> Result<Option<ClaimToken>, IngestError> {
        let deadline = Instant::now() + self.settings.in_flight_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            match self
                .dedup
                .claim(id.as_str(), self.settings.claim_lease)
                .await
                .map_err(IngestError::Dedup)?
            {
                ClaimOutcome::Claimed(token) => return Ok(Some(token)),
                ClaimOutcome::Duplicate => return Ok(None),
                ClaimOutcome::InFlight if Instant::now() >= deadline => {
                    return Err(IngestError::StillInFlight)
                }
                ClaimOutcome::InFlight => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(25));
                }
            }
        }
    }

    /// Runs `write` while renewing the claim every third of the lease, so a slow durable write
    /// keeps its id.
    async fn renewing_claim<T>(
        &self,
        id: &NotificationId,
        token: ClaimToken,
        write: impl Future<Output = T>,
    ) -> T {
        let lease = self.settings.claim_lease;
        let renewing = async {
            let mut lost_reported = false;
            loop {
                tokio::time::sleep(lease / 3).await;
                match self.dedup.renew(id.as_str(), token, lease).await {
                    Ok(true) => {}
                    Ok(false) if lost_reported => {}
                    Ok(false) => {
                        lost_reported = true;
                        tracing::warn!(notification_id = %id, "dedup claim taken over while the notification is made durable");
                    }
                    Err(e) => {
                        tracing::warn!(notification_id = %id, error = %e, "cannot renew the dedup claim; retrying");
                    }
                }
            }
        };
        tokio::select! {
            output = write => output,
            never = renewing => never,
        }
    }

    async fn make_durable(&self, notification: Notification) -> Result<(), IngestError> {
        match &self.durability {
            Durability::Spool(spool) => match spool.append(notification).await {
                Ok(_) => Ok(()),
                Err(SpoolError::Full) => Err(IngestError::SpoolFull),
                Err(e) => Err(IngestError::Spool(e)),
            },
            Durability::Direct {
                sinks,
                dead_letters,
            } => {
                let batch = std::slice::from_ref(&notification);
                let publishes = sinks.iter().map(|sink| sink.publish(batch));
                let results = futures::future::join_all(publishes).await;
                for (sink, result) in sinks.iter().zip(results) {
                    let Err(error) = result else { continue };
                    let SinkError::Refused { reason, detail } = &error.source else {
                        return Err(IngestError::Sink(error));
                    };
                    let (reason, detail) = (*reason, detail.clone());
                    let now = unix_millis();
                    let attempts = Attempts {
                        first_ms: now,
                        last_ms: now,
                        count: 1,
                    };
                    dead_letters
                        .store(sink.name(), &notification, reason, &detail, attempts)
                        .map_err(|_| IngestError::Sink(error))?;
                    self.metrics.delivery.dead_lettered(sink.name(), reason);
                }
                Ok(())
            }
        }
    }
}
