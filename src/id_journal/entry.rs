//! The journal's on-disk format. A file starts with a header (magic and a random generation),
//! then holds fixed-size entries: a CRC-32, the spool sequence number of the notification's
//! record, the accept time and the id's 128-bit key. The CRC covers the file's generation and
//! the rest of the entry, so a torn entry, a flipped byte and bytes of another file all fail it.
//! Entries are of one size whatever the id (an id of 64 KiB or of emoji costs 36 bytes like any
//! other), so a damaged entry never hides where the next one starts.

use std::io;

use crate::dedup::IdKey;

pub const MAGIC: &[u8; 8] = b"DLGWIDJ1";
/// Bytes before the first entry: the magic and the generation.
pub const HEADER_LEN: u64 = 16;
/// Bytes of one entry: CRC (4), sequence number (8), accept time in ms (8), key (16).
pub const ENTRY_LEN: usize = 36;

/// One accepted id, as the journal remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number of the notification's spool record: an entry counts only if its record
    /// was made durable too (see `recovery`).
    pub seq: u64,
    /// When the notification was accepted, in milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    pub key: IdKey,
}

/// The header of a journal file of `generation`.
pub fn header(generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&generation.to_le_bytes());
    header
}

/// The generation in a file's first bytes, or why they are not a journal header.
pub fn parse_header(bytes: &[u8]) -> io::Result<u64> {
    if bytes.len() < HEADER_LEN as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "shorter than a journal header",
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an id journal file of this version (bad magic)",
        ));
    }
    Ok(u64::from_le_bytes(bytes[8..16].try_into().unwrap()))
}

/// Appends `entry`, encoded for a file of `generation`, to `out`.
pub fn encode(entry: &Entry, generation: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&entry.seq.to_le_bytes());
    out.extend_from_slice(&entry.accepted_ms.to_le_bytes());
    out.extend_from_slice(&entry.key.0.to_le_bytes());
    let crc = checksum(generation, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes one entry of a file of `generation`; `None` when the bytes fail the checksum.
pub fn decode(bytes: &[u8; ENTRY_LEN], generation: u64) -> Option<Entry> {
    let crc = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    if checksum(generation, &bytes[4..]) != crc {
        return None;
    }
    Some(Entry {
        seq: u64::from_le_bytes(bytes[4..12].try_into().unwrap()),
        accepted_ms: u64::from_le_bytes(bytes[12..20].try_into().unwrap()),
        key: IdKey(u128::from_le_bytes(bytes[20..36].try_into().unwrap())),
    })
}

fn checksum(generation: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            seq: 42,
            accepted_ms: 1_700_000_000_000,
            key: IdKey::of("1573335-244070007"),
        }
    }

    #[test]
    fn an_entry_round_trips_in_its_fixed_size() {
        let mut buf = Vec::new();
        encode(&entry(), 7, &mut buf);
        assert_eq!(buf.len(), ENTRY_LEN);
        assert_eq!(decode(buf[..].try_into().unwrap(), 7), Some(entry()));
    }

    #[test]
    fn every_flipped_bit_and_another_generation_fail_the_checksum() {
        let mut buf = Vec::new();
        encode(&entry(), 7, &mut buf);
        for bit in 0..ENTRY_LEN * 8 {
            let mut flipped: [u8; ENTRY_LEN] = buf[..].try_into().unwrap();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&flipped, 7), None, "bit {bit}");
        }
        assert_eq!(decode(buf[..].try_into().unwrap(), 8), None);
        assert_eq!(decode(&[0u8; ENTRY_LEN], 7), None, "zero fill");
    }

    #[test]
    fn headers_are_recognised_and_others_refused() {
        assert_eq!(parse_header(&header(9)).unwrap(), 9);
        assert!(parse_header(&header(9)[..15]).is_err());
        let mut other = header(9);
        other[0] ^= 1;
        assert!(parse_header(&other).is_err());
    }
}
