//! The command line. Without a subcommand the binary runs the gateway (`dataloy-gateway --config
//! FILE`); each subcommand group lives in its own file and gets the same validated settings.
//! Adding a group: a file with its `Args` and `run`, a variant in [`Command`], an arm in [`run`].

mod dead_letters;
mod hangup;
mod server;
mod spool;
mod subscriptions;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

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
    /// Without a subcommand, the gateway runs until SIGTERM/SIGINT (SIGHUP reloads log.level).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The Dataloy webhook subscriptions the gateway keeps alive: plan, apply, list.
    Subscriptions(subscriptions::SubscriptionsArgs),
    /// Notifications a sink refused for good: list, show, replay, purge.
    #[command(name = "dead-letters")]
    DeadLetters(dead_letters::DeadLettersArgs),
    /// The spool directory: per-sink backlog, segments, quarantine, dead letters.
    Spool(spool::SpoolArgs),
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
        None => server::run(settings, cli.config).await,
        Some(Command::Subscriptions(args)) => subscriptions::run(settings, args).await,
        Some(Command::DeadLetters(args)) => dead_letters::run(settings, args).await,
        Some(Command::Spool(args)) => spool::run(settings, args).await,
    }
}

/// Writes `value` as JSON, or the text `human` makes. A closed stdout is not an error worth
/// reporting.
pub(crate) fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    let text = if json {
        let mut text = serde_json::to_string_pretty(value).expect("serializable");
        text.push('\n');
        text
    } else {
        human()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
}
