//! The TLS tables: one shape for every client (`[dedup.tls]`, `[sinks.rabbitmq.tls]`,
//! `[sources.websocket.NAME.tls]`) and one for the listeners (`[server.tls]`, `[admin.tls]`).
//! Validation reads the files, so a wrong path, an unreadable file, a key that does not match its
//! certificate or an expired certificate stops the start with the key and the file named.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::tls::{ClientKeys, ClientTls, ListenerKeys, ListenerTls, TlsError};

/// A client's `tls` table. TLS itself is chosen by the URL's scheme (`rediss://`, `amqps://`,
/// `wss://`); this table says whom to trust and what to present.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file of CA certificates trusted besides the public web roots (a company CA).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (leaf first, then intermediates), for mTLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (unencrypted; keep it readable by the
    /// gateway only).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must hold (and the SNI sent), instead of the URL's host.
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Builds the client configuration once to check every file; `source` names a WebSocket
    /// source in the message.
    pub(super) fn validate(
        &self,
        keys: &ClientKeys,
        source: Option<&str>,
    ) -> Result<(), ConfigError> {
        ClientTls::new(self, keys)
            .map(drop)
            .map_err(|e| tls_invalid(e, source))
    }
}

/// `[server.tls]` / `[admin.tls]`: the listener speaks HTTPS only.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTlsSettings {
    /// PEM file of the server certificate, leaf first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM file of its private key (unencrypted).
    pub key_file: PathBuf,
    /// PEM file of the CAs whose client certificates are accepted; when set, every client must
    /// present one (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are read to see whether they changed (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for ListenerTlsSettings {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl ListenerTlsSettings {
    pub(super) fn validate(&self, keys: ListenerKeys) -> Result<(), ConfigError> {
        if self.cert_file.as_os_str().is_empty() {
            return Err(invalid(
                keys.cert_file,
                format!("is required in [{}.tls]", keys.listener),
            ));
        }
        if self.key_file.as_os_str().is_empty() {
            return Err(invalid(
                keys.key_file,
                format!("is required in [{}.tls]", keys.listener),
            ));
        }
        if self.reload_interval < Duration::from_secs(1) {
            return Err(invalid(
                match keys.listener {
                    "server" => "server.tls.reload_interval",
                    _ => "admin.tls.reload_interval",
                },
                "must be at least 1s",
            ));
        }
        ListenerTls::new(self, keys)
            .map(drop)
            .map_err(|e| tls_invalid(e, None))
    }
}

fn tls_invalid(error: TlsError, source: Option<&str>) -> ConfigError {
    let message = match source {
        Some(name) => format!("(source `{name}`) {}", error.message()),
        None => error.message(),
    };
    ConfigError::Invalid {
        key: error.key,
        message,
    }
}
