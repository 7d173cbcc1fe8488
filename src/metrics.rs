//! One Prometheus registry for the whole gateway and typed recording methods, so every outcome
//! is logged and counted in one place with the same low-cardinality labels.

pub mod dead_letter_forward;
pub mod delivery;
mod id_journal;
mod series;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use id_journal::IdJournalMetrics;
use series::{AcceptedByObjectType, PerSource};
pub use series::{ClaimResult, DedupCall, DedupSeries};
pub use subscriptions::SubscriptionSeries;

const NAMESPACE: &str = "dataloy_gateway";
/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Where a notification came from; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    WebSocket,
}

impl Source {
    const ALL: [Source; 2] = [Source::Webhook, Source::WebSocket];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::WebSocket => "websocket",
        }
    }
}

/// Which durable spool write was timed; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSync {
    /// One group commit: write and fdatasync of the appends waiting together.
    Append,
    /// One cursor store after a relayed batch.
    Acknowledge,
    /// The id journal's write and fdatasync of a group's ids, beside the group's `Append`.
    IdJournal,
}

impl SpoolSync {
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolSync::Append => "append",
            SpoolSync::Acknowledge => "acknowledge",
            SpoolSync::IdJournal => "id_journal",
        }
    }
}

/// How a request ended; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
    Unavailable,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Rejected,
        Outcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    received: PerSource<IntCounter>,
    accepted: Arc<AcceptedByObjectType>,
    duplicates: PerSource<IntCounter>,
    rejected: IntCounterVec,
    unavailable: IntCounterVec,
    request_duration: PerSource<[Histogram; Outcome::ALL.len()]>,
    publish_duration: HistogramVec,
    published: IntCounterVec,
    publish_errors: IntCounterVec,
    sink_up: IntGaugeVec,
    sink_backlog: IntGaugeVec,
    sink_oldest_age: GaugeVec,
    pub spool_depth: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_max_bytes: IntGauge,
    pub spool_oldest_age: Gauge,
    pub spool_appends: IntCounter,
    pub spool_fsyncs: IntCounter,
    pub spool_recovered_bytes_dropped: IntCounter,
    spool_quarantined_bytes: IntCounter,
    spool_quarantined_records: IntCounter,
    spool_sync_duration: HistogramVec,
    pub dedup_entries: IntGauge,
    dedup_claims: IntCounterVec,
    dedup_errors: IntCounterVec,
    dedup_duration: HistogramVec,
    pub dedup_fallback: IntCounter,
    websocket_connected: IntGaugeVec,
    websocket_reconnects: IntCounterVec,
    websocket_messages: IntCounterVec,
    websocket_batch_size: HistogramVec,
    tls_certificate_expiry: IntGaugeVec,
    tls_reloads: IntCounterVec,
    pub dedup_commit_errors: IntCounter,
    pub dedup_lease_lost: IntCounter,
    pub delivery: delivery::DeliveryMetrics,
    pub dead_letter_forward: dead_letter_forward::ForwardMetrics,
    pub id_journal: IdJournalMetrics,
    subscriptions: SubscriptionSeries,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(NAMESPACE.into()), None).expect("valid prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };

        let received = counter_vec(
            "notifications_received_total",
            "Notifications received, before validation.",
            &["source"],
        );
        let accepted = counter_vec(
            "notifications_accepted_total",
            "Notifications made durable and acknowledged.",
            &["source", "object_type"],
        );
        let duplicates = counter_vec(
            "notifications_duplicate_total",
            "Notifications recognised as already accepted and not relayed again.",
            &["source"],
        );
        let rejected = counter_vec(
            "notifications_rejected_total",
            "Notifications refused because of the request (4xx), by reason.",
            &["source", "reason"],
        );
        let unavailable = counter_vec(
            "notifications_unavailable_total",
            "Notifications that could not be accepted durably (503), by reason.",
            &["source", "reason"],
        );
        let request_duration = histogram(
            "request_duration_seconds",
            "Time from receiving a notification to answering it.",
            &["source", "outcome"],
        );
        let publish_duration = histogram(
            "publish_duration_seconds",
            "Time for a sink to confirm a batch of notifications.",
            &["sink"],
        );
        let published = counter_vec(
            "sink_published_total",
            "Notifications confirmed by a sink.",
            &["sink"],
        );
        let publish_errors = counter_vec(
            "sink_publish_errors_total",
            "Failed publish attempts (retried), by sink.",
            &["sink"],
        );
        let sink_up = IntGaugeVec::new(
            Opts::new(
                "sink_up",
                "1 when the sink's last publish or health check succeeded.",
            ),
            &["sink"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(sink_up.clone()))
            .expect("unique");
        let sink_backlog = IntGaugeVec::new(
            Opts::new(
                "sink_backlog",
                "Notifications in the spool the sink has not confirmed yet.",
            ),
            &["sink"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(sink_backlog.clone()))
            .expect("unique");
        let sink_oldest_age = GaugeVec::new(
            Opts::new(
                "sink_oldest_age_seconds",
                "Age of the oldest notification the sink has read from the spool but not \
                 confirmed (0 with no backlog).",
            ),
            &["sink"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(sink_oldest_age.clone()))
            .expect("unique");

        let spool_depth = int_gauge(
            "spool_depth_records",
            "Notifications in the spool not yet confirmed by every sink.",
        );
        let spool_bytes = int_gauge("spool_bytes", "Disk used by the spool's segment files.");
        let spool_max_bytes = int_gauge(
            "spool_max_bytes",
            "The configured spool.max_bytes (0 with the spool disabled); at it, new notifications get 503.",
        );
        let spool_oldest_age = Gauge::new(
            "spool_oldest_age_seconds",
            "Age of the oldest notification not yet confirmed by every sink.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(spool_oldest_age.clone()))
            .expect("unique");
        let spool_appends = counter("spool_appends_total", "Records appended to the spool.");
        let spool_fsyncs = counter(
            "spool_fsyncs_total",
            "fsync calls made by the spool; appends share them (group commit).",
        );
        let spool_recovered_bytes_dropped = counter(
            "spool_recovery_dropped_bytes_total",
            "Bytes of a torn record (a write a crash interrupted) cut off the newest spool segment \
             during recovery.",
        );
        let spool_quarantined_bytes = counter(
            "spool_quarantined_bytes_total",
            "Bytes of damaged spool segments copied to quarantine (never relayed, never deleted).",
        );
        let spool_quarantined_records = counter(
            "spool_quarantined_records_total",
            "Records that could not be read from damaged spool segments (estimated from the \
             sequence numbers missing around the damage).",
        );
        let spool_sync_duration = histogram(
            "spool_sync_duration_seconds",
            "Time of the spool's durable writes: `append` is one group commit (write + fdatasync), \
             `acknowledge` one cursor store (fsynced at most every 100 ms) with the retiring of \
             finished segments, `id_journal` the id journal's fdatasync (before a segment is \
             retired or a journal file rotates).",
            &["operation"],
        );
        let dedup_entries = int_gauge("dedup_entries", "Ids held by the memory dedup backend.");
        let dedup_claims = counter_vec(
            "dedup_claims_total",
            "Dedup claims by outcome (claimed, duplicate, in_flight).",
            &["backend", "outcome"],
        );
        let dedup_errors = counter_vec(
            "dedup_errors_total",
            "Failed dedup backend calls, by operation.",
            &["backend", "operation"],
        );
        let dedup_duration = histogram(
            "dedup_duration_seconds",
            "Time of dedup backend calls, by operation.",
            &["backend", "operation"],
        );
        let dedup_fallback = counter(
            "dedup_fallback_total",
            "Dedup calls answered by the in-memory fallback because the backend failed.",
        );
        let websocket_connected = IntGaugeVec::new(
            Opts::new(
                "websocket_connected",
                "1 while the WebSocket source is connected.",
            ),
            &["source"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(websocket_connected.clone()))
            .expect("unique");
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_certificate_expiry_timestamp_seconds",
                "When the certificate a TLS listener serves expires (Unix seconds).",
            ),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_certificate_expiry.clone()))
            .expect("unique");
        let tls_reloads = counter_vec(
            "tls_reloads_total",
            "Certificate reloads of a TLS listener (SIGHUP, or files that changed), by outcome \
             (changed, failed: the old certificate is still served).",
            &["listener", "outcome"],
        );
        let websocket_reconnects = counter_vec(
            "websocket_reconnects_total",
            "Times a WebSocket source lost its connection and reconnected.",
            &["source"],
        );
        let websocket_messages = counter_vec(
            "websocket_messages_total",
            "Messages pushed on a WebSocket source, by outcome (accepted, duplicate, invalid, \
             refused, too_large, retried, lost).",
            &["source", "outcome"],
        );
        let websocket_batch_size = HistogramVec::new(
            HistogramOpts::new(
                "websocket_batch_size",
                "Messages a WebSocket source read at once and stored in one spool append.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0]),
            &["source"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(websocket_batch_size.clone()))
            .expect("unique");
        let dedup_commit_errors = counter(
            "dedup_commit_errors_total",
            "Durable notifications whose id could not be recorded as seen.",
        );

        let dedup_lease_lost = counter(
            "dedup_lease_lost_total",
            "Durable notifications whose claim another request took over while the write ran \
             (a second copy may be published).",
        );

        let subscriptions = SubscriptionSeries::register(&registry);

        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Version of the running gateway; always 1."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");

        Self {
            received: series::per_source(&received),
            accepted: Arc::new(AcceptedByObjectType::new(accepted)),
            duplicates: series::per_source(&duplicates),
            rejected,
            unavailable,
            request_duration: series::durations(&request_duration),
            publish_duration,
            published,
            publish_errors,
            sink_up,
            sink_backlog,
            sink_oldest_age,
            spool_depth,
            spool_bytes,
            spool_max_bytes,
            spool_oldest_age,
            spool_appends,
            spool_fsyncs,
            spool_recovered_bytes_dropped,
            spool_quarantined_bytes,
            spool_quarantined_records,
            spool_sync_duration,
            dedup_entries,
            dedup_claims,
            dedup_errors,
            dedup_duration,
            dedup_fallback,
            websocket_connected,
            websocket_reconnects,
            websocket_messages,
            websocket_batch_size,
            tls_certificate_expiry,
            tls_reloads,
            dedup_commit_errors,
            dedup_lease_lost,
            delivery: delivery::DeliveryMetrics::new(&registry),
            dead_letter_forward: dead_letter_forward::ForwardMetrics::new(&registry),
            id_journal: IdJournalMetrics::new(&registry),
            registry,
            subscriptions,
        }
    }

    /// The subscription keeper's series.
    pub fn subscriptions(&self) -> &SubscriptionSeries {
        &self.subscriptions
    }

    pub fn received(&self, source: Source) {
        self.received[source.index()].inc();
    }

    pub fn accepted(&self, source: Source, object_type: &str) {
        self.accepted.inc(source, object_type);
    }

    pub fn duplicate(&self, source: Source) {
        self.duplicates[source.index()].inc();
    }

    pub fn rejected(&self, source: Source, reason: &str) {
        self.rejected
            .with_label_values(&[source.as_str(), reason])
            .inc();
    }

    pub fn unavailable(&self, source: Source, reason: &str) {
        self.unavailable
            .with_label_values(&[source.as_str(), reason])
            .inc();
    }

    pub fn request_finished(&self, source: Source, outcome: Outcome, elapsed: Duration) {
        self.request_duration[source.index()][outcome as usize].observe(elapsed.as_secs_f64());
    }

    /// Time of one durable spool write.
    pub fn spool_synced(&self, operation: SpoolSync, elapsed: Duration) {
        self.spool_sync_duration
            .with_label_values(&[operation.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// One sink's spool backlog: records it has not confirmed, and the age of the oldest.
    pub fn set_sink_backlog(&self, sink: &str, records: u64, oldest_age_seconds: f64) {
        self.sink_backlog
            .with_label_values(&[sink])
            .set(records as i64);
        self.sink_oldest_age
            .with_label_values(&[sink])
            .set(oldest_age_seconds);
    }

    /// Damaged spool bytes found (and, with `bytes` > 0, copied to quarantine).
    pub fn spool_quarantined(&self, bytes: u64, records: u64) {
        self.spool_quarantined_bytes.inc_by(bytes);
        self.spool_quarantined_records.inc_by(records);
    }

    pub fn sink_published(&self, sink: &str, count: usize, elapsed: Duration) {
        self.published
            .with_label_values(&[sink])
            .inc_by(count as u64);
        self.publish_duration
            .with_label_values(&[sink])
            .observe(elapsed.as_secs_f64());
    }

    pub fn sink_publish_failed(&self, sink: &str) {
        self.publish_errors.with_label_values(&[sink]).inc();
    }

    /// The dedup series of `backend`, resolved for the request path.
    pub fn dedup_series(&self, backend: &str) -> DedupSeries {
        DedupSeries::new(
            backend,
            &self.dedup_duration,
            &self.dedup_errors,
            &self.dedup_claims,
        )
    }

    /// The certificate `listener` serves now expires at `not_after` (Unix seconds).
    pub fn tls_certificate(&self, listener: &str, not_after: i64) {
        self.tls_certificate_expiry
            .with_label_values(&[listener])
            .set(not_after);
    }

    /// A certificate reload of `listener` ended with `outcome` (changed, failed).
    pub fn tls_reload(&self, listener: &str, outcome: &str) {
        self.tls_reloads
            .with_label_values(&[listener, outcome])
            .inc();
    }

    pub fn websocket_connected(&self, source: &str, connected: bool) {
        self.websocket_connected
            .with_label_values(&[source])
            .set(i64::from(connected));
    }

    pub fn websocket_reconnect(&self, source: &str) {
        self.websocket_reconnects.with_label_values(&[source]).inc();
    }

    pub fn websocket_message(&self, source: &str, outcome: &str) {
        self.websocket_messages_by(source, outcome, 1);
    }

    pub fn websocket_messages_by(&self, source: &str, outcome: &str, count: u64) {
        self.websocket_messages
            .with_label_values(&[source, outcome])
            .inc_by(count);
    }

    /// A batch of `messages` read at once from a WebSocket source.
    pub fn websocket_batch(&self, source: &str, messages: usize) {
        self.websocket_batch_size
            .with_label_values(&[source])
            .observe(messages as f64);
    }

    /// A sink's dropped notification (counted, then gone).
    pub fn sink_dropped(&self, sink: &str, reason: &str) {
        self.delivery.dropped(sink, reason);
    }

    /// Creates every per-sink series at 0, so that alerts see a sink's first failure.
    pub fn register_sink(&self, sink: &str) {
        self.published.with_label_values(&[sink]);
        self.publish_errors.with_label_values(&[sink]);
        self.delivery.register_sink(sink);
    }

    pub fn set_sink_up(&self, sink: &str, up: bool) {
        self.sink_up.with_label_values(&[sink]).set(i64::from(up));
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("Prometheus text is UTF-8")
    }
}
