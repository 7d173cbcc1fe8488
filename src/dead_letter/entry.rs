//! The bytes of one dead-letter entry: a line of JSON metadata, a newline, the body as received.
//! The metadata carries a CRC-32 of the body, so a damaged entry is recognised, never replayed.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Attempts, Reason};
use crate::notification::Notification;
use crate::trace_context::TraceContext;

/// What is known about a dead letter besides its body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetterMeta {
    /// The entry's name in the store (not stored in the file; set when read).
    #[serde(skip)]
    pub name: String,
    pub id: String,
    pub sink: String,
    pub reason: Reason,
    /// The broker's (or sink's) own words.
    pub error: String,
    pub object_type: String,
    pub event_type: String,
    pub received_at_ms: u64,
    pub first_attempt_ms: u64,
    pub last_attempt_ms: u64,
    pub attempts: u32,
    pub body_bytes: u64,
    pub body_crc32: u32,
    /// The notification's trace context, so a replay continues its trace (absent in entries
    /// written before it was kept, and for notifications without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl DeadLetterMeta {
    pub(super) fn new(
        sink: &str,
        notification: &Notification,
        reason: Reason,
        error: &str,
        attempts: Attempts,
    ) -> Self {
        let env = &notification.envelope;
        Self {
            name: String::new(),
            id: env.id.to_string(),
            sink: sink.to_owned(),
            reason,
            error: error.to_owned(),
            object_type: env.object_type.clone(),
            event_type: env.event_type.as_str().to_owned(),
            received_at_ms: notification.received_at_ms,
            first_attempt_ms: attempts.first_ms,
            last_attempt_ms: attempts.last_ms,
            attempts: attempts.count,
            body_bytes: notification.body.len() as u64,
            body_crc32: crc32fast::hash(&notification.body),
            traceparent: notification.trace.as_ref().map(TraceContext::traceparent),
            tracestate: notification
                .trace
                .as_ref()
                .map(|t| t.tracestate().to_owned())
                .filter(|s| !s.is_empty()),
        }
    }

    /// The trace context the entry keeps; `None` when it has none, or none that is valid (the
    /// metadata line has no checksum of its own: it is checked again like a request's header).
    pub fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_stored(self.traceparent.as_deref(), self.tracestate.as_deref())
    }
}

/// A whole entry.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub meta: DeadLetterMeta,
    pub body: Bytes,
}

pub(super) fn encode(meta: &DeadLetterMeta, body: &[u8]) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(meta).expect("metadata serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(body);
    bytes
}

pub(super) fn decode(name: &str, bytes: &[u8]) -> Result<DeadLetter, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no metadata line")?;
    let mut meta: DeadLetterMeta =
        serde_json::from_slice(&bytes[..newline]).map_err(|e| format!("metadata: {e}"))?;
    let body = &bytes[newline + 1..];
    if body.len() as u64 != meta.body_bytes || crc32fast::hash(body) != meta.body_crc32 {
        return Err("body does not match its length and checksum".into());
    }
    meta.name = name.to_owned();
    Ok(DeadLetter {
        meta,
        body: Bytes::copy_from_slice(body),
    })
}
