//! The command line. Without a subcommand the binary runs the gateway (`dataloy-gateway --config
//! FILE`); each subcommand group lives in its own file and gets the same validated settings.
//! Adding a group: a file with its `Args` and `run`, a variant in [`Command`], an arm in [`run`].

mod server;
mod subscriptions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;

/// Exit code of a command that ran but did not succeed.
const EXIT_FAILED: u8 = 1;
/// Exit code when the configuration cannot be used.
const EXIT_CONFIG: u8 = 2;

/// Receives Dataloy VMS change notifications and relays them into Kafka and RabbitMQ.
#[derive(Parser)]
#[command(name = "dataloy-gateway", version)]
pub struct Cli {
    /// TOML configuration file; every key can be overridden by DATALOY_GATEWAY__SECTION__KEY.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Without a subcommand, the gateway runs until SIGTERM/SIGINT.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The Dataloy webhook subscriptions the gateway keeps alive: plan, apply, list.
    Subscriptions(subscriptions::SubscriptionsArgs),
}

/// Loads the configuration and runs what the command line asks for.
pub async fn run(cli: Cli) -> ExitCode {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("dataloy-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        None => server::run(settings).await,
        Some(Command::Subscriptions(args)) => subscriptions::run(settings, args).await,
    }
}
