//! Structured logging with tracing-subscriber: JSON lines for machines (the default) or pretty
//! text for people. `RUST_LOG` overrides the configured level. The server logs to stdout; a
//! subcommand logs to stderr, so that its own output on stdout stays parseable. The server's
//! filter can be replaced while it runs ([`LogReload`], what SIGHUP uses).
//!
//! With `[tracing.otlp]` the server also records OpenTelemetry spans (`spans`) and exports them
//! (`otel`). Without it nothing of that is installed: the subscriber is exactly the logging one,
//! and [`spans::exporting`] is false, so no span is made for OpenTelemetry at all.

#[cfg(feature = "otlp")]
pub mod otel;
pub mod spans;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

/// Replaces the installed filter with another `log.level`.
pub struct LogReload {
    handle: reload::Handle<EnvFilter, Registry>,
}

/// Why a new level was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("RUST_LOG is set and takes precedence over log.level")]
    OverriddenByEnvironment,
    #[error("`{0}` is not a tracing filter")]
    Invalid(String),
    #[error("the log subscriber is gone")]
    Gone,
}

impl LogReload {
    /// Applies `level` (a validated `log.level`) unless `RUST_LOG` decides the filter.
    pub fn apply(&self, level: &str) -> Result<(), ReloadError> {
        if env_filter().is_some() {
            return Err(ReloadError::OverriddenByEnvironment);
        }
        let filter = EnvFilter::try_new(level).map_err(|_| ReloadError::Invalid(level.into()))?;
        self.handle.reload(filter).map_err(|_| ReloadError::Gone)
    }
}

/// Installs the server's global subscriber (logging only); a second call (as in tests) is a
/// no-op and returns `None`.
pub fn init(settings: &LogSettings) -> Option<LogReload> {
    install(settings, &settings.level, std::io::stdout)
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

fn env_filter() -> Option<EnvFilter> {
    EnvFilter::try_from_default_env().ok()
}

fn filter(level: &str) -> EnvFilter {
    env_filter()
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

fn install<W>(settings: &LogSettings, level: &str, writer: W) -> Option<LogReload>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(filter(level));
    let (json, pretty) = match settings.format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            ),
            None,
        ),
        LogFormat::Pretty => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .pretty()
                    .with_writer(writer),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .try_init()
        .ok()
        .map(|()| LogReload { handle })
}
