//! Wiring: `Application::build` opens the spool, builds the dedup backend and sinks, binds both
//! listeners (port 0 works, for tests; HTTPS with `[server.tls]` / `[admin.tls]`, whose
//! certificates are watched for changes and reloaded through [`CertificateReloader`]) and starts
//! the relay (and the subscription keeper, when subscriptions are declared); `run_until_stopped`
//! serves until
//! SIGTERM/SIGINT or a [`StopHandle`], then shuts down in order: stop accepting, finish in-flight
//! requests, let each sink's publish in progress finish and store its cursor, flush the spool,
//! close the sinks. The whole shutdown is bounded by `server.shutdown_timeout` plus a few
//! seconds: a publish still hanging at the deadline is interrupted (it stays in the spool), and
//! a broker that does not answer the close is left.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::dead_letter::{self, DeadLetterStore};
use crate::dedup::{self, MemoryDedup};
use crate::descriptors;
use crate::id_journal;
use crate::ingest::{Durability, Ingest};
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::routes::{self, metrics, webhook};
use crate::sink::{self, Sink};
use crate::spool::{Spool, SpoolOptions};
use crate::subscriptions;
use crate::tls::{ListenerTls, Reloaded};
use crate::websocket::{SourceLimits, WebSocketSource};

/// After the relay was interrupted at the shutdown deadline: time to store the cursors of what
/// its sinks confirmed.
const INTERRUPTED_RELAY_GRACE: Duration = Duration::from_secs(2);
/// Time each sink gets to flush and close its connection at the end of a shutdown.
const SINK_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Application {
    port: u16,
    admin_port: u16,
    server: Server,
    admin: Server,
    spool: Option<Arc<Spool>>,
    sinks: Vec<Arc<dyn Sink>>,
    relay: Option<tokio::task::JoinHandle<()>>,
    stop_relay: watch::Sender<bool>,
    interrupt_relay: watch::Sender<bool>,
    shutdown_timeout: Duration,
    source_tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_sources: watch::Sender<bool>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    stop_keeper: watch::Sender<bool>,
    /// The dead-letter forwarders (`[dead_letters.forward.*]`), one per destination.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    stop_forwarders: watch::Sender<bool>,
    stop_requested: watch::Sender<bool>,
    shutting_down: Arc<AtomicBool>,
    /// The listeners with TLS, whose certificates SIGHUP reloads.
    listener_tls: Vec<Arc<ListenerTls>>,
    tls_watchers: Vec<tokio::task::JoinHandle<()>>,
    metrics: Metrics,
}

