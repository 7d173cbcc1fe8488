//! Test PKI and TLS endpoints, made at test time: a CA (rcgen) that issues server and client
//! certificates into a temporary directory, and a TLS front (tokio-rustls) that terminates TLS
//! for a plain service on this machine (RabbitMQ, a Kafka-protocol broker), optionally asking
//! for a client certificate and recording whom it saw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, as PEM, and where they were written.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/NAME` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses), written as
    /// `dir/STEM.crt` and `dir/STEM.key`.
    pub fn server(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        self.issue(dir, stem, names, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, dir: &Path, stem: &str, name: &str) -> Issued {
        self.issue(
            dir,
            stem,
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
            None,
        )
    }

    /// A server certificate valid only between the two dates.
    pub fn server_valid(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Issued {
        self.issue(
            dir,
            stem,
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((not_before, not_after)),
        )
    }

    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        if let Some((not_before, not_after)) = validity {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_file: dir.join(format!("{stem}.crt")),
            key_file: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert_file, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_file, &issued.key_pem).unwrap();
        issued
    }
}

impl Issued {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// The certificate and key in one PEM (what `reqwest::Identity::from_pem` takes).
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}{}", self.cert_pem, self.key_pem).into_bytes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration presenting `server`, asking for a client certificate issued by
/// `client_ca` when given.
pub fn server_config(server: &Issued, client_ca: Option<&TestCa>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(server.chain(), server.key())
        .unwrap()
}

/// A rustls client configuration trusting only `ca`, presenting `identity` when given.
pub fn client_config(ca: &TestCa, identity: Option<&Issued>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain(), identity.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// A TLS front on 127.0.0.1: terminates TLS and forwards the bytes to a plain `backend`, as a
/// load balancer or stunnel would. Records the subject of every client certificate presented
/// and every failed handshake.
pub struct TlsFront {
    pub port: u16,
    pub client_subjects: Arc<Mutex<Vec<String>>>,
    pub failed_handshakes: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(backend: SocketAddr, config: rustls::ServerConfig) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, backend, config)
    }

    /// On a listener bound already (when the backend must know the front's port first).
    pub fn start_on(
        listener: TcpListener,
        backend: SocketAddr,
        config: rustls::ServerConfig,
    ) -> TlsFront {
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let client_subjects = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(Mutex::new(Vec::new()));
        let (subjects, failures) = (client_subjects.clone(), failed_handshakes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, subjects, failures) =
                    (acceptor.clone(), subjects.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    if let Some(certs) = tls.get_ref().1.peer_certificates() {
                        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
                        subjects.lock().unwrap().push(cert.subject().to_string());
                    }
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            port,
            client_subjects,
            failed_handshakes,
            task,
        }
    }

    pub fn subjects(&self) -> Vec<String> {
        self.client_subjects.lock().unwrap().clone()
    }

    pub fn failures(&self) -> Vec<String> {
        self.failed_handshakes.lock().unwrap().clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
