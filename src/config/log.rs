//! `[log]`: the format of log lines and the tracing filter, validated at start-up. A filter that
//! does not mean what an operator wrote (`verbose`, `information`) is refused naming the key,
//! instead of quietly logging at some other level.

use serde::Deserialize;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `dataloy_gateway=debug`; `RUST_LOG` takes precedence.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

impl LogSettings {
    /// `log.level` must parse as a filter, and each of its directives must end in a level:
    /// tracing would read a bare word such as `verbose` as the name of a module to log in full,
    /// and the gateway, which has no module of that name, would log nothing at all.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let level = self.level.trim();
        let refuse = |why: String| {
            invalid(
                "log.level",
                format!(
                    "`{level}` {why}; use a level (trace, debug, info, warn, error, off) or \
                     directives such as `info,dataloy_gateway=debug`"
                ),
            )
        };
        if level.is_empty() {
            return Err(refuse("is empty".into()));
        }
        if let Err(e) = EnvFilter::builder().parse(level) {
            return Err(refuse(format!("is not a tracing filter ({e})")));
        }
        for directive in level.split(',').map(str::trim) {
            let bare = !directive.contains('=') && !directive.contains('[');
            if bare && directive.parse::<LevelFilter>().is_err() {
                return Err(refuse(format!("has `{directive}`, which is not a level")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(level: &str) -> Result<(), ConfigError> {
        LogSettings {
            level: level.into(),
            ..LogSettings::default()
        }
        .validate()
    }

    #[test]
    fn levels_and_directives_are_accepted() {
        for level in [
            "info",
            "DEBUG",
            "warn",
            "off",
            "info,dataloy_gateway=debug",
            "dataloy_gateway::relay=trace",
            "info,lapin=warn",
        ] {
            assert!(check(level).is_ok(), "{level}");
        }
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_naming_the_key() {
        for level in ["verbose", "information", "", "info,verbose", "x=loud"] {
            let error = check(level).expect_err(level).to_string();
            assert!(error.contains("`log.level`"), "{error}");
        }
    }
}
