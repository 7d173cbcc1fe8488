//! OpenTelemetry export: the SDK's tracer provider behind `tracing-opentelemetry`, sampling
//! parent-based (a caller's sampled flag is followed; new traces by `tracing.sample_ratio`), spans
//! sent in batches by the SDK's own thread over OTLP/HTTP (protobuf). Installed only by the server
//! and only when `[tracing.otlp]` is configured; a test installs it with an in-memory exporter.
//!
//! Logging keeps its own filter (`log.level`, reloadable) and the span layer has its own: the
//! gateway's spans at INFO, its events at WARN and above (attached to the span they happen in).
//! So `log.level = "warn"` does not switch the spans off, and the spans do not turn on the logs.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use secrecy::ExposeSecret;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

use super::{filter, LogReload};
use crate::config::{LogFormat, LogSettings, OtlpSettings, TracingSettings};

/// The installed export; [`SpanExport::shutdown`] sends what is still queued.
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// Flushes the queued spans and stops the exporter, giving up after `within` (a collector
    /// that does not answer must not hold the process).
    pub fn shutdown(self, within: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(within) {
            tracing::warn!(error = %e, "OpenTelemetry spans not all exported at shutdown");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("cannot set up the OTLP exporter (tracing.otlp): {0}")]
    Exporter(String),
}

/// Installs logging and, when `tracing.otlp` is configured, span export to it. Returns the log
/// reload handle (as [`super::init`] does) and the export to shut down at the end.
pub fn init_server(
    log: &LogSettings,
    tracing: &TracingSettings,
) -> Result<(Option<LogReload>, Option<SpanExport>), OtelError> {
    let Some(otlp) = &tracing.otlp else {
        return Ok((super::init(log), None));
    };
    let exporter = otlp_exporter(otlp)?;
    let provider = provider(tracing).with_batch_exporter(exporter).build();
    Ok(install(log, provider, std::io::stdout))
}

/// Installs logging (to stdout) and span export through `exporter`, each span handed to it as
/// it ends: what the tests use, with an in-memory exporter. `None` for the export when a global
/// subscriber was installed already.
pub fn init_with_exporter<E>(
    log: &LogSettings,
    tracing: &TracingSettings,
    exporter: E,
) -> (Option<LogReload>, Option<SpanExport>)
where
    E: SpanExporter + 'static,
{
    let provider = provider(tracing).with_simple_exporter(exporter).build();
    install(log, provider, std::io::stdout)
}

fn provider(tracing: &TracingSettings) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(tracing.sample_ratio)));
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(tracing.service_name.clone())
                .build(),
        )
}

fn otlp_exporter(otlp: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, OtelError> {
    let headers: HashMap<String, String> = otlp
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.expose_secret().to_owned()))
        .collect();
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(otlp.timeout)
        .with_headers(headers)
        .build()
        // The error names the endpoint at most; header values are not in it.
        .map_err(|e| OtelError::Exporter(e.to_string()))
}

fn install<W>(
    log: &LogSettings,
    provider: SdkTracerProvider,
    writer: W,
) -> (Option<LogReload>, Option<SpanExport>)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let (log_filter, handle) = reload::Layer::new(filter(&log.level));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(writer)
            .boxed(),
    };
    let ours = |meta: &tracing::Metadata<'_>| {
        let wanted = if meta.is_span() {
            Level::INFO
        } else {
            Level::WARN
        };
        meta.target().starts_with("dataloy_gateway") && *meta.level() <= wanted
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dataloy-gateway"))
        .with_filter(filter_fn(ours))
        .boxed();
    let installed = tracing_subscriber::registry()
        .with(vec![logs.with_filter(log_filter).boxed(), spans])
        .try_init()
        .is_ok();
    if !installed {
        let _ = provider.shutdown();
        return (None, None);
    }
    super::spans::set_exporting();
    (Some(LogReload { handle }), Some(SpanExport { provider }))
}
