//! The on-disk record format: a length and a CRC-32 header, then the sequence number, the
//! generation of the segment file it was written into, the envelope fields the sinks route by,
//! and the body. The CRC covers everything after the header, so a torn or corrupted record is
//! recognised on recovery and never relayed; the generation tells a record of the file's current
//! use from a stale one left by an earlier use (segment files are recycled, see `segment`).

use bytes::Bytes;

use crate::envelope::{Envelope, EventType, NotificationId};
use crate::notification::Notification;

/// Bytes before the payload: payload length (u32) and CRC-32 of the payload (u32).
pub const HEADER_LEN: usize = 8;
/// Largest payload a valid record can have; anything larger is corruption.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;
/// The fixed fields of a payload: seq, generation, receive time, event type, object, and
/// subscription key with its flag, and three text lengths.
const MIN_PAYLOAD_LEN: usize = 8 + 8 + 8 + 1 + 8 + 1 + 8 + 3 * 2;

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
}

/// Longest text field (id, object type, event time) a record can hold: its length is a `u16`.
pub const MAX_TEXT_LEN: usize = u16::MAX as usize;

/// Checks that a notification with these field and body lengths fits a record; pure, so that the
/// limits can be tested at every width boundary without allocating the bytes.
pub fn check_lengths(
    text_lens: [(&'static str, usize); 3],
    body_len: usize,
) -> Result<(), EncodeError> {
    let mut payload = MIN_PAYLOAD_LEN;
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
    check_lengths(
        texts.map(|(field, text)| (field, text.len())),
        notification.body.len(),
    )?;
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&notification.received_at_ms.to_le_bytes());
    out.push(env.event_type.as_str().as_bytes()[0]);
    out.extend_from_slice(&env.dataloy_object.to_le_bytes());
    match env.subscription_key {
        Some(key) => {
            out.push(1);
            out.extend_from_slice(&key.to_le_bytes());
        }
        None => {
            out.push(0);
            out.extend_from_slice(&0i64.to_le_bytes());
        }
    }
    for (_, text) in texts {
        let len = u16::try_from(text.len()).expect("checked by check_lengths");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&notification.body);
    let payload_len =
        u32::try_from(out.len() - start - HEADER_LEN).expect("checked by check_lengths");
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
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
    // Only what `encode` writes decodes: flag 1 with a key, or flag 0 with a zero key.
    let has_subscription_key = match cursor.take(1)?[0] {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Corrupt("bad subscription key flag")),
    };
    let subscription_key = cursor.u64()? as i64;
    if !has_subscription_key && subscription_key != 0 {
        return Err(DecodeError::Corrupt("subscription key without its flag"));
    }
    let id = cursor.text()?;
    let object_type = cursor.text()?;
    let event_time = cursor.text()?;
    let id = NotificationId::parse(&id).map_err(|_| DecodeError::Corrupt("bad id"))?;
    let body = Bytes::copy_from_slice(cursor.0);
    let envelope = Envelope {
        id,
        event_time,
        object_type,
        event_type,
        dataloy_object,
        subscription_key: has_subscription_key.then_some(subscription_key),
    };
    let notification = Notification {
        envelope,
        body,
        received_at_ms,
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
        let ok = |id, body| check_lengths([("id", id), ("objectType", 8), ("eventTime", 19)], body);
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
}
