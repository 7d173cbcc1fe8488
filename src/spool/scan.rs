//! Telling a segment's current records from damage, a torn tail and stale bytes.
//!
//! A segment holds, after its header, the records of its current generation, in sequence order,
//! and then possibly bytes of the file's earlier use (segments are recycled) or zero fill. Only
//! the newest segment can end in a torn record (the write the crash interrupted); any other bytes
//! that do not decode are damage. Damage never ends the data: the scan resynchronises at the next
//! offset where a record of this generation with a higher sequence number decodes, so every
//! valid record after it is kept, and the damaged range is handed back to be quarantined.
//!
//! Where the current data ends without a record following it, the bytes after it are:
//! - a torn tail, in the newest segment, when they start like a record of this generation (its
//!   generation or the next sequence number in place): cut off, counted;
//! - damage, in an older segment whose records stop before the next segment's first sequence
//!   number (so records are missing);
//! - otherwise stale bytes of the file's earlier use or zero fill: not damage, not reported.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{self, HEADER_LEN as RECORD_HEADER_LEN, MAX_PAYLOAD_LEN};
use super::segment::{HEADER_LEN, MAGIC};

/// Where the generation sits in an encoded record: after the record header and the sequence
/// number. The sequence number is right before it.
const GENERATION_AT: u64 = RECORD_HEADER_LEN as u64 + 8;
const SEQ_AT: u64 = RECORD_HEADER_LEN as u64;
/// Bytes searched at a time while resynchronising.
const SEARCH_WINDOW: u64 = 4 * 1024 * 1024;

/// A source of segment bytes: the file itself, or its bytes already in memory.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// A range of a segment that does not decode although records of its generation should be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    /// Sequence numbers missing around the range: records that could not be read from it.
    pub missing_records: u64,
}

impl Damage {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Result of validating one segment file.
#[derive(Debug)]
pub struct ScanReport {
    pub generation: u64,
    /// End of the last valid record, header included: readers never read past it.
    pub valid_len: u64,
    /// Highest sequence number of a valid record; 0 when there is none.
    pub last_seq: u64,
    pub records: u64,
    /// Ranges before `valid_len` (or after it, in an older segment) that must be quarantined.
    pub damaged: Vec<Damage>,
    /// Bytes of a torn record at the end of the newest segment (cut off by recovery).
    pub torn_tail: u64,
}

/// Reads and validates a segment. `expected_last_seq` is the next segment's first sequence
/// number minus one, or `None` for the newest segment.
pub fn scan(path: &Path, first_seq: u64, expected_last_seq: Option<u64>) -> io::Result<ScanReport> {
    let bytes = fs::read(path)?;
    scan_segment(&bytes, path, first_seq, expected_last_seq)
}

/// [`scan`] over a segment's bytes already in memory (`path` only names it in an error).
pub(crate) fn scan_segment(
    bytes: &[u8],
    path: &Path,
    first_seq: u64,
    expected_last_seq: Option<u64>,
) -> io::Result<ScanReport> {
    let header = HEADER_LEN as usize;
    if bytes.is_empty() {
        // A crash right after the file was created, before its header was written.
        return Ok(ScanReport {
            generation: 0,
            valid_len: 0,
            last_seq: 0,
            records: 0,
            damaged: Vec::new(),
            torn_tail: 0,
        });
    }
    if bytes.len() < header || &bytes[..8] != MAGIC {
        // Not written by this version: refuse rather than cut away data we do not understand.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a spool segment of this gateway version (bad header); move it out of \
                 the spool directory",
                path.display()
            ),
        ));
    }
    let generation = u64::from_le_bytes(bytes[8..header].try_into().expect("8 bytes"));
    scan_bytes(bytes, generation, first_seq, expected_last_seq)
}

fn scan_bytes(
    bytes: &[u8],
    generation: u64,
    first_seq: u64,
    expected_last_seq: Option<u64>,
) -> io::Result<ScanReport> {
    let len = bytes.len() as u64;
    let mut report = ScanReport {
        generation,
        valid_len: HEADER_LEN,
        last_seq: 0,
        records: 0,
        damaged: Vec::new(),
        torn_tail: 0,
    };
    let mut previous = first_seq.saturating_sub(1);
    let mut offset = HEADER_LEN;
    while offset < len {
        if let Some((seq, record_len)) =
            decode_next(&bytes[offset as usize..], generation, previous)
        {
            previous = seq;
            report.last_seq = seq;
            report.records += 1;
            offset += record_len as u64;
            report.valid_len = offset;
            continue;
        }
        match find_next_record(bytes, offset + 1, len, generation, previous)? {
            Some((next, seq)) => {
                report.damaged.push(Damage {
                    offset,
                    len: next - offset,
                    missing_records: seq - previous - 1,
                });
                offset = next;
            }
            None => break,
        }
    }
    let rest = &bytes[offset as usize..];
    if !rest.is_empty() {
        match expected_last_seq {
            None if looks_current(rest, generation, previous + 1) => {
                report.torn_tail = present_record_len(rest);
            }
            Some(expected) if previous < expected => report.damaged.push(Damage {
                offset,
                len: rest.len() as u64,
                missing_records: expected - previous,
            }),
            // Bytes of the file's earlier use, or zero fill: the current data simply ends.
            _ => {}
        }
    }
    Ok(report)
}

