//! No subcommand: run the gateway until SIGTERM/SIGINT; SIGHUP reloads `log.level` and the TLS
//! listeners' certificates (`hangup`).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{hangup, EXIT_FAILED};
use crate::config::Settings;
use crate::startup::Application;
use crate::telemetry;

pub async fn run(settings: Settings, config: Option<PathBuf>) -> ExitCode {
    let log = telemetry::init(&settings.log);
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "dataloy-gateway failed");
            eprintln!("dataloy-gateway: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
