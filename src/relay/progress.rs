//! One runner per sink. Each reads the spool with its own reader and moves its own cursor, so a
//! sink that is down or slow never holds another back; the spool retires a segment once every
//! sink has passed it, so its bound applies to the slowest sink. A runner's loop: read a batch,
//! hand it to `deliver` (which returns once the sink has dealt with every notification in it,
//! or false when shutdown came first), acknowledge it for that sink.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::sleep_or_shutdown;
use crate::config::RelaySettings;
use crate::notification::Notification;
use crate::sink::Sink;
use crate::spool::Spool;

/// Runs one runner per sink until `shutdown` turns true. A batch not yet acknowledged when
/// shutdown comes stays in the spool and is relayed to that sink after the next start.
pub async fn run_per_sink<'a, D, F>(
    spool: &Spool,
    sinks: &'a [Arc<dyn Sink>],
    settings: &RelaySettings,
    shutdown: watch::Receiver<bool>,
    deliver: D,
) where
    D: Fn(&'a dyn Sink, Vec<Notification>, watch::Receiver<bool>) -> F,
    F: Future<Output = bool>,
{
    let runners = sinks
        .iter()
        .map(|sink| run_sink(spool, sink.as_ref(), settings, shutdown.clone(), &deliver));
    futures::future::join_all(runners).await;
}

async fn run_sink<'a, D, F>(
    spool: &Spool,
    sink: &'a dyn Sink,
    settings: &RelaySettings,
    mut shutdown: watch::Receiver<bool>,
    deliver: &D,
) where
    D: Fn(&'a dyn Sink, Vec<Notification>, watch::Receiver<bool>) -> F,
    F: Future<Output = bool>,
{
    let mut reader = match spool.reader_for(sink.name()) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::error!(sink = sink.name(), error = %e, "cannot read the spool for this sink");
            return;
        }
    };
    loop {
        let batch = tokio::select! {
            batch = reader.next_batch(settings.batch_max_records) => batch,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(sink = sink.name(), error = %e, "cannot read the spool; retrying");
                if sleep_or_shutdown(settings.retry_max_backoff, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let Some(last_seq) = batch.last().map(|r| r.seq) else {
            continue;
        };
        let notifications = batch.into_iter().map(|r| r.notification).collect();
        if !deliver(sink, notifications, shutdown.clone()).await {
            return; // shutdown while the sink was failing
        }
        if !acknowledge(spool, sink.name(), last_seq, settings, &mut shutdown).await {
            return;
        }
    }
}

/// Stores the sink's cursor, retrying on I/O errors; false if shutdown came first.
async fn acknowledge(
    spool: &Spool,
    sink: &str,
    seq: u64,
    settings: &RelaySettings,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        match spool.acknowledge_for(sink, seq).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(sink, error = %e, seq, "cannot store the spool cursor; retrying");
                if sleep_or_shutdown(settings.retry_max_backoff, shutdown).await {
                    return false;
                }
            }
        }
    }
}
