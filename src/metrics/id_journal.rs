//! The id journal's series: what recovery could not keep, what it rebuilt, the disk it uses and
//! its failed writes. Every reason exists from start-up at 0, so an alert's `increase()` sees the
//! first damage instead of the birth of a series.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::id_journal::Dropped;

#[derive(Clone)]
pub struct IdJournalMetrics {
    recovery_dropped_bytes: IntCounterVec,
    /// Ids put back into the memory dedup table at start-up.
    pub remembered_ids: IntGauge,
    /// Disk used by the journal's files.
    pub bytes: IntGauge,
    pub write_errors: IntCounter,
}

impl IdJournalMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let register = |metric: Box<dyn prometheus::core::Collector>| {
            registry.register(metric).expect("unique");
        };
        let recovery_dropped_bytes = IntCounterVec::new(
            Opts::new(
                "dedup_journal_recovery_dropped_bytes_total",
                "Bytes of the id journal recovery did not keep, by reason: `torn` (the end of the \
                 newest file, a write a crash interrupted), `corrupt` (entries failing their \
                 checksum), `unconfirmed` (entries whose spool records were not durable, never \
                 answered 200), `unreadable` (a file without a valid header). Only `corrupt` and \
                 `unreadable` forget ids that were accepted.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        register(Box::new(recovery_dropped_bytes.clone()));
        for reason in Dropped::ALL {
            recovery_dropped_bytes.with_label_values(&[reason.as_str()]);
        }
        let remembered_ids = IntGauge::new(
            "dedup_journal_remembered_ids",
            "Ids put back into the memory dedup table from the id journal at start-up.",
        )
        .expect("valid metric");
        register(Box::new(remembered_ids.clone()));
        let bytes = IntGauge::new(
            "dedup_journal_bytes",
            "Disk used by the id journal's files.",
        )
        .expect("valid metric");
        register(Box::new(bytes.clone()));
        let write_errors = IntCounter::new(
            "dedup_journal_write_errors_total",
            "Id journal writes that failed: a group commit's (its notifications were answered \
             503) or an fdatasync (spool segments are then kept until a restart).",
        )
        .expect("valid metric");
        register(Box::new(write_errors.clone()));
        Self {
            recovery_dropped_bytes,
            remembered_ids,
            bytes,
            write_errors,
        }
    }

    pub fn recovery_dropped(&self, reason: Dropped, bytes: u64) {
        self.recovery_dropped_bytes
            .with_label_values(&[reason.as_str()])
            .inc_by(bytes);
    }

    /// Bytes recovery dropped for `reason` so far.
    pub fn recovery_dropped_bytes(&self, reason: Dropped) -> u64 {
        self.recovery_dropped_bytes
            .with_label_values(&[reason.as_str()])
            .get()
    }
}