/// The record at the start of `buf` if it is one of `generation` that follows `previous`: its
/// sequence number and encoded length.
pub fn decode_next(buf: &[u8], generation: u64, previous: u64) -> Option<(u64, usize)> {
    match record::decode(buf, generation) {
        Ok((record, len)) if record.seq > previous => Some((record.seq, len)),
        _ => None,
    }
}

/// The first offset in `from..limit` where a record of `generation` with a sequence number
/// above `previous` decodes, with that sequence number. Candidates are found by the generation's
/// bytes (random, eight bytes), so the search is one pass over the range.
pub fn find_next_record(
    source: &(impl ReadAt + ?Sized),
    from: u64,
    limit: u64,
    generation: u64,
    previous: u64,
) -> io::Result<Option<(u64, u64)>> {
    search_windows(source, from, limit, generation, previous, SEARCH_WINDOW)
}

fn search_windows(
    source: &(impl ReadAt + ?Sized),
    from: u64,
    limit: u64,
    generation: u64,
    previous: u64,
    window_len: u64,
) -> io::Result<Option<(u64, u64)>> {
    debug_assert!(window_len > 8, "windows overlap by 7 bytes");
    let needle = generation.to_le_bytes();
    let finder = memchr::memmem::Finder::new(&needle);
    let mut window = Vec::new();
    // Offsets where the generation field of a candidate record would start.
    let mut search_from = from + GENERATION_AT;
    while search_from + 8 <= limit {
        let end = (search_from + window_len).min(limit);
        window.resize((end - search_from) as usize, 0);
        source.read_exact_at(&mut window, search_from)?;
        let mut at = 0;
        while let Some(found) = finder.find(&window[at..]) {
            let record_start = search_from + (at + found) as u64 - GENERATION_AT;
            if let Some(seq) = decode_at(source, record_start, limit, generation, previous)? {
                return Ok(Some((record_start, seq)));
            }
            at += found + 1;
        }
        if end == limit {
            break;
        }
        // Overlap the windows so that a generation cut by the window's end is found.
        search_from = end - 7;
    }
    Ok(None)
}

/// Decodes the record at `offset` if it lies within `limit` and follows `previous`.
fn decode_at(
    source: &(impl ReadAt + ?Sized),
    offset: u64,
    limit: u64,
    generation: u64,
    previous: u64,
) -> io::Result<Option<u64>> {
    let mut header = [0u8; RECORD_HEADER_LEN];
    if offset + RECORD_HEADER_LEN as u64 > limit {
        return Ok(None);
    }
    source.read_exact_at(&mut header, offset)?;
    let payload_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let total = RECORD_HEADER_LEN + payload_len;
    if payload_len > MAX_PAYLOAD_LEN || offset + total as u64 > limit {
        return Ok(None);
    }
    let mut bytes = vec![0u8; total];
    source.read_exact_at(&mut bytes, offset)?;
    Ok(decode_next(&bytes, generation, previous).map(|(seq, _)| seq))
}

/// Whether bytes that do not decode start like a record of `generation`: its generation or the
/// expected sequence number in place (a torn or damaged record changes one of them at most).
/// Bytes of a recycled file's earlier use carry another generation and older sequence numbers.
pub fn looks_current(rest: &[u8], generation: u64, next_seq: u64) -> bool {
    let field_is = |at: u64, value: u64| {
        rest.get(at as usize..at as usize + 8)
            .is_some_and(|bytes| bytes == value.to_le_bytes())
    };
    field_is(GENERATION_AT, generation) || field_is(SEQ_AT, next_seq)
}

