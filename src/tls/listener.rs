//! TLS on a listener (`[server.tls]`, `[admin.tls]`): the certificate, its key and the optional
//! client CA are held behind a resolver and a verifier that the rustls configuration asks on
//! every handshake, so a reload swaps them for the next handshake while open connections keep
//! the session they negotiated. A reload reads the files, checks them like the start did
//! (parsable, key matches the certificate, certificate valid now) and, if anything is wrong,
//! keeps serving the certificate it has and says why.
//!
//! Reloads come from SIGHUP (`cli::hangup`) and from a watcher that reads the files every
//! `reload_interval` and reloads when their contents changed (a Kubernetes Secret update swaps
//! a symlink, which no modification time of the named path shows reliably).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::files::{self, Identity};
use super::{ListenerKeys, TlsError};
use crate::config::ListenerTlsSettings;
use crate::metrics::Metrics;

/// One listener's TLS material, reloadable.
pub struct ListenerTls {
    files: Files,
    reload_interval: Duration,
    certificate: Arc<CurrentCertificate>,
    client_verifier: Option<Arc<CurrentVerifier>>,
    /// Digest of the files' contents last loaded (or last refused, so a bad file is reported
    /// once, not on every check).
    seen: Mutex<[u8; 32]>,
    identity: RwLock<Identity>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// New files were loaded; the certificate now served.
    Changed(Identity),
    /// The files are as they were.
    Unchanged,
}

/// The files a listener's TLS table names, with their keys.
struct Files {
    keys: ListenerKeys,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

/// The material read from the files, checked.
struct Material {
    certified: CertifiedKey,
    identity: Identity,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    digest: [u8; 32],
}

impl ListenerTls {
    /// Loads and checks the files; an error names the key and the file.
    pub fn new(
        settings: &ListenerTlsSettings,
        keys: ListenerKeys,
    ) -> Result<ListenerTls, TlsError> {
        let files = Files {
            keys,
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
            client_ca_file: settings.client_ca_file.clone(),
        };
        let material = files.load()?;
        Ok(ListenerTls {
            files,
            reload_interval: settings.reload_interval,
            certificate: Arc::new(CurrentCertificate(RwLock::new(Arc::new(
                material.certified,
            )))),
            client_verifier: material
                .client_verifier
                .map(|verifier| Arc::new(CurrentVerifier(RwLock::new(verifier)))),
            seen: Mutex::new(material.digest),
            identity: RwLock::new(material.identity),
        })
    }

    /// `server` or `admin`.
    pub fn listener(&self) -> &'static str {
        self.files.keys.listener
    }

    /// The certificate served now.
    pub fn identity(&self) -> Identity {
        self.identity.read().clone()
    }

    /// The rustls configuration for the listener: every handshake asks the current
    /// certificate (and client CA).
    pub fn server_config(&self) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(files::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &self.client_verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    /// Reads the files again and, when they changed (or `force`), serves what they hold from
    /// the next handshake on. On an error the current certificate stays.
    pub fn reload(&self, force: bool) -> Result<Reloaded, TlsError> {
        let digest = self.files.digest();
        if !force && *self.seen.lock() == digest {
            return Ok(Reloaded::Unchanged);
        }
        // Refused contents count as seen: the watcher reports them once.
        *self.seen.lock() = digest;
        let material = self.files.load()?;
        if let (Some(current), Some(fresh)) = (&self.client_verifier, &material.client_verifier) {
            *current.0.write() = fresh.clone();
        }
        let identity = material.identity.clone();
        self.install(material);
        Ok(Reloaded::Changed(identity))
    }

    /// Checks the files every `reload_interval` for the life of the process (until aborted),
    /// logging what each reload did.
    pub fn watch(self: Arc<Self>, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.reload_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let this = self.clone();
                let outcome = tokio::task::spawn_blocking(move || this.reload(false)).await;
                if let Ok(outcome) = outcome {
                    self.report(&outcome, "file change", &metrics);
                }
            }
        })
    }

    /// Logs and counts a reload's outcome; `cause` is what triggered it.
    pub fn report(&self, outcome: &Result<Reloaded, TlsError>, cause: &str, metrics: &Metrics) {
        let listener = self.files.keys.listener;
        match outcome {
            Ok(Reloaded::Changed(_)) => metrics.tls_reload(listener, "changed"),
            Ok(Reloaded::Unchanged) => {}
            Err(_) => metrics.tls_reload(listener, "failed"),
        }
        match outcome {
            Ok(Reloaded::Changed(identity)) => {
                metrics.tls_certificate(listener, identity.not_after);
                tracing::info!(
                listener = self.files.keys.listener,
                cause,
                subject = %identity.subject,
                serial = %identity.serial,
                expires = %identity.expires(),
                "TLS certificate reloaded; new connections get it, open ones keep theirs"
                )
            }
            Ok(Reloaded::Unchanged) => tracing::debug!(
                listener = self.files.keys.listener,
                cause,
                "TLS certificate files unchanged"
            ),
            Err(e) => tracing::error!(
                listener = self.files.keys.listener,
                cause,
                error = %e,
                "TLS certificate not reloaded; the listener keeps serving the one it has"
            ),
        }
    }

    fn install(&self, material: Material) {
        *self.certificate.0.write() = Arc::new(material.certified);
        *self.identity.write() = material.identity;
        *self.seen.lock() = material.digest;
    }
}

impl Files {
    /// A digest of the files' contents; a file that cannot be read counts by its error, so a
    /// missing file is one state (reported once), not a change on every check.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for (key, path) in self.files() {
            match files::read(key, path) {
                Ok(bytes) => {
                    hasher.update([0]);
                    hasher.update((bytes.len() as u64).to_le_bytes());
                    hasher.update(&bytes);
                }
                Err(e) => {
                    hasher.update([1]);
                    hasher.update(e.to_string().as_bytes());
                }
            }
        }
        hasher.finalize().into()
    }

    fn files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            (self.keys.cert_file, Some(&self.cert_file)),
            (self.keys.key_file, Some(&self.key_file)),
            (self.keys.client_ca_file, self.client_ca_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, path)| path.map(|p| (key, p)))
    }

    fn load(&self) -> Result<Material, TlsError> {
        let digest = self.digest();
        let provider = files::provider();
        let (certified, identity) = files::certified_key(
            self.keys.cert_file,
            &self.cert_file,
            self.keys.key_file,
            &self.key_file,
            &provider,
        )?;
        let client_verifier = match &self.client_ca_file {
            None => None,
            Some(path) => {
                let key = self.keys.client_ca_file;
                let mut roots = RootCertStore::empty();
                let certs = files::certificates(key, path)?;
                let count = certs.len();
                for (index, cert) in certs.into_iter().enumerate() {
                    roots.add(cert).map_err(|e| {
                        TlsError::file(
                            key,
                            path,
                            format!(
                                "certificate {} of {count} cannot be a trust anchor: {e}",
                                index + 1
                            ),
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::file(key, path, e.to_string()))?;
                Some(verifier)
            }
        };
        Ok(Material {
            certified,
            identity,
            client_verifier,
            digest,
        })
    }
}

#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// The client CA's verifier, swapped on reload. It names no CAs in its certificate request (a
/// reloaded list could not be lent out): clients then present the certificate they have.
#[derive(Debug)]
struct CurrentVerifier(RwLock<Arc<dyn ClientCertVerifier>>);

impl CurrentVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().clone()
    }
}

impl ClientCertVerifier for CurrentVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
