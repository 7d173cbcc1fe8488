//! SIGHUP. Its default action ends the process at once (exit 129, no graceful shutdown), and
//! operators send it expecting a reload, so the server handles it: it reads the configuration
//! again (the same file and environment) and applies `log.level`, the one setting that can
//! change safely while notifications are in flight, and it reloads the TLS listeners'
//! certificates and keys from their files (`[server.tls]`, `[admin.tls]`; open connections keep
//! theirs). Everything else takes effect at the next start; a configuration that no longer loads
//! changes no setting, and a certificate that does not load leaves its listener as it was: both
//! are logged.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Settings;
use crate::startup::CertificateReloader;
use crate::telemetry::LogReload;

/// The certificate reloader, set once the application is built (SIGHUP is handled from before
/// that, so it never ends the process).
pub type Certificates = Arc<parking_lot::Mutex<Option<CertificateReloader>>>;

/// Installs the SIGHUP handler (from now on SIGHUP no longer ends the process) and serves it
/// in the background for the life of the process.
pub fn handle(
    config: Option<PathBuf>,
    log: Option<LogReload>,
    certificates: Certificates,
) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reload(config.as_deref(), log.as_ref());
            let reloader = certificates.lock().clone();
            if let Some(reloader) = reloader {
                let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
            }
        }
    });
    Ok(())
}

fn reload(config: Option<&std::path::Path>, log: Option<&LogReload>) {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(
                error = %e,
                "SIGHUP: the configuration does not load; nothing changed"
            );
            return;
        }
    };
    let level = settings.log.level.as_str();
    match log.map(|log| log.apply(level)) {
        Some(Ok(())) => tracing::info!(
            log_level = level,
            "SIGHUP: log.level reloaded; other settings take effect at the next start"
        ),
        Some(Err(e)) => tracing::warn!(
            error = %e,
            "SIGHUP: log.level not reloaded; other settings take effect at the next start"
        ),
        None => tracing::warn!("SIGHUP: no reloadable logger; nothing changed"),
    }
}
