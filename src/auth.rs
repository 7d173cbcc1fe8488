//! Authentication of Dataloy's requests on the notification listener: HTTP Basic or a bearer
//! token, compared in constant time (over SHA-256 digests, so the length does not leak either).
//! Secrets are held as `SecretString` and never logged.

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use base64::Engine;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, AuthSettings};

pub enum Authenticator {
    Open,
    /// Digest of `username:password`.
    Basic([u8; 32]),
    /// Digest of the token.
    Bearer([u8; 32]),
}

impl Authenticator {
    pub fn from_settings(settings: &AuthSettings) -> Self {
        match settings.mode {
            AuthMode::None => Authenticator::Open,
            AuthMode::Basic => {
                let user = settings.username.as_deref().unwrap_or_default();
                let password = settings
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret())
                    .unwrap_or_default();
                Authenticator::Basic(digest(format!("{user}:{password}").as_bytes()))
            }
            AuthMode::Bearer => {
                let token = settings
                    .token
                    .as_ref()
                    .map(|t| t.expose_secret())
                    .unwrap_or_default();
                Authenticator::Bearer(digest(token.as_bytes()))
            }
        }
    }

    /// Whether the request carries the configured credentials.
    pub fn verify(&self, headers: &HeaderMap) -> bool {
        let (expected, scheme) = match self {
            Authenticator::Open => return true,
            Authenticator::Basic(expected) => (expected, "basic"),
            Authenticator::Bearer(expected) => (expected, "bearer"),
        };
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((given_scheme, credentials)) = value.trim().split_once(' ') else {
            return false;
        };
        if !given_scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        let credentials = credentials.trim();
        let given = match self {
            Authenticator::Basic(_) => {
                match base64::engine::general_purpose::STANDARD.decode(credentials) {
                    Ok(decoded) => digest(&decoded),
                    Err(_) => return false,
                }
            }
            _ => digest(credentials.as_bytes()),
        };
        given.ct_eq(expected).into()
    }

    /// The `WWW-Authenticate` challenge for a 401, if any.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Authenticator::Open => None,
            Authenticator::Basic(_) => Some("Basic realm=\"dataloy-gateway\""),
            Authenticator::Bearer(_) => Some("Bearer realm=\"dataloy-gateway\""),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
