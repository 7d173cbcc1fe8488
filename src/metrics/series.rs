//! The series a request records, resolved once. Looking a labelled series up by its label values
//! hashes them and takes the family's lock and a reference on every call; an accepted
//! notification records six, from both HTTP workers at once. Keeping the children instead leaves each record
//! one update of the series itself.

use std::collections::HashMap;

use parking_lot::RwLock;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::{Outcome, Source};

/// Most distinct `object_type` label values; later ones are counted as `other`.
const MAX_OBJECT_TYPE_LABELS: usize = 256;

/// A series per source, indexed by `Source::index`.
pub(super) type PerSource<T> = [T; Source::ALL.len()];

pub(super) fn per_source(family: &IntCounterVec) -> PerSource<IntCounter> {
    Source::ALL.map(|source| family.with_label_values(&[source.as_str()]))
}

/// `request_duration_seconds` by source and outcome.
pub(super) fn durations(family: &HistogramVec) -> PerSource<[Histogram; Outcome::ALL.len()]> {
    Source::ALL.map(|source| {
        Outcome::ALL.map(|outcome| family.with_label_values(&[source.as_str(), outcome.as_str()]))
    })
}

/// `notifications_accepted_total` by source and object type, capped so that a stream of odd
/// types cannot blow up the number of series.
pub(super) struct AcceptedByObjectType {
    family: IntCounterVec,
    known: RwLock<HashMap<String, PerSource<IntCounter>>>,
}

impl AcceptedByObjectType {
    pub(super) fn new(family: IntCounterVec) -> Self {
        Self {
            family,
            known: RwLock::default(),
        }
    }

    pub(super) fn inc(&self, source: Source, object_type: &str) {
        if let Some(counters) = self.known.read().get(object_type) {
            counters[source.index()].inc();
            return;
        }
        let mut known = self.known.write();
        let label = if known.len() < MAX_OBJECT_TYPE_LABELS || known.contains_key(object_type) {
            object_type
        } else {
            "other"
        };
        let counters = known.entry(label.to_owned()).or_insert_with(|| {
            Source::ALL.map(|s| self.family.with_label_values(&[s.as_str(), label]))
        });
        counters[source.index()].inc();
    }
}

/// The dedup series of one backend: time and errors of each call, claims by outcome.
pub struct DedupSeries {
    durations: [Histogram; DedupCall::ALL.len()],
    errors: [IntCounter; DedupCall::ALL.len()],
    claims: [IntCounter; ClaimResult::ALL.len()],
}

/// A dedup backend call; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupCall {
    Claim,
    Commit,
    Release,
    Renew,
}

impl DedupCall {
    const ALL: [DedupCall; 4] = [
        DedupCall::Claim,
        DedupCall::Commit,
        DedupCall::Release,
        DedupCall::Renew,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DedupCall::Claim => "claim",
            DedupCall::Commit => "commit",
            DedupCall::Release => "release",
            DedupCall::Renew => "renew",
        }
    }
}

/// What a claim found; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    Claimed,
    Duplicate,
    InFlight,
}

impl ClaimResult {
    const ALL: [ClaimResult; 3] = [
        ClaimResult::Claimed,
        ClaimResult::Duplicate,
        ClaimResult::InFlight,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ClaimResult::Claimed => "claimed",
            ClaimResult::Duplicate => "duplicate",
            ClaimResult::InFlight => "in_flight",
        }
    }
}

impl DedupSeries {
    pub(super) fn new(
        backend: &str,
        durations: &HistogramVec,
        errors: &IntCounterVec,
        claims: &IntCounterVec,
    ) -> Self {
        Self {
            durations: DedupCall::ALL.map(|c| durations.with_label_values(&[backend, c.as_str()])),
            errors: DedupCall::ALL.map(|c| errors.with_label_values(&[backend, c.as_str()])),
            claims: ClaimResult::ALL.map(|r| claims.with_label_values(&[backend, r.as_str()])),
        }
    }

    pub fn call(&self, call: DedupCall, elapsed: std::time::Duration, ok: bool) {
        self.durations[call as usize].observe(elapsed.as_secs_f64());
        if !ok {
            self.errors[call as usize].inc();
        }
    }

    pub fn claimed(&self, result: ClaimResult) {
        self.claims[result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    #[test]
    fn object_types_beyond_the_cap_are_counted_as_other() {
        let family =
            IntCounterVec::new(Opts::new("accepted", "test"), &["source", "object_type"]).unwrap();
        let accepted = AcceptedByObjectType::new(family.clone());
        for n in 0..MAX_OBJECT_TYPE_LABELS {
            accepted.inc(Source::Webhook, &format!("Type{n}"));
        }
        accepted.inc(Source::Webhook, "Type0");
        accepted.inc(Source::WebSocket, "Type0");
        accepted.inc(Source::Webhook, "OneTooMany");
        accepted.inc(Source::Webhook, "AnotherOne");

        let count = |source: &str, label: &str| family.with_label_values(&[source, label]).get();
        assert_eq!(count("webhook", "Type0"), 2);
        assert_eq!(count("websocket", "Type0"), 1);
        assert_eq!(count("webhook", "Type255"), 1);
        assert_eq!(count("webhook", "other"), 2);
        assert_eq!(count("webhook", "OneTooMany"), 0);
    }

    #[test]
    fn dedup_series_record_under_their_own_labels() {
        let durations = HistogramVec::new(
            prometheus::HistogramOpts::new("d", "t"),
            &["backend", "operation"],
        )
        .unwrap();
        let errors = IntCounterVec::new(Opts::new("e", "t"), &["backend", "operation"]).unwrap();
        let claims = IntCounterVec::new(Opts::new("c", "t"), &["backend", "outcome"]).unwrap();
        let series = DedupSeries::new("memory", &durations, &errors, &claims);

        series.call(
            DedupCall::Commit,
            std::time::Duration::from_millis(1),
            false,
        );
        series.claimed(ClaimResult::InFlight);

        let commit = durations.with_label_values(&["memory", "commit"]);
        assert_eq!(commit.get_sample_count(), 1);
        assert_eq!(errors.with_label_values(&["memory", "commit"]).get(), 1);
        assert_eq!(errors.with_label_values(&["memory", "claim"]).get(), 0);
        assert_eq!(claims.with_label_values(&["memory", "in_flight"]).get(), 1);
    }
}
