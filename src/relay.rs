//! The relay: one runner per sink (see `progress`) reads the spool in order and hands each batch
//! to its sink, retrying a failing sink with capped exponential backoff, and advances that sink's
//! cursor once the sink confirmed the batch. After a restart each sink resumes from its cursor.

mod progress;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::RelaySettings;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::sink::Sink;
use crate::spool::Spool;

pub struct Relay {
    spool: Arc<Spool>,
    sinks: Vec<Arc<dyn Sink>>,
    settings: RelaySettings,
    metrics: Metrics,
}

impl Relay {
    pub fn new(
        spool: Arc<Spool>,
        sinks: Vec<Arc<dyn Sink>>,
        settings: RelaySettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            spool,
            sinks,
            settings,
            metrics,
        }
    }

    /// Relays until `shutdown` turns true. A batch being retried when shutdown comes stays in
    /// the spool and is relayed after the next start.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let relay = &self;
        progress::run_per_sink(
            &self.spool,
            &self.sinks,
            &self.settings,
            shutdown,
            move |sink, batch, shutdown| async move { relay.deliver(sink, &batch, shutdown).await },
        )
        .await;
    }

    /// Publishes the batch to one sink until it is confirmed; false if shutdown came first.
    async fn deliver(
        &self,
        sink: &dyn Sink,
        batch: &[Notification],
        mut shutdown: watch::Receiver<bool>,
    ) -> bool {
        let mut confirmed = 0;
        let mut backoff = self.settings.retry_initial_backoff;
        loop {
            let started = Instant::now();
            match sink.publish(&batch[confirmed..]).await {
                Ok(()) => {
                    self.metrics.sink_published(
                        sink.name(),
                        batch.len() - confirmed,
                        started.elapsed(),
                    );
                    return true;
                }
                Err(e) => {
                    confirmed += e.confirmed;
                    self.metrics.sink_publish_failed(sink.name());
                    let wait = with_jitter(backoff);
                    tracing::warn!(
                        sink = sink.name(),
                        error = %e,
                        pending = batch.len() - confirmed,
                        retry_in_ms = wait.as_millis() as u64,
                        "publish failed; will retry"
                    );
                    if sleep_or_shutdown(wait, &mut shutdown).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.settings.retry_max_backoff);
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
