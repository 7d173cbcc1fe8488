//! A notification as it travels from receipt through the spool to the sinks: the parsed envelope
//! for routing and labels, the body exactly as received, and the trace it belongs to.

use bytes::Bytes;

use crate::envelope::Envelope;
use crate::trace_context::TraceContext;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub envelope: Envelope,
    /// The received body, relayed byte for byte.
    pub body: Bytes,
    /// When the gateway received it, in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The trace its messages continue: the one the request carried (or the gateway's span for
    /// it, when spans are exported), or a new one. `None` only for notifications stored before
    /// the gateway kept trace context.
    pub trace: Option<TraceContext>,
}

impl Notification {
    pub fn new(envelope: Envelope, body: Bytes) -> Self {
        Self {
            envelope,
            body,
            received_at_ms: unix_millis(),
            trace: None,
        }
    }

    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }
}

/// Milliseconds since the Unix epoch, saturating at 0 for a clock set before 1970.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