/// Bytes of the torn record at the start of `rest` that reached the file.
fn present_record_len(rest: &[u8]) -> u64 {
    let claimed = rest
        .get(..4)
        .map(|b| RECORD_HEADER_LEN + u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .filter(|&total| total <= RECORD_HEADER_LEN + MAX_PAYLOAD_LEN)
        .unwrap_or(rest.len());
    claimed.min(rest.len()) as u64
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::envelope::Envelope;
    use crate::notification::Notification;

    const GENERATION: u64 = 0x5eed_0000_0000_0001;

    fn sample(id: &str) -> Notification {
        let text = include_str!("../../tests/fixtures/bunker-order-updated.json");
        let body = Bytes::from(text.replacen("1573335-244070007", id, 1));
        Notification::new(Envelope::parse(&body).unwrap(), body)
    }

    /// A segment of `generation` holding records `first..=last`, and each record's offset.
    fn segment(generation: u64, first: u64, last: u64) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&generation.to_le_bytes());
        let mut offsets = Vec::new();
        for seq in first..=last {
            offsets.push(bytes.len() as u64);
            record::encode(seq, generation, &sample(&format!("r-{seq}")), &mut bytes).unwrap();
        }
        (bytes, offsets)
    }

    #[test]
    fn a_clean_segment_has_no_findings() {
        let (bytes, _) = segment(GENERATION, 5, 9);
        let report = scan_bytes(&bytes, GENERATION, 5, Some(9)).unwrap();
        assert_eq!((report.records, report.last_seq), (5, 9));
        assert_eq!(report.valid_len, bytes.len() as u64);
        assert!(report.damaged.is_empty());
        assert_eq!(report.torn_tail, 0);
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_every_later_record_kept() {
        let (mut bytes, offsets) = segment(GENERATION, 1, 6);
        bytes[offsets[2] as usize + 300] ^= 0x20;
        for expected in [None, Some(6)] {
            let report = scan_bytes(&bytes, GENERATION, 1, expected).unwrap();
            assert_eq!((report.records, report.last_seq), (5, 6));
            assert_eq!(
                report.damaged,
                [Damage {
                    offset: offsets[2],
                    len: offsets[3] - offsets[2],
                    missing_records: 1
                }]
            );
            assert_eq!(report.torn_tail, 0);
        }
    }

    #[test]
    fn a_damaged_length_field_is_resynchronised_too() {
        let (mut bytes, offsets) = segment(GENERATION, 1, 4);
        bytes[offsets[1] as usize + 3] = 0xff; // claims 4 GiB
        let report = scan_bytes(&bytes, GENERATION, 1, Some(4)).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.damaged[0].offset, offsets[1]);
        assert_eq!(report.damaged[0].end(), offsets[2]);
    }

    #[test]
    fn damage_at_the_end_of_an_older_segment_is_damage_not_a_torn_tail() {
        let (mut bytes, offsets) = segment(GENERATION, 1, 4);
        bytes[offsets[3] as usize + 100] ^= 0x01;
        let report = scan_bytes(&bytes, GENERATION, 1, Some(4)).unwrap();
        assert_eq!(report.last_seq, 3);
        assert_eq!(report.torn_tail, 0);
        assert_eq!(
            report.damaged,
            [Damage {
                offset: offsets[3],
                len: bytes.len() as u64 - offsets[3],
                missing_records: 1
            }]
        );
    }

    #[test]
    fn a_torn_record_at_the_end_of_the_newest_segment_is_a_torn_tail() {
        let (mut bytes, offsets) = segment(GENERATION, 1, 3);
        bytes.truncate(offsets[2] as usize + 200);
        let report = scan_bytes(&bytes, GENERATION, 1, None).unwrap();
        assert_eq!((report.records, report.torn_tail), (2, 200));
        assert!(report.damaged.is_empty());
    }

    #[test]
    fn stale_bytes_of_an_earlier_use_after_the_current_data_are_not_damage() {
        // The file held longer records of generation 1; generation 2 wrote two shorter ones
        // over its start, ending in the middle of an old record.
        let (old, _) = segment(1, 100, 110);
        let mut bytes = old.clone();
        let (current, _) = segment(2, 200, 201);
        bytes[..current.len()].copy_from_slice(&current);
        for expected in [None, Some(201)] {
            let report = scan_bytes(&bytes, 2, 200, expected).unwrap();
            assert_eq!(
                (report.records, report.valid_len),
                (2, current.len() as u64)
            );
            assert!(report.damaged.is_empty(), "{expected:?}");
            assert_eq!(report.torn_tail, 0);
        }
        let mut zero_filled = current.clone();
        zero_filled.resize(current.len() + 5000, 0);
        let report = scan_bytes(&zero_filled, 2, 200, None).unwrap();
        assert!(report.damaged.is_empty());
        assert_eq!(report.torn_tail, 0);
    }

    #[test]
    fn an_older_segment_cut_short_by_zeroed_blocks_is_damage() {
        let (mut bytes, offsets) = segment(GENERATION, 1, 5);
        let cut = offsets[3] as usize;
        bytes[cut..].fill(0);
        let report = scan_bytes(&bytes, GENERATION, 1, Some(5)).unwrap();
        assert_eq!(report.last_seq, 3);
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.damaged[0].missing_records, 2);
    }

    #[test]
    fn the_search_finds_a_record_across_window_boundaries() {
        let (bytes, offsets) = segment(GENERATION, 1, 3);
        let from = offsets[0] + 1;
        let limit = bytes.len() as u64;
        for window in [9, 13, 64, 1000, SEARCH_WINDOW] {
            assert_eq!(
                search_windows(&bytes[..], from, limit, GENERATION, 1, window).unwrap(),
                Some((offsets[1], 2)),
                "window {window}"
            );
        }
        assert_eq!(
            find_next_record(&bytes[..], from, bytes.len() as u64, GENERATION, 3).unwrap(),
            None,
            "only records after `previous` count"
        );
    }
}
