//! Forwarding: a copy of every dead letter on the operators' own brokers (a Kafka dead-letter
//! topic, a RabbitMQ dead-letter exchange), where their tooling already looks. The local store
//! stays the durable record; the relay never waits for this: a background task per destination
//! publishes each entry not forwarded yet, oldest first, and marks it forwarded (durably, see
//! [`marks`]) only once the broker confirmed it. A destination that is away is retried with
//! backoff, forever; one that refuses an entry for good (too large, unroutable) gets it marked
//! as not forwardable, so it never blocks the entries after it. At-least-once: the entry in
//! flight when the gateway dies is forwarded again after the restart, with the same id.

mod kafka;
mod marks;
mod message;
mod rabbitmq;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use tokio::sync::watch;

pub use marks::{Mark, Marks, MARKS_DIR};
pub use message::{bounded_error, reason_headers, RoutingKey, ERROR_HEADER_MAX};

use super::{DeadLetter, DeadLetterError, DeadLetterStore};
use crate::config::{DeadLetterForwardSettings, Settings};
use crate::envelope::Envelope;
use crate::metrics::dead_letter_forward::ForwardMetrics;
use crate::notification::Notification;

/// Why an entry was not forwarded. `kind` is a low-cardinality metric label.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Worth retrying: the broker is away, the exchange or topic does not exist yet, a nack.
    #[error("destination unavailable: {0}")]
    Unavailable(String),
    /// Refused for good by the destination itself: retrying the same entry cannot succeed.
    #[error("destination refused the entry ({kind}): {detail}")]
    Refused { kind: &'static str, detail: String },
}

impl ForwardError {
    pub fn refused(kind: &'static str, detail: impl Into<String>) -> Self {
        ForwardError::Refused {
            kind,
            detail: detail.into(),
        }
    }
}

/// A broker dead letters are forwarded to.
#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// `kafka` or `rabbitmq`: the metric label and the marks' directory.
    fn name(&self) -> &'static str;
    /// Publishes `entry` and returns once the broker confirmed it.
    async fn publish(&self, entry: &DeadLetter) -> Result<(), ForwardError>;
    /// Releases connections at shutdown.
    async fn close(&self) {}
}

/// The notification an entry holds, as the sinks' header encoders take it.
pub(crate) fn notification_of(entry: &DeadLetter) -> Result<Notification, ForwardError> {
    let envelope = Envelope::parse(&entry.body).map_err(|e| {
        ForwardError::refused(
            "unrepresentable",
            format!("the stored body no longer parses as an envelope: {e}"),
        )
    })?;
    Ok(Notification {
        envelope,
        body: entry.body.clone(),
        received_at_ms: entry.meta.received_at_ms,
        trace: entry.meta.trace(),
    })
}

/// Every destination's name, as the marks' directories are named.
pub const DESTINATIONS: [&str; 2] = ["kafka", "rabbitmq"];

/// Starts a forwarder per configured destination; they stop when `stop` turns true.
pub fn start(
    settings: &Settings,
    store: Arc<DeadLetterStore>,
    metrics: &ForwardMetrics,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let forward = &settings.dead_letters.forward;
    let mut destinations: Vec<Box<dyn Destination>> = Vec::new();
    if let (Some(dlt), Some(sink)) = (&forward.kafka, &settings.sinks.kafka) {
        destinations.push(kafka::destination(
            sink,
            dlt,
            settings.server.max_body_bytes.bytes(),
        )?);
    }
    if let (Some(dlx), Some(sink)) = (&forward.rabbitmq, &settings.sinks.rabbitmq) {
        destinations.push(Box::new(rabbitmq::RabbitMqDestination::new(sink, dlx)?));
    }
    let mut tasks = Vec::new();
    for destination in destinations {
        metrics.register_destination(destination.name());
        let marks = Marks::open(store.dir(), destination.name()).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the forward marks of {} in {}: {e}",
                destination.name(),
                store.dir().display()
            )
        })?;
        let forwarder = Forwarder {
            store: store.clone(),
            marks: Arc::new(marks),
            destination,
            metrics: metrics.clone(),
            settings: forward.clone(),
            unmarked: Arc::default(),
        };
        tasks.push(tokio::spawn(forwarder.run(stop.clone())));
    }
    Ok(tasks)
}

