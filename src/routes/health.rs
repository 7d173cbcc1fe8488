//! `/health/live` (the process answers) and `/health/ready` (a notification sent now would be made
//! durable: not shutting down, the spool writable — or, with the spool off, every sink up since
//! the sinks are then the durable step — and the dedup backend answering when its failure means
//! 503, `on_backend_error = "reject"`). Sink health is reported in the body and in `sink_up`,
//! never a reason to be unready while the spool absorbs an outage: taking the gateway out of its
//! Service during a broker outage would turn it into an ingest outage, and Dataloy deactivates a
//! subscription after five failed deliveries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use super::metrics::AdminState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

pub async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    let mut checks = Map::new();
    let mut ready = !state.shutting_down.load(Ordering::Relaxed);
    if !ready {
        checks.insert("shutdown".into(), Value::from("in progress"));
    }
    if let Some(spool) = &state.spool {
        let writable = spool.is_writable(state.max_body_bytes);
        ready &= writable;
        checks.insert(
            "spool".into(),
            Value::from(if writable { "ok" } else { "not writable" }),
        );
    }
    let dedup_usable = state.dedup.usable();
    if state.dedup_required {
        ready &= dedup_usable;
    }
    checks.insert(
        "dedup".into(),
        Value::from(match (dedup_usable, state.dedup_required) {
            (true, _) => "ok",
            (false, true) => "unavailable",
            (false, false) => "fallback",
        }),
    );
    for sink in &state.sinks {
        let up = sink.is_up();
        if state.spool.is_none() {
            ready &= up;
        }
        checks.insert(
            format!("sink:{}", sink.name()),
            Value::from(if up { "ok" } else { "down" }),
        );
    }
    if let Some(running) = &state.relay_running {
        let running = running.load(Ordering::Relaxed);
        checks.insert(
            "relay".into(),
            Value::from(if running { "ok" } else { "restarting" }),
        );
    }
    for source in state.sources.iter().filter(|s| s.required_for_readiness) {
        let connected = source.connected.load(Ordering::Relaxed);
        ready &= connected;
        checks.insert(
            format!("source:{}", source.name),
            Value::from(if connected { "ok" } else { "disconnected" }),
        );
    }
    let body = json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Set when shutdown starts, so the load balancer stops sending before the listener closes.
pub type ShuttingDown = Arc<AtomicBool>;
