//! `[tracing]`: OpenTelemetry spans, exported over OTLP (HTTP, protobuf) when `[tracing.otlp]` is
//! present, off otherwise. Trace context (`traceparent`/`tracestate`) is carried from requests
//! onto the queues either way; this section only decides whether the gateway's own spans are
//! recorded and sent.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a request that carries a `traceparent`
    /// follows its caller's sampled flag.
    pub sample_ratio: f64,
    /// Export over OTLP; absent: no spans are recorded at all.
    pub otlp: Option<OtlpSettings>,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            service_name: "dataloy-gateway".into(),
            sample_ratio: 1.0,
            otlp: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSettings {
    /// The collector's traces URL, used as given (OTLP/HTTP's default path is `/v1/traces`).
    pub endpoint: String,
    /// Longest wait for one export; spans the collector did not take are dropped, never queued
    /// without bound (the exporter holds at most 2048 spans).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra HTTP headers on every export, such as an `authorization` token; never logged.
    pub headers: BTreeMap<String, SecretString>,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
        }
    }
}

impl TracingSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.service_name.trim().is_empty() {
            return Err(invalid("tracing.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "tracing.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        let Some(otlp) = &self.otlp else {
            return Ok(());
        };
        let url = url::Url::parse(&otlp.endpoint).ok();
        if !url
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        {
            return Err(invalid(
                "tracing.otlp.endpoint",
                "must be an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces",
            ));
        }
        if otlp.timeout.is_zero() {
            return Err(invalid("tracing.otlp.timeout", "must be greater than 0"));
        }
        for (name, value) in &otlp.headers {
            if http_header_name(name).is_none() {
                return Err(invalid(
                    "tracing.otlp.headers",
                    format!("`{name}` is not an HTTP header name"),
                ));
            }
            let value = value.expose_secret();
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                // The value may be a secret: named, not shown.
                return Err(invalid(
                    "tracing.otlp.headers",
                    format!("the value of `{name}` holds a control character"),
                ));
            }
        }
        Ok(())
    }
}

/// An HTTP header name (RFC 9110 token), lowercased.
fn http_header_name(name: &str) -> Option<String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!name.is_empty() && name.bytes().all(token)).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(change: impl FnOnce(&mut TracingSettings)) -> Result<(), String> {
        let mut settings = TracingSettings {
            otlp: Some(OtlpSettings::default()),
            ..TracingSettings::default()
        };
        change(&mut settings);
        settings.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_valid_when_configured() {
        assert!(TracingSettings::default().otlp.is_none());
        assert_eq!(check(|_| {}), Ok(()));
    }

    type Change = Box<dyn FnOnce(&mut TracingSettings)>;

    #[test]
    fn each_mistake_names_its_key() {
        let cases: [(&str, Change); 7] = [
            (
                "tracing.service_name",
                Box::new(|s| s.service_name = " ".into()),
            ),
            ("tracing.sample_ratio", Box::new(|s| s.sample_ratio = 1.5)),
            (
                "tracing.sample_ratio",
                Box::new(|s| s.sample_ratio = f64::NAN),
            ),
            (
                "tracing.otlp.endpoint",
                Box::new(|s| s.otlp.as_mut().unwrap().endpoint = "collector:4318".into()),
            ),
            (
                "tracing.otlp.timeout",
                Box::new(|s| s.otlp.as_mut().unwrap().timeout = Duration::ZERO),
            ),
            (
                "tracing.otlp.headers",
                Box::new(|s| {
                    s.otlp
                        .as_mut()
                        .unwrap()
                        .headers
                        .insert("bad name".into(), SecretString::from("x"));
                }),
            ),
            (
                "tracing.otlp.headers",
                Box::new(|s| {
                    s.otlp
                        .as_mut()
                        .unwrap()
                        .headers
                        .insert("authorization".into(), SecretString::from("a\r\nx: y"));
                }),
            ),
        ];
        for (key, change) in cases {
            let error = check(change).expect_err(key);
            assert!(error.contains(&format!("`{key}`")), "{error}");
            assert!(!error.contains("x: y"), "no secret in {error}");
        }
    }
}
