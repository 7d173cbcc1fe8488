//! `GET /metrics`: the Prometheus text exposition, with gauges that are read at scrape time
//! (spool depth and age, sink health, dedup size) refreshed first.

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use super::health::ShuttingDown;
use crate::dedup::Deduplicator;
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::spool::Spool;
use crate::websocket::SourceHealth;

/// What the admin listener reads.
pub struct AdminState {
    pub metrics: Metrics,
    pub spool: Option<Arc<Spool>>,
    pub sinks: Vec<Arc<dyn Sink>>,
    pub dedup: Arc<dyn Deduplicator>,
    /// Whether a failing dedup backend makes the gateway refuse notifications (and so unready).
    pub dedup_required: bool,
    pub sources: Vec<SourceHealth>,
    pub max_body_bytes: u64,
    pub shutting_down: ShuttingDown,
    /// The relay's running flag (false while it restarts after a panic); none without a spool.
    pub relay_running: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Counted again from its directory at each scrape: operator commands remove entries.
    pub dead_letters: Arc<crate::dead_letter::DeadLetterStore>,
}

pub async fn render(state: web::Data<AdminState>) -> HttpResponse {
    if let Some(spool) = &state.spool {
        spool.refresh_metrics();
    }
    for sink in &state.sinks {
        state.metrics.set_sink_up(sink.name(), sink.is_up());
    }
    if let Ok(bytes) = state.dead_letters.recount() {
        state.metrics.delivery.dead_letter_bytes.set(bytes as i64);
    }
    if let Some(entries) = state.dedup.entry_count() {
        state.metrics.dedup_entries.set(entries as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
