//! Forwarding of dead letters to the operators' brokers: what was forwarded, what failed (by
//! kind: a transient outage or a refusal for good), and what still waits. Every series of a
//! configured destination exists from start-up at 0 (`register_destination`), so a stuck
//! forwarder is visible to `increase()` from its first scrape.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every error kind, for pre-registering the series (see `dead_letter::forward::ErrorKind`).
pub const ERROR_KINDS: [&str; 6] = [
    "unavailable",
    "too_large",
    "unroutable",
    "unrepresentable",
    "damaged",
    "store",
];

#[derive(Clone)]
pub struct ForwardMetrics {
    forwarded: IntCounterVec,
    errors: IntCounterVec,
    waiting: IntGaugeVec,
}

impl ForwardMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let forwarded = IntCounterVec::new(
            Opts::new(
                "dead_letters_forwarded_total",
                "Dead letters published to a forward destination and confirmed by its broker.",
            ),
            &["destination"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "dead_letter_forward_errors_total",
                "Failed attempts to forward a dead letter, by destination and kind (unavailable \
                 is retried; the other kinds mark the entry as not forwardable).",
            ),
            &["destination", "kind"],
        )
        .expect("valid metric");
        let waiting = IntGaugeVec::new(
            Opts::new(
                "dead_letters_forward_waiting",
                "Dead letters in the store not yet forwarded to the destination.",
            ),
            &["destination"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(forwarded.clone()))
            .expect("unique");
        registry.register(Box::new(errors.clone())).expect("unique");
        registry
            .register(Box::new(waiting.clone()))
            .expect("unique");
        Self {
            forwarded,
            errors,
            waiting,
        }
    }

    /// Creates every series of `destination` at 0.
    pub fn register_destination(&self, destination: &str) {
        self.forwarded.with_label_values(&[destination]);
        self.waiting.with_label_values(&[destination]);
        for kind in ERROR_KINDS {
            self.errors.with_label_values(&[destination, kind]);
        }
    }

    pub fn forwarded(&self, destination: &str) {
        self.forwarded.with_label_values(&[destination]).inc();
    }

    pub fn failed(&self, destination: &str, kind: &str) {
        self.errors.with_label_values(&[destination, kind]).inc();
    }

    pub fn set_waiting(&self, destination: &str, waiting: usize) {
        self.waiting
            .with_label_values(&[destination])
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }
}
