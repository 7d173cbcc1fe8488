//! The `dataloy-gateway` binary: parse the command line, load the configuration, start logging,
//! run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dataloy_gateway::config::Settings;
use dataloy_gateway::startup::Application;
use dataloy_gateway::telemetry;

/// A request's buffers are allocated on an HTTP worker and many are freed on the relay's threads.
/// In a profile at full load glibc's allocator took 4.8 % of the gateway's CPU samples on the
/// HTTP workers, mimalloc 2.4 % (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives Dataloy VMS change notifications and relays them into Kafka and RabbitMQ.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; every key can be overridden by DATALOY_GATEWAY__SECTION__KEY.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("dataloy-gateway: {e}");
            return ExitCode::from(2);
        }
    };
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
            ExitCode::FAILURE
        }
    }
}
