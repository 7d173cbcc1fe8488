//! The client side: one rustls configuration per `tls` table (public web roots plus `ca_file`,
//! an optional client certificate), and the handshake over a stream the caller connected.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::files::{self, Identity};
use super::{ClientKeys, TlsError};
use crate::config::TlsSettings;

/// A client TLS configuration, built once at start-up and shared by every connection.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// The client certificate presented, if any.
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_certificate",
                &self.identity.as_ref().map(|i| &i.subject),
            )
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads and checks the files `settings` names; errors name the key (`keys`) and the file.
    pub fn new(settings: &TlsSettings, keys: &ClientKeys) -> Result<ClientTls, TlsError> {
        let provider = files::provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &settings.ca_file {
            let certs = files::certificates(keys.ca_file, path)?;
            let count = certs.len();
            for (index, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    TlsError::file(
                        keys.ca_file,
                        path,
                        format!(
                            "certificate {} of {count} cannot be a trust anchor: {e}",
                            index + 1
                        ),
                    )
                })?;
            }
        }
        let server_name = match settings.server_name.as_deref() {
            None => None,
            Some(name) => Some(ServerName::try_from(name.trim().to_owned()).map_err(|_| {
                TlsError::key(
                    keys.server_name,
                    "is not a DNS name or IP address (e.g. broker.internal)",
                )
            })?),
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::key(keys.ca_file, e.to_string()))?
            .with_root_certificates(roots);
        let (config, identity) = match (&settings.cert_file, &settings.key_file) {
            (None, None) => (builder.with_no_client_auth(), None),
            (Some(cert), Some(key)) => {
                let (certified, identity) =
                    files::certified_key(keys.cert_file, cert, keys.key_file, key, &provider)?;
                let resolver = SingleClientCert(Arc::new(certified));
                (
                    builder.with_client_cert_resolver(Arc::new(resolver)),
                    Some(identity),
                )
            }
            (Some(_), None) => {
                return Err(TlsError::key(
                    keys.key_file,
                    format!("is required with {}", keys.cert_file),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::key(
                    keys.cert_file,
                    format!("is required with {}", keys.key_file),
                ))
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            identity,
        })
    }

    /// The rustls configuration, for libraries that take one.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The name to verify the server's certificate against: the override, else `host` (the
    /// host of the URL; an IPv6 address may come in brackets).
    pub fn server_name(&self, host: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the host is not a valid TLS server name; set server_name in the tls table",
            )
        })
    }

    /// [`ClientTls::server_name`] as text, for libraries that take a name and make it a
    /// `ServerName` themselves; `host` when it is no valid name (the handshake then says so).
    pub fn server_name_text(&self, host: &str) -> String {
        match self.server_name(host) {
            Ok(name) => name.to_str().into_owned(),
            Err(_) => host.to_owned(),
        }
    }

    /// The TLS handshake over `stream` (already connected to `host`).
    pub async fn connect<S>(&self, host: &str, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.server_name(host)?;
        TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}

/// Presents the one configured client certificate whatever the server asks for: a server that
/// names other CAs in its request refuses it with a clear alert, which is what to report.
#[derive(Debug)]
struct SingleClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for SingleClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