/// Asks a running application to shut down gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        // First, before anything holds a descriptor: the limit may refuse the start.
        let workers = settings
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let max_connections =
            descriptors::fit_connections(settings.server.max_connections, workers)?;
        let metrics = Metrics::new();
        let sinks = sink::build_all(
            &settings.sinks,
            settings.server.max_body_bytes.bytes(),
            &metrics,
        )
        .await?;
        for sink in &sinks {
            metrics.register_sink(sink.name());
        }
        let keeper = subscriptions::keeper_if_configured(&settings, &metrics)
            .context("cannot set up the subscription keeper")?;

        // The memory backend's table, rebuilt from the id journal while the spool opens.
        let remembered = settings
            .dedup
            .remembers_across_restarts(settings.spool.enabled)
            .then(|| {
                let table = MemoryDedup::new(settings.dedup.max_entries);
                let journaled = id_journal::estimated_ids(&settings.spool.dir);
                table.reserve(usize::try_from(journaled).unwrap_or(usize::MAX));
                table
            });
        let spool = if settings.spool.enabled {
            let options = SpoolOptions {
                dir: settings.spool.dir.clone(),
                max_bytes: settings.spool.max_bytes.bytes(),
                segment_bytes: settings.spool.segment_bytes.bytes(),
                commit_interval: settings.spool.commit_interval,
                missing_cursor: settings.spool.missing_cursor,
            };
            let sink_names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
            let opened = match &remembered {
                Some(table) => {
                    let limits = id_journal::Limits {
                        ttl: settings.dedup.ttl,
                        max_entries: settings.dedup.max_entries,
                    };
                    Spool::open_remembering_ids(
                        options,
                        &sink_names,
                        metrics.clone(),
                        limits,
                        &mut |key, ttl_left| table.remember(key, ttl_left),
                    )
                }
                None => Spool::open(options, &sink_names, metrics.clone()),
            };
            let spool = opened.with_context(|| {
                format!("cannot open spool.dir {}", settings.spool.dir.display())
            })?;
            Some(Arc::new(spool))
        } else {
            None
        };
        // Built here, on the main runtime, which then keeps the Redis connection: a connection
        // opened by an HTTP worker would die with that worker.
        let dedup = dedup::build(&settings.dedup, remembered, &metrics)
            .await
            .context("cannot set up dedup")?;
        let dead_letter_dir = settings.dead_letter_dir();
        let dead_letters =
            DeadLetterStore::open(&dead_letter_dir, settings.dead_letters.max_bytes.bytes())
                .with_context(|| {
                    format!(
                        "cannot open the dead-letter store (dead_letters.dir) {}",
                        dead_letter_dir.display()
                    )
                })?;
        metrics
            .delivery
            .dead_letter_bytes
            .set(dead_letters.used_bytes() as i64);
        let dead_letters = Arc::new(dead_letters);
        let (stop_forwarders, forwarders_stopped) = watch::channel(false);
        let forwarders = dead_letter::forward::start(
            &settings,
            dead_letters.clone(),
            &metrics.dead_letter_forward,
            forwarders_stopped,
        )
        .context("cannot set up dead_letters.forward")?;
        let durability = match &spool {
            Some(spool) => Durability::Spool(spool.clone()),
            None => Durability::Direct {
                sinks: sinks.clone(),
                dead_letters: dead_letters.clone(),
            },
        };
        let ingest = Arc::new(Ingest::new(
            dedup.clone(),
            durability,
            settings.dedup.clone(),
            metrics.clone(),
        ));

        let (stop_sources, sources_stopped) = watch::channel(false);
        let mut source_health = Vec::new();
        let mut source_tasks = Vec::new();
        let source_limits = SourceLimits {
            max_message_bytes: usize::try_from(settings.server.max_body_bytes.bytes())
                .unwrap_or(usize::MAX),
            shutdown_timeout: settings.server.shutdown_timeout,
        };
        for (name, source_settings) in &settings.sources.websocket {
            let source = WebSocketSource::new(
                name,
                source_settings,
                source_limits,
                ingest.clone(),
                metrics.clone(),
            )
            .with_context(|| format!("cannot set up WebSocket source `{name}`"))?;
            source_health.push(source.health());
            source_tasks.push(tokio::spawn(source.run(sources_stopped.clone())));
        }

        let (stop_relay, relay_stopped) = watch::channel(false);
        let (interrupt_relay, relay_interrupted) = watch::channel(false);
        let mut relay_running = None;
        let relay = spool.as_ref().map(|spool| {
            let relay = Relay::new(
                spool.clone(),
                sinks.clone(),
                settings.relay.clone(),
                metrics.clone(),
                dead_letters.clone(),
            );
            relay_running = Some(relay.running_flag());
            tokio::spawn(relay.run(relay_stopped, relay_interrupted))
        });

        let listener = TcpListener::bind(settings.server_addr())
            .with_context(|| format!("cannot bind server.bind {}", settings.server.bind))?;
        let admin_listener = TcpListener::bind(settings.admin_addr())
            .with_context(|| format!("cannot bind admin.bind {}", settings.admin.bind))?;
        let port = listener.local_addr()?.port();
        let admin_port = admin_listener.local_addr()?.port();

        let webhook_state = web::Data::new(webhook::WebhookState {
            ingest,
            auth: Authenticator::from_settings(&settings.auth),
            max_body_bytes: settings.server.max_body_bytes.bytes() as usize,
            body_timeout: settings.server.client_timeout,
            retry_after_seconds: settings.server.retry_after_seconds,
            metrics: metrics.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.server.max_in_flight)),
            buffered_bytes: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_buffered_bytes.bytes() as usize,
            )),
        });
        let server_tls = load_listener_tls(
            settings.server.tls.as_ref(),
            crate::tls::SERVER_KEYS,
            &metrics,
        )?;
        let admin_tls = load_listener_tls(
            settings.admin.tls.as_ref(),
            crate::tls::ADMIN_KEYS,
            &metrics,
        )?;
        let connections_per_worker = max_connections.div_ceil(workers);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(webhook_state.clone())
                .configure(routes::notification_listener)
        })
        .workers(workers)
        .max_connections(connections_per_worker)
        .client_request_timeout(settings.server.client_timeout)
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs())
        .disable_signals();
        let server = match &server_tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls.server_config())?,
            None => server.listen(listener)?,
        }
        .run();

        let shutting_down = Arc::new(AtomicBool::new(false));
        let admin_state = web::Data::new(metrics::AdminState {
            metrics: metrics.clone(),
            spool: spool.clone(),
            sinks: sinks.clone(),
            dedup,
            dedup_required: settings.dedup.backend == crate::config::DedupBackend::Redis
                && settings.dedup.on_backend_error == crate::config::OnBackendError::Reject,
            sources: source_health,
            max_body_bytes: settings.server.max_body_bytes.bytes(),
            shutting_down: shutting_down.clone(),
            relay_running,
            dead_letters: dead_letters.clone(),
        });
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .configure(routes::admin_listener)
        })
        .workers(1)
        .max_connections(descriptors::ADMIN_MAX_CONNECTIONS)
        .shutdown_timeout(1)
        .disable_signals();
        let admin = match &admin_tls {
            Some(tls) => admin.listen_rustls_0_23(admin_listener, tls.server_config())?,
            None => admin.listen(admin_listener)?,
        }
        .run();
        let listener_tls: Vec<Arc<ListenerTls>> = server_tls.into_iter().chain(admin_tls).collect();
        let tls_watchers = listener_tls
            .iter()
            .map(|tls| tls.clone().watch(metrics.clone()))
            .collect();

        // Started last: it calls Dataloy, which then calls this gateway.
        let (stop_keeper, keeper_stopped) = watch::channel(false);
        let keeper = keeper.map(|keeper| tokio::spawn(keeper.run(keeper_stopped)));

        tracing::info!(
            server = %settings.server.bind,
            port,
            admin_port,
            server_tls = settings.server.tls.is_some(),
            admin_tls = settings.admin.tls.is_some(),
            spool = settings.spool.enabled,
            sinks = ?sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "dataloy-gateway listening"
        );
        let (stop_requested, _) = watch::channel(false);
        Ok(Application {
            port,
            admin_port,
            server,
            admin,
            spool,
            sinks,
            relay,
            stop_relay,
            interrupt_relay,
            shutdown_timeout: settings.server.shutdown_timeout,
            source_tasks,
            stop_sources,
            keeper,
            stop_keeper,
            forwarders,
            stop_forwarders,
            stop_requested,
            shutting_down,
            listener_tls,
            tls_watchers,
            metrics,
        })
    }

    /// Port of the notification listener (useful with `server.bind = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the admin listener.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// What reloads the listeners' certificates (SIGHUP, see `cli::hangup`).
    pub fn certificate_reloader(&self) -> CertificateReloader {
        CertificateReloader {
            listeners: self.listener_tls.clone(),
            metrics: self.metrics.clone(),
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop_requested.clone())
    }

    /// Serves until a signal or a [`StopHandle`] asks to stop, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let server_handle = self.server.handle();
        let admin_handle = self.admin.handle();
        let mut server = tokio::spawn(self.server);
        let admin = tokio::spawn(self.admin);
        let mut stop_requested = self.stop_requested.subscribe();

        tokio::select! {
            result = &mut server => {
                result.context("notification listener panicked")?.context("notification listener failed")?;
            }
            _ = stop_requested.wait_for(|stop| *stop) => tracing::info!("stop requested"),
            signal = shutdown_signal() => tracing::info!(signal, "signal received; shutting down"),
        }

        let deadline = Instant::now() + self.shutdown_timeout;
        self.shutting_down.store(true, Ordering::Relaxed);
        self.stop_keeper.send_replace(true);
        if let Some(keeper) = self.keeper {
            let _ = timeout_at(deadline, keeper).await;
        }
        // The sources close their connections and store what arrives until the server's Close,
        // while the listener finishes its requests (actix gives them `server.shutdown_timeout`
        // of its own); both within the shutdown deadline.
        self.stop_sources.send_replace(true);
        let _ = timeout_at(deadline, server_handle.stop(true)).await;
        let _ = timeout_at(deadline, server).await;
        for task in self.source_tasks {
            let _ = timeout_at(deadline, task).await;
        }
        self.stop_relay.send_replace(true);
        if let Some(mut relay) = self.relay {
            if timeout_at(deadline, &mut relay).await.is_err() {
                tracing::warn!(
                    "a publish was still in progress at server.shutdown_timeout; interrupting \
                     it (what its sink did not confirm stays in the spool)"
                );
                self.interrupt_relay.send_replace(true);
                if timeout(INTERRUPTED_RELAY_GRACE, relay).await.is_err() {
                    tracing::error!("the relay did not stop; its last cursors may not be stored");
                }
            }
        }
        // A forward in flight is abandoned: its entry is not marked, so it goes again after the
        // restart (at-least-once, same message id).
        self.stop_forwarders.send_replace(true);
        for forwarder in self.forwarders {
            let abort = forwarder.abort_handle();
            if timeout(SINK_CLOSE_TIMEOUT, forwarder).await.is_err() {
                tracing::warn!("a dead-letter forwarder did not stop in time; abandoning it");
                abort.abort();
            }
        }
        if let Some(spool) = &self.spool {
            spool.close().await;
        }
        futures::future::join_all(self.sinks.iter().map(|sink| sink.close(SINK_CLOSE_TIMEOUT)))
            .await;
        admin_handle.stop(true).await;
        let _ = timeout(Duration::from_secs(2), admin).await;
        for watcher in self.tls_watchers {
            watcher.abort();
        }
        tracing::info!("dataloy-gateway stopped");
        Ok(())
    }
}