/// One destination's background task.
struct Forwarder {
    store: Arc<DeadLetterStore>,
    marks: Arc<Marks>,
    destination: Box<dyn Destination>,
    metrics: ForwardMetrics,
    settings: DeadLetterForwardSettings,
    /// Entries settled in this process whose mark could not be written yet (a failing disk):
    /// not forwarded again while the process lives; their marks are tried again at each scan.
    unmarked: Arc<parking_lot::Mutex<HashMap<String, (Mark, String)>>>,
}

/// What the waiting gauge counts: the entries of the current scan's list not settled yet, and
/// the store's count of entries this process stored when the scan began.
struct Waiting {
    in_list: usize,
    stored_at_scan: u64,
}

/// How forwarding one entry ended.
enum Outcome {
    /// Forwarded, refused for good, or gone from the store: on to the next.
    Settled,
    /// The gateway is stopping.
    Stopped,
}

impl Forwarder {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.destination.name();
        let mut stored = self.store.watch_stored();
        let mut failed_scans = self.retry_delays();
        tracing::info!(destination = name, "forwarding dead letters");
        'scans: loop {
            // Seen before the scan: an entry stored during it wakes the next one (and counts
            // as waiting twice until then: in the list and as stored since).
            let stored_at_scan = *stored.borrow_and_update();
            let pending = match self.scan().await {
                Ok(pending) => pending,
                Err(e) => {
                    self.metrics.failed(name, "store");
                    tracing::error!(destination = name, error = %e, "cannot scan the dead-letter store to forward it; retrying");
                    let wait = failed_scans
                        .next()
                        .unwrap_or(self.settings.retry_max_backoff);
                    if stopped_within(&mut stop, wait).await {
                        break;
                    }
                    continue;
                }
            };
            failed_scans = self.retry_delays();
            let mut waiting = Waiting {
                in_list: pending.len(),
                stored_at_scan,
            };
            self.set_waiting(&waiting);
            for entry in pending {
                if let Outcome::Stopped = self.forward(&entry, &waiting, &mut stop).await {
                    break 'scans;
                }
                waiting.in_list -= 1;
                self.set_waiting(&waiting);
            }
            tokio::select! {
                _ = stored.changed() => {}
                _ = tokio::time::sleep(self.settings.scan_interval) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        self.destination.close().await;
        // Destroying a librdkafka client can block; keep that off the async threads.
        let destination = self.destination;
        let _ = tokio::task::spawn_blocking(move || drop(destination)).await;
    }

    /// The entries not marked yet, oldest first; marks of entries no longer in the store are
    /// removed.
    async fn scan(&self) -> Result<Vec<String>, DeadLetterError> {
        let store = self.store.clone();
        let marks = self.marks.clone();
        let unmarked = self.unmarked.clone();
        tokio::task::spawn_blocking(move || {
            unmarked
                .lock()
                .retain(|name, (mark, detail)| marks.set(name, *mark, detail).is_err());
            let names = store.names_oldest_first()?;
            let mut marked = marks.load().map_err(|source| DeadLetterError::Io {
                dir: store.dir().to_owned(),
                source,
            })?;
            let unmarked = unmarked.lock();
            let pending = names
                .into_iter()
                .filter(|name| marked.remove(name).is_none() && !unmarked.contains_key(name))
                .collect();
            // What is left was replayed or purged.
            for orphan in marked.keys() {
                marks.forget(orphan);
            }
            Ok(pending)
        })
        .await
        .expect("the scan does not panic")
    }

    /// Sets the waiting gauge: what is left of the scan's list, and what this process stored
    /// since the scan (the next scan lists those; entries other processes wrote are counted
    /// from then on).
    fn set_waiting(&self, waiting: &Waiting) {
        let stored_since = self
            .store
            .stored_count()
            .saturating_sub(waiting.stored_at_scan);
        let total = (waiting.in_list as u64).saturating_add(stored_since);
        self.metrics.set_waiting(
            self.destination.name(),
            usize::try_from(total).unwrap_or(usize::MAX),
        );
    }

