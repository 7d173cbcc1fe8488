//! The on-disk record format: a length and a CRC-32 header, then the sequence number, the
//! generation of the segment file it was written into, the envelope fields the sinks route by,
//! and the body. The CRC covers everything after the header, so a torn or corrupted record is
//! recognised on recovery and never relayed; the generation tells a record of the file's current
//! use from a stale one left by an earlier use (segment files are recycled, see `segment`).
//!
//! A flags byte says which optional fields the record holds: bit 0 the subscription key (always
//! in its place, zero without the flag), bit 1 the trace context, bit 2 the origin. The last two
//! come after the three text fields, in that order, only when their bit is set; so a record
//! without them is byte for byte what the format wrote before they existed, and those records
//! (in spools written before) decode as notifications without a trace. Any other bit is damage.
//! (A gateway older than the trace context reads a record with bit 1 or 2 as damaged: drain the
//! spool before a downgrade.)
//!
//! Payload: seq u64 | generation u64 | received ms u64 | event type u8 | dataloyObject i64 |
//! flags u8 | subscription key i64 | id, objectType, eventTime (u16 length + UTF-8 each) |
//! [trace id 16 | parent id 8 | trace flags u8 | tracestate (u16 length + ASCII)] |
//! [origin (u16 length + ASCII)] | body. Integers little-endian.

use bytes::Bytes;

use crate::envelope::{self, Envelope, EventType, NotificationId};
use crate::notification::Notification;
use crate::trace_context::{
    TraceContext, TraceParent, TraceState, MAX_TRACESTATE_LEN, TRACEPARENT_LEN,
};

/// Bytes before the payload: payload length (u32) and CRC-32 of the payload (u32).
pub const HEADER_LEN: usize = 8;
/// Largest payload a valid record can have; anything larger is corruption.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;
/// The fixed fields of a payload: seq, generation, receive time, event type, object, and
/// subscription key with its flag, and three text lengths.
const MIN_PAYLOAD_LEN: usize = 8 + 8 + 8 + 1 + 8 + 1 + 8 + 3 * 2;

/// Flag bits.
const HAS_SUBSCRIPTION_KEY: u8 = 0x01;
const HAS_TRACE: u8 = 0x02;
const HAS_ORIGIN: u8 = 0x04;
const KNOWN_FLAGS: u8 = HAS_SUBSCRIPTION_KEY | HAS_TRACE | HAS_ORIGIN;

/// Bytes the trace context takes besides its `tracestate` text.
const TRACE_FIXED_LEN: usize = 16 + 8 + 1 + 2;

/// A notification read back from the spool, with its position in the log.
#[derive(Debug, Clone)]
pub struct SpoolRecord {
    pub seq: u64,
    pub notification: Notification,
}

