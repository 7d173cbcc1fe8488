//! Reading the PEM files a TLS table names: bounded in size, parsed with rustls' PEM reader, and
//! every problem reported with the configuration key and the file, never with the file's
//! contents (a key file is a secret; the PEM parser's own messages quote the lines they choke on).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// Largest PEM file read: a full public CA bundle is about 220 KB.
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes of `path`, named by `key` in errors; refuses what is not a regular file or is
/// larger than [`MAX_PEM_BYTES`] (a device or a FIFO would never end).
pub fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let fail = |problem: String| TlsError::file(key, path, problem);
    // Checked before opening: opening a FIFO would wait for a writer.
    let metadata =
        std::fs::metadata(path).map_err(|e| fail(format!("cannot be read: {}", io_reason(&e))))?;
    if !metadata.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| fail(format!("cannot be read: {}", io_reason(&e))))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot be read: {}", io_reason(&e))))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!(
            "is larger than {} MiB; a PEM file of certificates or a key is far smaller",
            MAX_PEM_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// The I/O error's kind in words, without the path (the caller names it once).
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

/// Every `CERTIFICATE` in the PEM file, in order; at least one.
pub fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(key, path, pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    for (index, cert) in certs.iter().enumerate() {
        if x509_parser::parse_x509_certificate(cert).is_err() {
            return Err(TlsError::file(
                key,
                path,
                format!(
                    "certificate {} of {} is not a valid X.509 certificate",
                    index + 1,
                    certs.len()
                ),
            ));
        }
    }
    Ok(certs)
}

/// The first private key in the PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(key, path)?;
    if memchr::memmem::find(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some() {
        return Err(TlsError::file(
            key,
            path,
            "holds an encrypted private key; give the key unencrypted, in a file only the \
             gateway can read"
                .into(),
        ));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
            }
            other => pem_problem(&other),
        };
        TlsError::file(key, path, problem)
    })
}

/// What is wrong with a PEM file, in words that quote nothing from it.
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => {
            "is not valid PEM: a section has no END line".into()
        }
        pem::Error::IllegalSectionStart { .. } => "is not valid PEM: a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "is not valid PEM: a section is not valid base64".into(),
        pem::Error::SectionTooLarge => "is not valid PEM: a section is too large".into(),
        pem::Error::NoItemsFound => "holds nothing of the expected kind".into(),
        _ => "is not valid PEM".into(),
    }
}

/// A certificate chain (leaf first) and its private key, checked to belong together and to be
/// valid now. `cert_key` and `key_key` name the two files' configuration keys.
pub fn certified_key(
    cert_key: &'static str,
    cert_path: &Path,
    key_key: &'static str,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Identity), TlsError> {
    let chain = certificates(cert_key, cert_path)?;
    let identity = Identity::of(&chain[0]);
    identity.check_valid_now(cert_key, cert_path)?;
    let private = private_key(key_key, key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|_| {
            TlsError::file(
                key_key,
                key_path,
                "is not a private key this gateway can sign with (RSA, ECDSA P-256/P-384 or Ed25519)"
                    .into(),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::file(
            key_key,
            key_path,
            format!(
                "does not belong to the first certificate in {cert_key} ({}); the leaf \
                 certificate must come first in that file",
                cert_path.display()
            ),
        ));
    }
    Ok((certified, identity))
}

/// What an operator needs to recognise a certificate in a log line: its subject, serial and
/// validity (no key material).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl Identity {
    /// Read from a certificate [`certificates`] already parsed once.
    fn of(cert: &CertificateDer<'_>) -> Identity {
        match x509_parser::parse_x509_certificate(cert) {
            Ok((_, parsed)) => Identity {
                subject: parsed.subject().to_string(),
                serial: parsed.raw_serial_as_string(),
                not_before: parsed.validity().not_before.timestamp(),
                not_after: parsed.validity().not_after.timestamp(),
            },
            Err(_) => Identity {
                subject: String::new(),
                serial: String::new(),
                not_before: i64::MIN,
                not_after: i64::MAX,
            },
        }
    }

    fn check_valid_now(&self, key: &'static str, path: &Path) -> Result<(), TlsError> {
        let now = unix_now();
        if now > self.not_after {
            return Err(TlsError::file(
                key,
                path,
                format!(
                    "holds a certificate that expired on {}",
                    rfc3339(self.not_after)
                ),
            ));
        }
        if now < self.not_before {
            return Err(TlsError::file(
                key,
                path,
                format!(
                    "holds a certificate that is valid only from {}",
                    rfc3339(self.not_before)
                ),
            ));
        }
        Ok(())
    }

    /// `not_after` as RFC 3339 text.
    pub fn expires(&self) -> String {
        rfc3339(self.not_after)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).map_or_else(
        || seconds.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The process's one crypto provider for rustls (ring, which lapin and reqwest already use).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
