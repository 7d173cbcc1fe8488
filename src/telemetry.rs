//! Structured logging with tracing-subscriber: JSON lines for machines (the default) or pretty
//! text for people. `RUST_LOG` overrides the configured level. The server logs to stdout; a
//! subcommand logs to stderr, so that its own output on stdout stays parseable.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the server's global subscriber; a second call (as in tests) is a no-op.
pub fn init(settings: &LogSettings) {
    install(settings, &settings.level, std::io::stdout);
}

/// Installs a subcommand's subscriber: warnings and errors (unless `RUST_LOG` says otherwise),
/// on stderr. lapin's warning for a returned message dumps the whole body; a command reports
/// the refusal itself.
pub fn init_for_command(settings: &LogSettings) {
    install(
        settings,
        "warn,lapin::returned_messages=error",
        std::io::stderr,
    );
}

fn install<W>(settings: &LogSettings, level: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
}