/// A notification the record format cannot represent. Envelope validation keeps every field far
/// below these limits; the encoder checks anyway, and refuses rather than truncates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field `{field}` is {len} bytes; a spool record holds at most {MAX_TEXT_LEN}")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("record payload would be {len} bytes; a spool record holds at most {MAX_PAYLOAD_LEN}")]
    TooLarge { len: usize },
    /// A bounded field (tracestate, origin) past its bound, or not in the form the decoder
    /// takes back.
    #[error("field `{field}` ({len} bytes) is not one a spool record holds (at most {max} bytes, in its checked form)")]
    Unrepresentable {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Longest text field (id, object type, event time) a record can hold: its length is a `u16`.
pub const MAX_TEXT_LEN: usize = u16::MAX as usize;

/// Checks that a notification with these field and body lengths fits a record (`optional_len`:
/// the bytes of its optional fields); pure, so that the limits can be tested at every width
/// boundary without allocating the bytes.
pub fn check_lengths(
    text_lens: [(&'static str, usize); 3],
    optional_len: usize,
    body_len: usize,
) -> Result<(), EncodeError> {
    let mut payload = MIN_PAYLOAD_LEN + optional_len;
    for (field, len) in text_lens {
        if len > MAX_TEXT_LEN {
            return Err(EncodeError::FieldTooLong { field, len });
        }
        payload += len;
    }
    match payload.checked_add(body_len) {
        Some(len) if len <= MAX_PAYLOAD_LEN => Ok(()),
        Some(len) => Err(EncodeError::TooLarge { len }),
        None => Err(EncodeError::TooLarge { len: usize::MAX }),
    }
}

/// The optional fields' flag bits and encoded length, refusing what the decoder would not take
/// back.
fn optional_fields(notification: &Notification) -> Result<(u8, usize), EncodeError> {
    let (mut flags, mut len) = (0, 0);
    if let Some(trace) = &notification.trace {
        let parent = &trace.parent;
        if TraceParent::new(parent.trace_id, parent.parent_id, parent.flags).is_none() {
            return Err(EncodeError::Unrepresentable {
                field: "traceparent",
                len: TRACEPARENT_LEN,
                max: TRACEPARENT_LEN,
            });
        }
        let state = trace.state.as_str();
        if TraceState::from_canonical(state).is_none() {
            return Err(EncodeError::Unrepresentable {
                field: "tracestate",
                len: state.len(),
                max: MAX_TRACESTATE_LEN,
            });
        }
        flags |= HAS_TRACE;
        len += TRACE_FIXED_LEN + state.len();
    }
    if let Some(origin) = &notification.envelope.origin {
        if !envelope::is_origin(origin) {
            return Err(EncodeError::Unrepresentable {
                field: "origin",
                len: origin.len(),
                max: envelope::MAX_ORIGIN_LEN,
            });
        }
        flags |= HAS_ORIGIN;
        len += 2 + origin.len();
    }
    Ok((flags, len))
}

/// Appends the encoded record to `out`; `generation` is that of the segment it goes into. On an
/// error `out` is left as it was.
pub fn encode(
    seq: u64,
    generation: u64,
    notification: &Notification,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let env = &notification.envelope;
    let texts = [
        ("id", env.id.as_str()),
        ("objectType", env.object_type.as_str()),
        ("eventTime", env.event_time.as_str()),
    ];
    let (mut flags, optional_len) = optional_fields(notification)?;
    check_lengths(
        texts.map(|(field, text)| (field, text.len())),
        optional_len,
        notification.body.len(),
    )?;
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&notification.received_at_ms.to_le_bytes());
    out.push(env.event_type.as_str().as_bytes()[0]);
    out.extend_from_slice(&env.dataloy_object.to_le_bytes());
    if env.subscription_key.is_some() {
        flags |= HAS_SUBSCRIPTION_KEY;
    }
    out.push(flags);
    out.extend_from_slice(&env.subscription_key.unwrap_or(0).to_le_bytes());
    for (_, text) in texts {
        let len = u16::try_from(text.len()).expect("checked by check_lengths");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    if let Some(trace) = &notification.trace {
        out.extend_from_slice(&trace.parent.trace_id);
        out.extend_from_slice(&trace.parent.parent_id);
        out.push(trace.parent.flags);
        put_short_text(out, trace.state.as_str());
    }
    if let Some(origin) = &env.origin {
        put_short_text(out, origin);
    }
    out.extend_from_slice(&notification.body);
    let payload_len =
        u32::try_from(out.len() - start - HEADER_LEN).expect("checked by check_lengths");
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A text the optional fields bound far below `u16::MAX`.
fn put_short_text(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("bounded by optional_fields");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Why bytes at some offset are not a record.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record claims: a torn write, or not yet read.
    Incomplete { needed: usize },
    /// The bytes are not a valid record.
    Corrupt(&'static str),
    /// A valid record from an earlier use of a recycled segment file: the end of the current data.
    Stale,
}

/// Decodes the record at the start of `buf`, which belongs to a segment of `generation`; returns
/// it and its encoded length.
pub fn decode(buf: &[u8], generation: u64) -> Result<(SpoolRecord, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete { needed: HEADER_LEN });
    }
    let payload_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&payload_len) {
        return Err(DecodeError::Corrupt("implausible record length"));
    }
    let total = HEADER_LEN + payload_len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete { needed: total });
    }
    let payload = &buf[HEADER_LEN..total];
    if crc32fast::hash(payload) != crc {
        return Err(DecodeError::Corrupt("checksum mismatch"));
    }
    let mut cursor = Cursor(payload);
    let seq = cursor.u64()?;
    if cursor.u64()? != generation {
        return Err(DecodeError::Stale);
    }
    let received_at_ms = cursor.u64()?;
    let event_type = cursor
        .take(1)
        .ok()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(EventType::from_code)
        .ok_or(DecodeError::Corrupt("bad event type"))?;
    let dataloy_object = cursor.u64()? as i64;
    // Only what `encode` writes decodes: known flags, and a zero key without its flag.
    let flags = cursor.take(1)?[0];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Corrupt("bad flags"));
    }
    let has_subscription_key = flags & HAS_SUBSCRIPTION_KEY != 0;
    let subscription_key = cursor.u64()? as i64;
    if !has_subscription_key && subscription_key != 0 {
        return Err(DecodeError::Corrupt("subscription key without its flag"));
    }
    let id = cursor.text()?;
    let object_type = cursor.text()?;
    let event_time = cursor.text()?;
    let id = NotificationId::parse(&id).map_err(|_| DecodeError::Corrupt("bad id"))?;
    let trace = if flags & HAS_TRACE != 0 {
        let trace_id = cursor.take(16)?.try_into().expect("16 bytes");
        let parent_id = cursor.take(8)?.try_into().expect("8 bytes");
        let trace_flags = cursor.take(1)?[0];
        let parent = TraceParent::new(trace_id, parent_id, trace_flags)
            .ok_or(DecodeError::Corrupt("bad traceparent"))?;
        let state = TraceState::from_canonical(&cursor.text()?)
            .ok_or(DecodeError::Corrupt("bad tracestate"))?;
        Some(TraceContext { parent, state })
    } else {
        None
    };
    let origin = if flags & HAS_ORIGIN != 0 {
        let origin = cursor.text()?;
        if !envelope::is_origin(&origin) {
            return Err(DecodeError::Corrupt("bad origin"));
        }
        Some(origin)
    } else {
        None
    };
    let body = Bytes::copy_from_slice(cursor.0);
    let envelope = Envelope {
        id,
        event_time,
        object_type,
        event_type,
        dataloy_object,
        subscription_key: has_subscription_key.then_some(subscription_key),
        origin,
    };
    let notification = Notification {
        envelope,
        body,
        received_at_ms,
        trace,
    };
    Ok((SpoolRecord { seq, notification }, total))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Corrupt("record shorter than its fields"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Corrupt("field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Notification {
        let body = Bytes::from_static(include_bytes!(
            "../../tests/fixtures/bunker-order-updated.json"
        ));
        Notification::new(Envelope::parse(&body).unwrap(), body)
    }

    #[test]
    fn round_trip() {
        let n = sample();
        let mut buf = Vec::new();
        encode(42, 7, &n, &mut buf).unwrap();
        let (record, len) = decode(&buf, 7).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(record.seq, 42);
        assert_eq!(record.notification, n);
    }

    #[test]
    fn a_record_of_another_generation_is_stale_not_corrupt() {
        let mut buf = Vec::new();
        encode(42, 7, &sample(), &mut buf).unwrap();
        assert_eq!(decode(&buf, 8).unwrap_err(), DecodeError::Stale);
    }

    #[test]
    fn torn_and_flipped_records_are_detected() {
        let mut buf = Vec::new();
        encode(1, 7, &sample(), &mut buf).unwrap();
        assert!(matches!(
            decode(&buf[..buf.len() - 1], 7),
            Err(DecodeError::Incomplete { .. })
        ));
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert_eq!(
            decode(&buf, 7).unwrap_err(),
            DecodeError::Corrupt("checksum mismatch")
        );
    }

    #[test]
    fn lengths_are_refused_at_every_width_boundary_not_wrapped() {
        let ok =
            |id, body| check_lengths([("id", id), ("objectType", 8), ("eventTime", 19)], 0, body);
        for len in [255, 256, 65_535] {
            assert_eq!(ok(len, 0), Ok(()), "{len}");
        }
        for len in [65_536, 70_000, 1 << 32] {
            assert_eq!(
                ok(len, 0),
                Err(EncodeError::FieldTooLong { field: "id", len }),
                "{len}"
            );
        }
        let room = MAX_PAYLOAD_LEN - MIN_PAYLOAD_LEN - 8 - 19;
        assert_eq!(ok(0, room), Ok(()));
        assert!(matches!(ok(0, room + 1), Err(EncodeError::TooLarge { .. })));
        assert!(matches!(ok(0, 1 << 32), Err(EncodeError::TooLarge { .. })));
        assert!(matches!(
            ok(0, usize::MAX),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_over_long_field_is_refused_and_leaves_the_buffer_alone() {
        let mut n = sample();
        n.envelope.event_time = " ".repeat(70_000);
        let mut buf = vec![1, 2, 3];
        assert_eq!(
            encode(1, 7, &n, &mut buf),
            Err(EncodeError::FieldTooLong {
                field: "eventTime",
                len: 70_000
            })
        );
        assert_eq!(buf, [1, 2, 3]);
    }

    #[test]
    fn fields_just_under_the_text_limit_round_trip() {
        let mut n = sample();
        n.envelope.event_time = "0".repeat(MAX_TEXT_LEN);
        let mut buf = Vec::new();
        encode(3, 7, &n, &mut buf).unwrap();
        let (record, len) = decode(&buf, 7).unwrap();
        assert_eq!((record.notification, len), (n, buf.len()));
    }

    /// Found by fuzzing: a checksummed record whose flag byte is neither 0 nor 1 decoded to a
    /// notification that re-encoded to other bytes.
    #[test]
    fn only_the_subscription_flags_encode_writes_decode() {
        let mut n = sample();
        n.envelope.subscription_key = None;
        let mut buf = Vec::new();
        encode(1, 7, &n, &mut buf).unwrap();
        let flag_at = HEADER_LEN + 8 + 8 + 8 + 1 + 8;
        for (flag, key) in [(0xffu8, 0u64), (0, 5)] {
            let mut bad = buf.clone();
            bad[flag_at] = flag;
            bad[flag_at + 1..flag_at + 9].copy_from_slice(&key.to_le_bytes());
            let crc = crc32fast::hash(&bad[HEADER_LEN..]);
            bad[4..8].copy_from_slice(&crc.to_le_bytes());
            assert!(
                matches!(decode(&bad, 7), Err(DecodeError::Corrupt(_))),
                "flag {flag} key {key}"
            );
        }
        assert!(decode(&buf, 7).is_ok());
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn traced() -> Notification {
        let trace = TraceContext::from_stored(Some(TRACEPARENT), Some("rojo=1,t@s=x y")).unwrap();
        sample().with_trace(trace)
    }

    #[test]
    fn trace_context_and_origin_round_trip() {
        let n = traced();
        assert_eq!(n.envelope.origin.as_deref(), Some("http://localhost:8080"));
        let mut buf = Vec::new();
        encode(9, 7, &n, &mut buf).unwrap();
        let (record, len) = decode(&buf, 7).unwrap();
        assert_eq!((record.notification, len), (n, buf.len()));
    }

    /// A record as the format was written before it had optional fields, laid out by hand (not
    /// by `encode`): it decodes, without a trace or origin, and `encode` still writes exactly
    /// these bytes for such a notification.
    #[test]
    fn a_record_of_the_format_before_optional_fields_decodes() {
        let body = br#"{"id":"old-1"}"#;
        let mut payload = Vec::new();
        payload.extend_from_slice(&5u64.to_le_bytes());
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        payload.push(b'C');
        payload.extend_from_slice(&42i64.to_le_bytes());
        payload.push(1);
        payload.extend_from_slice(&243885046i64.to_le_bytes());
        for text in ["old-1", "PortCall", "2016-09-14T13:37:26"] {
            payload.extend_from_slice(&(text.len() as u16).to_le_bytes());
            payload.extend_from_slice(text.as_bytes());
        }
        payload.extend_from_slice(body);
        let mut old = (payload.len() as u32).to_le_bytes().to_vec();
        old.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        old.extend_from_slice(&payload);

        let (record, len) = decode(&old, 7).unwrap();
        assert_eq!(len, old.len());
        let n = &record.notification;
        assert_eq!((record.seq, n.envelope.id.as_str()), (5, "old-1"));
        assert_eq!(n.envelope.subscription_key, Some(243885046));
        assert_eq!((&n.trace, &n.envelope.origin), (&None, &None));
        assert_eq!(&n.body[..], body);
        let mut again = Vec::new();
        encode(5, 7, n, &mut again).unwrap();
        assert_eq!(again, old);
    }

    /// The optional fields are checked like the rest: a checksummed record with an unknown
    /// flag, a zero trace id, a tracestate or origin the gateway would never keep is damage.
    #[test]
    fn optional_fields_decode_only_as_encode_writes_them() {
        let mut buf = Vec::new();
        encode(1, 7, &traced(), &mut buf).unwrap();
        let flags_at = HEADER_LEN + 8 + 8 + 8 + 1 + 8;
        let trace_at = flags_at + 1 + 8 + (2 + "1573335-244070007".len()) + (2 + 8) + (2 + 19);
        let reseal = |bad: &mut Vec<u8>| {
            let crc = crc32fast::hash(&bad[HEADER_LEN..]);
            bad[4..8].copy_from_slice(&crc.to_le_bytes());
        };
        let state_at = trace_at + 16 + 8 + 1 + 2;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut unknown_flag = buf.clone();
        unknown_flag[flags_at] |= 0x08;
        cases.push(("unknown flag", unknown_flag));
        let mut zero_trace = buf.clone();
        zero_trace[trace_at..trace_at + 16].fill(0);
        cases.push(("zero trace id", zero_trace));
        let mut odd_flags = buf.clone();
        odd_flags[trace_at + 24] = 0x02;
        cases.push(("trace flags", odd_flags));
        let mut upper_state = buf.clone();
        upper_state[state_at] = b'R';
        cases.push(("tracestate", upper_state));
        let origin_at = state_at + "rojo=1,t@s=x y".len() + 2;
        let mut spaced_origin = buf.clone();
        spaced_origin[origin_at] = b' ';
        cases.push(("origin", spaced_origin));
        for (what, mut bad) in cases {
            reseal(&mut bad);
            assert!(
                matches!(decode(&bad, 7), Err(DecodeError::Corrupt(_))),
                "{what}"
            );
        }
        assert!(decode(&buf, 7).is_ok());
    }

    #[test]
    fn the_encoder_refuses_a_trace_context_it_could_not_read_back() {
        let mut n = traced();
        n.trace.as_mut().unwrap().parent.trace_id = [0; 16];
        let mut buf = vec![1];
        assert!(matches!(
            encode(1, 7, &n, &mut buf),
            Err(EncodeError::Unrepresentable {
                field: "traceparent",
                ..
            })
        ));
        let mut n = traced();
        n.envelope.origin = Some("x".repeat(256));
        assert!(matches!(
            encode(1, 7, &n, &mut buf),
            Err(EncodeError::Unrepresentable {
                field: "origin",
                ..
            })
        ));
        assert_eq!(buf, [1]);
    }
}
