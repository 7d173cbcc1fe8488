//! One runner per sink. Each reads the spool with its own reader and moves its own cursor, so a
//! sink that is down or slow never holds another back; the spool retires a segment once every
//! sink has passed it, so its bound applies to the slowest sink. A runner's loop: read a batch,
//! hand it to `deliver` (which returns how many leading notifications the sink has dealt with:
//! all of them, unless shutdown came first), acknowledge those for that sink. At shutdown a
//! runner starts no new batch, but what its last publish confirmed is acknowledged, so a clean
//! stop relays nothing twice.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::sleep_or_shutdown;
use crate::config::RelaySettings;
use crate::notification::Notification;
use crate::sink::Sink;
use crate::spool::Spool;

/// Runs one runner per sink until `shutdown` turns true. What a sink has not confirmed when
/// shutdown comes stays in the spool and is relayed to that sink after the next start.
pub async fn run_per_sink<'a, D, F>(
    spool: &Spool,
    sinks: &'a [Arc<dyn Sink>],
    settings: &RelaySettings,
    shutdown: watch::Receiver<bool>,
    deliver: D,
) where
    D: Fn(&'a dyn Sink, Vec<Notification>, watch::Receiver<bool>) -> F,
    F: Future<Output = usize>,
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
    F: Future<Output = usize>,
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
            biased; // at shutdown, no new batch even when one is ready
            _ = shutdown.wait_for(|stop| *stop) => return,
            batch = reader.next_batch(settings.batch_max_records) => batch,
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
        if batch.is_empty() {
            continue;
        }
        let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
        let notifications = batch.into_iter().map(|r| r.notification).collect();
        let done = deliver(sink, notifications, shutdown.clone()).await;
        if done > 0
            && !acknowledge(spool, sink.name(), seqs[done - 1], settings, &mut shutdown).await
        {
            return;
        }
        if done < seqs.len() {
            return; // shutdown before the sink dealt with the whole batch
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
