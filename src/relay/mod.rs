//! The relay: one runner per sink (see `progress`) reads the spool in order, hands each batch to
//! its sink, and advances that sink's cursor once the sink has dealt with the batch (a sink that
//! is down never holds another back). A sink deals with a notification
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
mod progress;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::RelaySettings;
use crate::dead_letter::DeadLetterStore;
use crate::metrics::Metrics;
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

    /// Relays until `shutdown` turns true, restarting the relay from the cursor if it panics.
    /// At shutdown each sink's publish in progress runs to its end and what it confirmed is
    /// acknowledged; `interrupt` abandons a publish still in progress (a hung broker). What a
    /// sink has not confirmed stays in the spool and is relayed after the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, interrupt: watch::Receiver<bool>) {
        let relay = Arc::new(self);
        let mut backoff = relay.settings.retry_initial_backoff;
        loop {
            relay.running.store(true, Ordering::Relaxed);
            let task = tokio::spawn(
                relay
                    .clone()
                    .relay_until_stopped(shutdown.clone(), interrupt.clone()),
            );
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

    async fn relay_until_stopped(
        self: Arc<Self>,
        shutdown: watch::Receiver<bool>,
        interrupt: watch::Receiver<bool>,
    ) {
        let relay = &self;
        let interrupt = &interrupt;
        progress::run_per_sink(
            &self.spool,
            &self.sinks,
            &self.settings,
            shutdown,
            move |sink, batch, shutdown| async move {
                delivery::Delivery {
                    sink,
                    settings: &relay.settings,
                    metrics: &relay.metrics,
                    dead_letters: &relay.dead_letters,
                }
                .deliver(&batch, shutdown, interrupt.clone())
                .await
            },
        )
        .await;
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
