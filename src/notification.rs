//! A notification as it travels from receipt through the spool to the sinks: the parsed envelope
//! for routing and labels, plus the body exactly as received.

use bytes::Bytes;

use crate::envelope::Envelope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub envelope: Envelope,
    /// The received body, relayed byte for byte.
    pub body: Bytes,
    /// When the gateway received it, in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

impl Notification {
    pub fn new(envelope: Envelope, body: Bytes) -> Self {
        Self {
            envelope,
            body,
            received_at_ms: unix_millis(),
        }
    }
}

/// Milliseconds since the Unix epoch, saturating at 0 for a clock set before 1970.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
