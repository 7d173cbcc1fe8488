//! TLS for every connection the gateway opens or accepts, with one settings shape.
//!
//! Clients (Redis dedup, the RabbitMQ sink, WebSocket sources) take a `tls` table: `ca_file` is
//! added to the public web roots (a company CA), `cert_file` + `key_file` present a client
//! certificate (mTLS), `server_name` overrides the name checked in the server's certificate
//! (and sent as SNI). Verification cannot be turned off: a server with a private CA is trusted
//! by naming that CA. The gateway does the TLS handshake itself (rustls, ring) and hands the
//! encrypted stream to each protocol library, so every client behaves the same whatever that
//! library's own TLS options are. Kafka is the exception: librdkafka does its own TLS with
//! OpenSSL, configured by its `ssl.*` properties (README, Kafka).
//!
//! The listeners take `[server.tls]` / `[admin.tls]`: a certificate and key, reloaded on SIGHUP
//! and when the files change, without touching open connections (`listener`).

mod client;
pub mod files;
mod listener;

use std::path::{Path, PathBuf};

pub use client::ClientTls;
pub use listener::{ListenerTls, Reloaded};

/// The TLS failure behind an I/O error (a certificate not trusted, a name that does not match,
/// a client certificate refused), in rustls' words; `None` for any other error.
pub fn failure(error: &std::io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(tls.to_string())
}

/// Why a TLS table cannot be used: the configuration key, the file (when one is involved) and
/// what is wrong, never the file's contents.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{key}`{}: {problem}", file_suffix(.file))]
pub struct TlsError {
    pub key: &'static str,
    pub file: Option<PathBuf>,
    pub problem: String,
}

fn file_suffix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(" (file {})", f.display()))
        .unwrap_or_default()
}

impl TlsError {
    pub fn file(key: &'static str, path: &Path, problem: String) -> TlsError {
        TlsError {
            key,
            file: Some(path.to_owned()),
            problem,
        }
    }

    pub fn key(key: &'static str, problem: impl Into<String>) -> TlsError {
        TlsError {
            key,
            file: None,
            problem: problem.into(),
        }
    }

    /// The message without the key (for errors that carry the key separately).
    pub fn message(&self) -> String {
        match &self.file {
            Some(file) => format!("(file {}) {}", file.display(), self.problem),
            None => self.problem.clone(),
        }
    }
}

/// The configuration keys of one client `tls` table, so errors name the table they are about.
#[derive(Debug, Clone, Copy)]
pub struct ClientKeys {
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
    pub server_name: &'static str,
}

/// The configuration keys of one listener `tls` table.
#[derive(Debug, Clone, Copy)]
pub struct ListenerKeys {
    /// `server` or `admin`: names the listener in logs and metrics.
    pub listener: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
    pub client_ca_file: &'static str,
}

pub const DEDUP_KEYS: ClientKeys = ClientKeys {
    ca_file: "dedup.tls.ca_file",
    cert_file: "dedup.tls.cert_file",
    key_file: "dedup.tls.key_file",
    server_name: "dedup.tls.server_name",
};

pub const RABBITMQ_KEYS: ClientKeys = ClientKeys {
    ca_file: "sinks.rabbitmq.tls.ca_file",
    cert_file: "sinks.rabbitmq.tls.cert_file",
    key_file: "sinks.rabbitmq.tls.key_file",
    server_name: "sinks.rabbitmq.tls.server_name",
};

pub const WEBSOCKET_KEYS: ClientKeys = ClientKeys {
    ca_file: "sources.websocket.tls.ca_file",
    cert_file: "sources.websocket.tls.cert_file",
    key_file: "sources.websocket.tls.key_file",
    server_name: "sources.websocket.tls.server_name",
};

pub const SERVER_KEYS: ListenerKeys = ListenerKeys {
    listener: "server",
    cert_file: "server.tls.cert_file",
    key_file: "server.tls.key_file",
    client_ca_file: "server.tls.client_ca_file",
};

pub const ADMIN_KEYS: ListenerKeys = ListenerKeys {
    listener: "admin",
    cert_file: "admin.tls.cert_file",
    key_file: "admin.tls.key_file",
    client_ca_file: "admin.tls.client_ca_file",
};