    /// Forwards the entry `name` until it is settled (or the gateway stops); while it is
    /// retried, `waiting` keeps the gauge up to date with the entries stored meanwhile.
    async fn forward(
        &self,
        name: &str,
        waiting: &Waiting,
        stop: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let destination = self.destination.name();
        let mut delays = self.retry_delays();
        let mut attempts = 0u64;
        loop {
            if *stop.borrow() {
                return Outcome::Stopped;
            }
            let store = self.store.clone();
            let owned = name.to_owned();
            let read = tokio::task::spawn_blocking(move || store.read(&owned))
                .await
                .expect("a read does not panic");
            let failure = match read {
                // Replayed or purged meanwhile: not forwarded, as documented.
                Err(DeadLetterError::NotFound(_)) => return Outcome::Settled,
                Err(DeadLetterError::Damaged { why, .. }) => ForwardError::refused("damaged", why),
                Err(e) => {
                    self.metrics.failed(destination, "store");
                    tracing::error!(destination, dead_letter = name, error = %e, "cannot read a dead letter to forward it; retrying");
                    let wait = delays.next().unwrap_or(self.settings.retry_max_backoff);
                    if stopped_within(stop, wait).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
                Ok(entry) => {
                    let published = tokio::select! {
                        published = self.destination.publish(&entry) => published,
                        _ = stop.wait_for(|stop| *stop) => return Outcome::Stopped,
                    };
                    match published {
                        Ok(()) => {
                            self.metrics.forwarded(destination);
                            if attempts > 0 {
                                tracing::info!(
                                    destination,
                                    dead_letter = name,
                                    attempts = attempts + 1,
                                    "dead letter forwarded after the destination came back"
                                );
                            }
                            self.mark(name, Mark::Forwarded, "").await;
                            return Outcome::Settled;
                        }
                        Err(e) => e,
                    }
                }
            };
            match failure {
                ForwardError::Refused { kind, detail } => {
                    self.metrics.failed(destination, kind);
                    tracing::error!(
                        destination,
                        dead_letter = name,
                        kind,
                        error = %detail,
                        "the destination refused the dead letter for good; it stays in the \
                         local store only and is not forwarded again"
                    );
                    self.mark(name, Mark::Refused, &format!("{kind}: {detail}\n"))
                        .await;
                    return Outcome::Settled;
                }
                ForwardError::Unavailable(detail) => {
                    self.metrics.failed(destination, "unavailable");
                    self.set_waiting(waiting);
                    let wait = delays.next().unwrap_or(self.settings.retry_max_backoff);
                    if attempts == 0 {
                        tracing::warn!(destination, dead_letter = name, error = %detail, "cannot forward the dead letter; retrying with backoff");
                    } else {
                        tracing::debug!(destination, dead_letter = name, error = %detail, retry_in_ms = wait.as_millis() as u64, "forward failed again");
                    }
                    attempts += 1;
                    // The entry is read again: one purged meanwhile is settled above.
                    if stopped_within(stop, wait).await {
                        return Outcome::Stopped;
                    }
                }
            }
        }
    }

    /// Marks `name`. A mark that cannot be written is logged, counted and kept in memory (tried
    /// again at each scan), so this process does not forward the entry again; a restart before
    /// it is written would (at-least-once).
    async fn mark(&self, name: &str, mark: Mark, detail: &str) {
        let marks = self.marks.clone();
        let (owned, owned_detail) = (name.to_owned(), detail.to_owned());
        let set = tokio::task::spawn_blocking(move || marks.set(&owned, mark, &owned_detail))
            .await
            .expect("a mark does not panic");
        if let Err(e) = set {
            self.metrics.failed(self.destination.name(), "store");
            tracing::error!(destination = self.destination.name(), dead_letter = name, error = %e, "cannot record the dead letter's forward outcome; trying again at the next scan (a restart before that forwards it again)");
            self.unmarked
                .lock()
                .insert(name.to_owned(), (mark, detail.to_owned()));
        }
    }

    fn retry_delays(&self) -> impl Iterator<Item = Duration> {
        let max = self.settings.retry_max_backoff;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_initial_backoff)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build()
            .map(move |delay| delay.min(max))
    }
}

/// Waits `wait`; true when the gateway started stopping meanwhile.
async fn stopped_within(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|stop| *stop) => true,
    };
    stopped || *stop.borrow()
}