/// Reloads the TLS listeners' certificates and keys from their files, now.
#[derive(Clone, Default)]
pub struct CertificateReloader {
    listeners: Vec<Arc<ListenerTls>>,
    metrics: Metrics,
}

impl CertificateReloader {
    /// Reads every TLS listener's files again and serves what they hold from the next
    /// handshake on (a file that does not load leaves that listener as it was); logs and counts
    /// each outcome. `cause` names the trigger in the log.
    pub fn reload(&self, cause: &str) -> Vec<Result<Reloaded, crate::tls::TlsError>> {
        self.listeners
            .iter()
            .map(|tls| {
                let outcome = tls.reload(true);
                tls.report(&outcome, cause, &self.metrics);
                outcome
            })
            .collect()
    }

    /// Whether any listener has TLS.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// `[server.tls]` / `[admin.tls]` loaded, with its expiry in the metrics.
fn load_listener_tls(
    settings: Option<&crate::config::ListenerTlsSettings>,
    keys: crate::tls::ListenerKeys,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<ListenerTls>>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let tls = ListenerTls::new(settings, keys)?;
    let identity = tls.identity();
    metrics.tls_certificate(keys.listener, identity.not_after);
    tracing::info!(
        listener = keys.listener,
        subject = %identity.subject,
        serial = %identity.serial,
        expires = %identity.expires(),
        client_certificates = settings.client_ca_file.is_some(),
        "TLS on the listener"
    );
    Ok(Some(Arc::new(tls)))
}

async fn shutdown_signal() -> &'static str {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
