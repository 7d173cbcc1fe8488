//! Config target: arbitrary TOML text and environment overrides into the real loader. It must
//! answer with settings or an error that names what is wrong (a key, or a place in the TOML),
//! never panic.

use crate::config::{ConfigError, Settings};

/// The bytes before the first NUL are the TOML file; the lines after it are environment
/// variables `NAME=value` (the loader only reads `DATALOY_GATEWAY__…` ones).
pub fn config_load(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    match Settings::load_toml_with_env(toml, env) {
        Ok(settings) => {
            assert!(settings.validate().is_ok(), "loaded settings stay valid")
        }
        Err(ConfigError::Invalid { key, message }) => {
            assert!(!key.is_empty() && !message.is_empty(), "{key}: {message}");
        }
        Err(ConfigError::Syntax { line, message, .. }) => {
            assert!(line >= 1 && !message.is_empty(), "line {line}: {message}");
        }
        Err(error @ ConfigError::Load(_)) => {
            let message = error.to_string();
            assert!(
                names_what_is_wrong(&message),
                "an error that names nothing: {message}"
            );
        }
    }
}

/// Whether a load error points somewhere: a key or field (in backticks or quotes, as serde and
/// the config crate write them), or a line of the TOML.
fn names_what_is_wrong(message: &str) -> bool {
    message.contains('`') || message.contains('"') || message.contains("line ")
}
