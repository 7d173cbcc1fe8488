//! The dedup backend's one Redis connection, opened and re-opened by a keeper task on the
//! runtime that built the backend (the application's main runtime).
//!
//! A multiplexed connection's driver is a task on the runtime that opened the connection.
//! redis's `ConnectionManager` opens it lazily, and re-opens it after a failure, on whichever
//! runtime makes that call: an HTTP worker's. All Redis I/O of the process then ran on one HTTP
//! thread, and the driver died with that worker (at shutdown, while the WebSocket sources still
//! store what they receive). Here callers only take a handle to the current connection and
//! report a broken one; the keeper alone connects.
//!
//! The keeper also tracks whether Redis answers at all (`usable`, for readiness): a failed call
//! clears it, a successful one sets it, and while it is clear the keeper probes Redis every
//! [`PROBE_INTERVAL`] with the same script the request path uses, so readiness recovers without
//! traffic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::MultiplexedConnection;
use redis::RedisError;
use tokio::sync::Notify;

use super::redis_eviction::{self, Eviction};
use super::redis_target::{ConnectError, Connector};

/// How often the keeper probes Redis while calls fail.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a Redis that evicts (without `dedup.redis_allow_eviction`) is checked again.
const EVICTION_RECHECK: Duration = Duration::from_secs(5);

/// Checks that a connection answers the request path's commands; run by the keeper's probe.
pub(super) type Probe = Box<
    dyn Fn(MultiplexedConnection) -> futures::future::BoxFuture<'static, Result<(), RedisError>>
        + Send
        + Sync,
>;

pub(super) struct Shared {
    connector: Connector,
    allow_eviction: bool,
    /// The current connection and its generation, `None` while disconnected.
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    broken: Notify,
    usable: AtomicBool,
}

/// A handle on the kept connection; dropping the last one stops the keeper.
pub(super) struct RedisConnection {
    shared: Arc<Shared>,
    keeper: tokio::task::JoinHandle<()>,
}

/// Why the first connection attempt refused to go on.
pub(super) enum StartError {
    Evicting {
        policy: String,
        maxmemory: u64,
    },
    /// The TLS handshake failed: a certificate the gateway does not trust, a name that does not
    /// match, a client certificate Redis refused. A configuration error, not an outage.
    Tls(String),
}

impl RedisConnection {
    /// Opens the first connection (bounded by the timeout) on the calling runtime and spawns the
    /// keeper there. A Redis that is down at start-up delays nothing but dedup itself; one that
    /// is up and evicts keys refuses the start unless eviction is allowed.
    pub(super) async fn start(
        connector: Connector,
        allow_eviction: bool,
        probe: Probe,
    ) -> Result<Self, StartError> {
        let shared = Arc::new(Shared {
            connector,
            allow_eviction,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            broken: Notify::new(),
            usable: AtomicBool::new(false),
        });
        match shared.open().await {
            Ok(()) => {}
            Err(OpenError::Evicting { policy, maxmemory }) => {
                return Err(StartError::Evicting { policy, maxmemory })
            }
            Err(OpenError::Connect(ConnectError::Tls(reason))) => {
                return Err(StartError::Tls(reason))
            }
            Err(OpenError::Connect(e)) => {
                tracing::warn!(
                    error = %e,
                    "Redis (dedup.redis_url) is not reachable at start-up; dedup calls fail until it is"
                )
            }
        }
        let keeper = tokio::spawn(keep(shared.clone(), probe));
        Ok(Self { shared, keeper })
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for RedisConnection {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

enum OpenError {
    Connect(ConnectError),
    Evicting { policy: String, maxmemory: u64 },
}

impl Shared {
    /// The current connection, or an error (and a nudge to the keeper) while there is none.
    pub(super) fn connection(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(current) = self.current.read().clone() {
            return Ok(current);
        }
        self.usable.store(false, Ordering::Relaxed);
        self.broken.notify_one();
        Err(RedisError::from((
            redis::ErrorKind::Io,
            "not connected to Redis",
        )))
    }

    /// Records a call's result: success makes the backend usable; a failure makes it unusable
    /// and, when the connection itself broke, hands it to the keeper to re-open.
    pub(super) fn report<T>(&self, generation: u64, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => {
                if !self.usable.load(Ordering::Relaxed) {
                    self.usable.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.usable.store(false, Ordering::Relaxed);
                // A timeout leaves the connection as it is: its commands are still queued and
                // answered in order when Redis catches up.
                let broken = e.is_io_error() && !e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error();
                if broken {
                    let mut current = self.current.write();
                    if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                        *current = None;
                    }
                }
                self.broken.notify_one();
            }
        }
    }

    pub(super) fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// Opens a connection (its driver runs on the calling runtime), checks that Redis keeps
    /// keys until they expire, and installs it.
    async fn open(&self) -> Result<(), OpenError> {
        let mut connection = self.connector.connect().await.map_err(OpenError::Connect)?;
        match redis_eviction::check(&mut connection).await {
            Eviction::Off => {}
            Eviction::Unknown(reason) => tracing::warn!(
                reason,
                "cannot read Redis maxmemory-policy (CONFIG GET and INFO refused); it must be \
                 noeviction or maxmemory 0, or evicted ids are accepted and published again"
            ),
            Eviction::On { policy, maxmemory } if self.allow_eviction => tracing::error!(
                policy,
                maxmemory,
                "Redis evicts keys under memory pressure and dedup.redis_allow_eviction is set: \
                 an evicted id is accepted and published again"
            ),
            Eviction::On { policy, maxmemory } => {
                return Err(OpenError::Evicting { policy, maxmemory })
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.write() = Some((generation, connection));
        self.usable.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Re-opens the connection when a caller reports it broken, with capped backoff, and probes
/// Redis while calls fail.
async fn keep(shared: Arc<Shared>, probe: Probe) {
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    loop {
        let connected = shared.current.read().clone();
        let Some((generation, connection)) = connected else {
            match shared.open().await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if reported_down {
                        tracing::info!("dedup reconnected to Redis");
                        reported_down = false;
                    }
                }
                Err(e) => {
                    shared.usable.store(false, Ordering::Relaxed);
                    let pause = match &e {
                        OpenError::Connect(_) => backoff,
                        OpenError::Evicting { .. } => EVICTION_RECHECK,
                    };
                    if !reported_down {
                        match e {
                            OpenError::Connect(e) => {
                                tracing::warn!(error = %e, "cannot connect to Redis for dedup; retrying")
                            }
                            OpenError::Evicting { policy, maxmemory } => tracing::error!(
                                policy,
                                maxmemory,
                                "Redis now evicts keys under memory pressure; dedup refuses to \
                                 use it (set maxmemory-policy noeviction)"
                            ),
                        }
                        reported_down = true;
                    }
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        if shared.usable() {
            shared.broken.notified().await;
            continue;
        }
        // Connected, but the last call failed: find out whether Redis answers again.
        tokio::select! {
            _ = shared.broken.notified() => {}
            _ = tokio::time::sleep(PROBE_INTERVAL) => {
                let result = probe(connection).await;
                shared.report(generation, &result);
            }
        }
    }
}
