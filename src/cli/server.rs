//! No subcommand: run the gateway until SIGTERM/SIGINT.

use std::process::ExitCode;

use super::EXIT_FAILED;
use crate::config::Settings;
use crate::startup::Application;
use crate::telemetry;

pub async fn run(settings: Settings) -> ExitCode {
    telemetry::init(&settings.log);
    let result = async {
        Application::build(settings)
            .await?
            .run_until_stopped()
            .await
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
