//! The relay's per-sink outcomes that are not a plain "published": dead letters, drops, a full
//! dead-letter store, and panics caught in a sink or in the relay itself. Every series of a
//! configured sink exists from start-up at 0 (`register_sink`), so an alert's `increase()` sees
//! the first event instead of the birth of a series.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::dead_letter::Reason;

/// Every reason a dead letter can carry, for pre-registering the series.
const REASONS: [Reason; 6] = [
    Reason::Unroutable,
    Reason::TooLarge,
    Reason::InvalidTopic,
    Reason::UnknownTopic,
    Reason::Unrepresentable,
    Reason::SinkPanic,
];

#[derive(Clone)]
pub struct DeliveryMetrics {
    dead_letters: IntCounterVec,
    dropped: IntCounterVec,
    dead_letter_store_errors: IntCounterVec,
    panics: IntCounterVec,
    pub dead_letter_bytes: IntGauge,
}

impl DeliveryMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let dead_letter_bytes = IntGauge::new(
            "dead_letter_store_bytes",
            "Disk used by the dead-letter store.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(dead_letter_bytes.clone()))
            .expect("unique");
        Self {
            dead_letters: counter_vec(
                "dead_letters_total",
                "Notifications a sink refused for good, stored as dead letters, by sink and reason.",
                &["sink", "reason"],
            ),
            dropped: counter_vec(
                "sink_dropped_total",
                "Notifications a sink's policy dropped (e.g. sinks.rabbitmq.unroutable = \"drop\").",
                &["sink", "reason"],
            ),
            dead_letter_store_errors: counter_vec(
                "dead_letter_store_errors_total",
                "Dead letters that could not be stored (store full or failing); the notification is retried.",
                &["sink"],
            ),
            panics: counter_vec(
                "relay_panics_total",
                "Panics caught while relaying, by sink (\"relay\" for the relay task itself).",
                &["sink"],
            ),
            dead_letter_bytes,
        }
    }

    /// Creates every series of `sink` at 0.
    pub fn register_sink(&self, sink: &str) {
        for reason in REASONS {
            self.dead_letters
                .with_label_values(&[sink, reason.as_str()]);
            self.dropped.with_label_values(&[sink, reason.as_str()]);
        }
        self.dead_letter_store_errors.with_label_values(&[sink]);
        self.panics.with_label_values(&[sink]);
    }

    pub fn dead_lettered(&self, sink: &str, reason: Reason) {
        self.dead_letters
            .with_label_values(&[sink, reason.as_str()])
            .inc();
    }

    pub fn dropped(&self, sink: &str, reason: &str) {
        self.dropped.with_label_values(&[sink, reason]).inc();
    }

    pub fn dead_letter_store_failed(&self, sink: &str) {
        self.dead_letter_store_errors
            .with_label_values(&[sink])
            .inc();
    }

    pub fn panicked(&self, sink: &str) {
        self.panics.with_label_values(&[sink]).inc();
    }
}
