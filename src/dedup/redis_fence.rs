//! Releases of claims the client gave up on. A claim or release that timed out (a Redis stall)
//! or whose connection broke may still reach Redis later; a claim landing then would block its
//! id for a whole lease with nobody owning it, and Dataloy's retries would get 503 meanwhile.
//! Each such claim is queued here, and one task on the main runtime keeps releasing the queued
//! tokens until Redis answers or their lease is over (the claim has then expired by itself).
//! Sent on the same connection after the call that failed, a release reaches Redis after it, so
//! a claim that lands late is deleted right after it lands.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::redis_connection::Shared;

/// Pause between two rounds of releases while Redis does not answer.
const RETRY: Duration = Duration::from_millis(200);
/// Most claims waiting to be released; beyond, a claim is left to expire with its lease.
const MAX_PENDING: usize = 65_536;

struct Fence {
    key: String,
    token: String,
    deadline: Instant,
}

pub(super) struct Fences {
    queue: mpsc::Sender<Fence>,
}

impl Fences {
    /// Starts the releasing task on `runtime`.
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        shared: Arc<Shared>,
        release: Script,
    ) -> Self {
        let (queue, pending) = mpsc::channel(MAX_PENDING);
        runtime.spawn(release_until_answered(pending, shared, release));
        Self { queue }
    }

    /// Queues the release of `token`'s claim on `key`, for at most `lease`.
    pub(super) fn release_later(&self, key: String, token: String, lease: Duration) {
        let fence = Fence {
            key,
            token,
            deadline: Instant::now() + lease,
        };
        if self.queue.try_send(fence).is_err() {
            tracing::warn!("too many dedup claims waiting to be released; one is left to expire with its lease");
        }
    }
}

async fn release_until_answered(
    mut queue: mpsc::Receiver<Fence>,
    shared: Arc<Shared>,
    release: Script,
) {
    let mut pending: Vec<Fence> = Vec::new();
    loop {
        if pending.is_empty() {
            let Some(fence) = queue.recv().await else {
                return;
            };
            pending.push(fence);
        }
        while pending.len() < MAX_PENDING {
            let Ok(fence) = queue.try_recv() else { break };
            pending.push(fence);
        }
        let now = Instant::now();
        pending.retain(|fence| fence.deadline > now);
        if let Ok((generation, connection)) = shared.connection() {
            let attempts = pending.iter().map(|fence| {
                let (mut connection, release) = (connection.clone(), &release);
                async move {
                    release
                        .key(&fence.key)
                        .arg(&fence.token)
                        .invoke_async::<i64>(&mut connection)
                        .await
                }
            });
            let results = futures::future::join_all(attempts).await;
            let mut results = results.into_iter();
            pending.retain(|_| {
                let result = results.next().expect("one result per fence");
                shared.report(generation, &result);
                result.is_err()
            });
        }
        if !pending.is_empty() {
            tokio::time::sleep(RETRY).await;
        }
    }
}
