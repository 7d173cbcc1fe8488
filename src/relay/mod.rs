//! The relay: reads the spool in order and hands each batch to every sink, and advances the
//! spool cursor only once every sink has dealt with the batch. A sink deals with a notification
//! by confirming it, or — when it refused it for good — by the relay storing it in dead letters
//! (durably, before moving past it): one bad notification never stops the stream. Transient
//! failures are retried with capped exponential backoff, in order. After a restart it resumes
//! from the cursor.
//!
//! Nothing here may stop delivery silently: a panic inside a sink's publish is caught, the batch
//! is retried one notification at a time to find the one that causes it, and that one goes to
//! dead letters (reason `sink_panic`); a panic anywhere else in the relay restarts it from the
//! cursor. Both are logged and counted (`dataloy_gateway_relay_panics_total`).

mod delivery;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::RelaySettings;
use crate::dead_letter::DeadLetterStore;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::sink::Sink;
use crate::spool::Spool;

pub struct Relay {
    spool: Arc<Spool>,
    sinks: Vec<Arc<dyn Sink>>,
    settings: RelaySettings,
    metrics: Metrics,
    dead_letters: Arc<DeadLetterStore>,
    /// False while the relay task is being restarted after a panic.
    running: Arc<AtomicBool>,
}

impl Relay {
    pub fn new(
        spool: Arc<Spool>,
        sinks: Vec<Arc<dyn Sink>>,
        settings: RelaySettings,
        metrics: Metrics,
        dead_letters: Arc<DeadLetterStore>,
    ) -> Self {
        Self {
            spool,
            sinks,
            settings,
            metrics,
            dead_letters,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the relay task is running (false while it restarts after a panic); for health.
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// Relays until `shutdown` turns true, restarting the relay from the cursor if it panics. A
    /// batch being retried when shutdown comes stays in the spool and is relayed after the next
    /// start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let relay = Arc::new(self);
        let mut backoff = relay.settings.retry_initial_backoff;
        loop {
            relay.running.store(true, Ordering::Relaxed);
            let task = tokio::spawn(relay.clone().relay_until_stopped(shutdown.clone()));
            match task.await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    relay.running.store(false, Ordering::Relaxed);
                    relay.metrics.delivery.panicked("relay");
                    tracing::error!(
                        panic = delivery::panic_message(e.into_panic().as_ref()),
                        restart_in_ms = backoff.as_millis() as u64,
                        "the relay panicked; restarting it from the spool cursor"
                    );
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(relay.settings.retry_max_backoff);
                }
                Err(_) => return, // cancelled: the runtime is shutting down
            }
        }
    }

    async fn relay_until_stopped(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut reader = self.spool.reader();
        loop {
            let batch = tokio::select! {
                batch = reader.next_batch(self.settings.batch_max_records) => batch,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; retrying");
                    if sleep_or_shutdown(self.settings.retry_max_backoff, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(last_seq) = batch.last().map(|r| r.seq) else {
                continue;
            };
            let notifications: Vec<Notification> =
                batch.into_iter().map(|r| r.notification).collect();
            let deliveries = self.sinks.iter().map(|sink| {
                let delivery = delivery::Delivery {
                    sink: sink.as_ref(),
                    settings: &self.settings,
                    metrics: &self.metrics,
                    dead_letters: &self.dead_letters,
                };
                let notifications = &notifications;
                let shutdown = shutdown.clone();
                async move { delivery.deliver(notifications, shutdown).await }
            });
            let delivered = futures::future::join_all(deliveries).await;
            if !delivered.into_iter().all(|done| done) {
                return; // shutdown while a sink was failing
            }
            if !self.acknowledge(last_seq, &mut shutdown).await {
                return;
            }
        }
    }

    /// Stores the cursor, retrying on I/O errors; false if shutdown came first.
    async fn acknowledge(&self, seq: u64, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.spool.acknowledge(seq).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(error = %e, seq, "cannot store the spool cursor; retrying");
                    if sleep_or_shutdown(self.settings.retry_max_backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Sleeps; true if shutdown was requested meanwhile.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let interrupted = tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    interrupted || *shutdown.borrow()
}

/// Up to 20% random jitter, so replicas retrying a shared broker do not retry in lockstep.
fn with_jitter(base: Duration) -> Duration {
    base + base.mul_f64(fastrand::f64() * 0.2)
}
