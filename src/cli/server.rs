//! No subcommand: run the gateway until SIGTERM/SIGINT; SIGHUP reloads `log.level` and the TLS
//! listeners' certificates (`hangup`).
//! With `[tracing.otlp]`, spans are exported while it runs and flushed (bounded) when it stops.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{hangup, EXIT_FAILED};
use crate::config::Settings;
use crate::startup::Application;
use crate::telemetry;

/// How long the spans still queued at the end may take to reach the collector.
#[cfg(feature = "otlp")]
const SPAN_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(settings: Settings, config: Option<PathBuf>) -> ExitCode {
    ignore_file_size_signal();
    #[cfg(feature = "otlp")]
    let (log, export) = match telemetry::otel::init_server(&settings.log, &settings.tracing) {
        Ok(installed) => installed,
        Err(e) => {
            eprintln!("dataloy-gateway: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    #[cfg(not(feature = "otlp"))]
    let log = {
        if settings.tracing.otlp.is_some() {
            eprintln!(
                "dataloy-gateway: tracing.otlp is configured but this build has no OTLP export \
                 (built without the `otlp` feature)"
            );
            return ExitCode::from(EXIT_FAILED);
        }
        telemetry::init(&settings.log)
    };
    let certificates = hangup::Certificates::default();
    if let Err(e) = hangup::handle(config, log, certificates.clone()) {
        tracing::warn!(error = %e, "cannot handle SIGHUP; it will end the process");
    }
    let result = async {
        let app = Application::build(settings).await?;
        *certificates.lock() = Some(app.certificate_reloader());
        app.run_until_stopped().await
    }
    .await;
    #[cfg(feature = "otlp")]
    if let Some(export) = export {
        let _ = tokio::task::spawn_blocking(move || export.shutdown(SPAN_FLUSH_TIMEOUT)).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "dataloy-gateway failed");
            eprintln!("dataloy-gateway: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Under a file size limit (`ulimit -f`), a write past it must fail (EFBIG: the notification is
/// answered 503, see the spool and the id journal) instead of killing the process with
/// SIGXFSZ, its default action: an outside attacker saw the gateway die without a word.
fn ignore_file_size_signal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code, so nothing runs in signal context.
    if let Err(e) = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) } {
        tracing::warn!(error = %e, "cannot ignore SIGXFSZ; a file size limit would end the process");
    }
}
