//! Spool targets: record decoding over arbitrary bytes (`record_decode`), a segment's scan over
//! arbitrary and generated file bytes (`segment_scan`), and the real recovery over a spool
//! directory built from the fuzzer's bytes (`spool_recovery`). Also [`round_trip`], the byte for
//! byte check every accepted envelope passes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::spool::cursor::Cursor;
use crate::spool::record::{self, DecodeError, HEADER_LEN as RECORD_HEADER_LEN};
use crate::spool::scan::{self, ScanReport};
use crate::spool::segment::{self, HEADER_LEN, MAGIC};
use crate::spool::{MissingCursor, Spool, SpoolOptions, SpoolReader, SpoolRecord};
use crate::trace_context::{TraceContext, TraceParent, TraceState};

const GENERATION: u64 = 0x5eed_0000_0000_0001;
const SAMPLE: &[u8] = include_bytes!("../../tests/fixtures/bunker-order-updated.json");

/// A notification round-trips through the record encoder and decoder and through a segment and
/// its scan, byte for byte, as it is and with a trace context. The notification must be
/// representable (its envelope was accepted).
pub fn round_trip(notification: &Notification) {
    round_trip_as_is(notification);
    let traced = notification
        .clone()
        .with_trace(trace_for(&notification.body));
    round_trip_as_is(&traced);
}

/// A trace context that depends on `seed`: sampled or not, with a `tracestate` of up to the
/// 512 bytes kept or none.
pub fn trace_for(seed: &[u8]) -> TraceContext {
    let hash = crc32fast::hash(seed);
    let mut trace_id = [0x5a; 16];
    trace_id[..4].copy_from_slice(&hash.to_le_bytes());
    let members: Vec<String> = (0..hash % 40).map(|i| format!("k{i}=v{hash}")).collect();
    TraceContext {
        parent: TraceParent::new(trace_id, [0xa5; 8], (hash & 1) as u8).expect("non-zero ids"),
        state: TraceState::from_headers([members.join(",").as_bytes()]),
    }
}

fn round_trip_as_is(notification: &Notification) {
    let mut encoded = Vec::new();
    record::encode(41, GENERATION, notification, &mut encoded)
        .expect("an accepted notification is representable in a spool record");
    let (decoded, len) = record::decode(&encoded, GENERATION).expect("its record decodes");
    assert_eq!(len, encoded.len());
    assert_eq!(decoded.seq, 41);
    assert_eq!(&decoded.notification, notification);
    assert_eq!(
        decoded.notification.body, notification.body,
        "body byte for byte"
    );

    let mut bytes = segment_header(GENERATION);
    let mut offsets = Vec::new();
    for seq in [41, 42] {
        offsets.push(bytes.len());
        record::encode(seq, GENERATION, notification, &mut bytes).expect("representable");
    }
    for expected_last in [None, Some(42)] {
        let report = scan_bytes(&bytes, 41, expected_last).expect("a segment we wrote scans");
        assert_eq!((report.records, report.last_seq), (2, 42));
        assert_eq!(report.valid_len, bytes.len() as u64);
        assert!(report.damaged.is_empty() && report.torn_tail == 0);
    }
    for at in offsets {
        let (read, _) = record::decode(&bytes[at..], GENERATION).expect("decodes in place");
        assert_eq!(&read.notification, notification);
    }
}

fn segment_header(generation: u64) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes
}

fn scan_bytes(
    bytes: &[u8],
    first_seq: u64,
    expected_last_seq: Option<u64>,
) -> std::io::Result<ScanReport> {
    scan::scan_segment(bytes, Path::new("fuzzed.seg"), first_seq, expected_last_seq)
}

/// Arbitrary bytes decoded as a record: no panic; what decodes re-encodes to the same bytes, so a
/// record cannot mean two things. The first byte picks whether the CRC is fixed up first, so
/// that the fuzzer reaches the field decoding behind the checksum.
pub fn record_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= RECORD_HEADER_LEN {
        let claimed = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let end = RECORD_HEADER_LEN.saturating_add(claimed).min(bytes.len());
        let crc = crc32fast::hash(&bytes[RECORD_HEADER_LEN..end]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    // The generation the record carries, so that a decode is not always refused as stale.
    let generation = bytes
        .get(RECORD_HEADER_LEN + 8..RECORD_HEADER_LEN + 16)
        .map_or(0, |g| u64::from_le_bytes(g.try_into().expect("8 bytes")));
    match record::decode(&bytes, generation) {
        Ok((decoded, len)) => {
            assert!(len <= bytes.len());
            let mut again = Vec::new();
            record::encode(decoded.seq, generation, &decoded.notification, &mut again)
                .expect("a decoded record re-encodes");
            assert_eq!(again, bytes[..len], "a record re-encodes to its bytes");
        }
        Err(DecodeError::Incomplete { needed }) => assert!(needed > bytes.len()),
        Err(DecodeError::Corrupt(_) | DecodeError::Stale) => {}
    }
}

/// One step of building a segment's bytes.
#[derive(Arbitrary, Debug)]
enum Step {
    /// A record, `gap` after the previous sequence number (0: the same one again), of this
    /// segment's generation or of an earlier use of the file.
    Record {
        gap: u8,
        stale: bool,
        body_len: u16,
    },
    Raw(Vec<u8>),
    Zeros(u16),
    FlipBit {
        at: u32,
        bit: u8,
    },
    Truncate(u16),
}

/// A segment's bytes built from steps: returns them, and whether they are exactly the records
/// of one generation in sequence order (what the writer produces).
fn build_segment(u: &mut Unstructured<'_>, first_seq: u64) -> arbitrary::Result<(Vec<u8>, bool)> {
    let generation = if u.arbitrary()? {
        GENERATION
    } else {
        u.arbitrary()?
    };
    let mut bytes = segment_header(generation);
    let mut clean = true;
    let mut previous = first_seq.saturating_sub(1);
    let steps: Vec<Step> = u.arbitrary()?;
    for step in steps.into_iter().take(24) {
        match step {
            Step::Record {
                gap,
                stale,
                body_len,
            } => {
                let seq = previous.saturating_add(u64::from(gap % 4));
                let notification = sample(seq, usize::from(body_len % 2048));
                let record_generation = if stale { generation ^ 1 } else { generation };
                record::encode(seq, record_generation, &notification, &mut bytes)
                    .expect("representable");
                clean &= !stale && seq > previous;
                previous = previous.max(seq);
            }
            Step::Raw(raw) => {
                clean &= raw.is_empty();
                bytes.extend_from_slice(&raw);
            }
            Step::Zeros(len) => {
                clean &= len == 0;
                bytes.resize(bytes.len() + usize::from(len), 0);
            }
            Step::FlipBit { at, bit } => {
                if bytes.is_empty() {
                    continue;
                }
                let at = at as usize % bytes.len();
                bytes[at] ^= 1 << (bit % 8);
                clean = false;
            }
            Step::Truncate(by) => {
                clean &= by == 0;
                bytes.truncate(bytes.len().saturating_sub(usize::from(by)));
            }
        }
    }
    Ok((bytes, clean))
}

/// A notification for sequence number `seq`, its body padded to about `body_len` bytes; odd
/// sequence numbers carry a trace context (the records of both forms).
fn sample(seq: u64, body_len: usize) -> Notification {
    let text = std::str::from_utf8(SAMPLE).expect("UTF-8 fixture");
    let body = text.replacen("1573335-244070007", &format!("fuzz-{seq}"), 1);
    let body = match body.rfind('}') {
        Some(end) if body_len > 0 => format!(
            "{},\"pad\":\"{}\"}}",
            body[..end].trim_end(),
            "p".repeat(body_len)
        ),
        _ => body,
    };
    let body = Bytes::from(body);
    let envelope = Envelope::parse(&body).expect("the sample is a valid envelope");
    let trace = (seq % 2 == 1).then(|| trace_for(&body));
    Notification {
        envelope,
        body,
        received_at_ms: 1_700_000_000_000 + seq,
        trace,
    }
}

/// A segment's scan over arbitrary (first byte odd) or generated bytes: no panic; the report is
/// consistent with the bytes (its records decode in order between its damaged ranges, its ranges
/// lie in the file); and a segment as the writer writes it scans back to all its records.
pub fn segment_scan(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(raw), Ok(first_seq), Ok(newest), Ok(span)) = (
        u.arbitrary::<bool>(),
        u.int_in_range(0..=3u64),
        u.arbitrary::<bool>(),
        u.arbitrary::<u8>(),
    ) else {
        return;
    };
    let expected_last_seq = (!newest).then(|| first_seq + u64::from(span % 32));
    let (bytes, clean) = if raw {
        let mut bytes = segment_header(GENERATION);
        bytes.extend_from_slice(u.take_rest());
        (bytes, false)
    } else {
        match build_segment(&mut u, first_seq) {
            Ok(built) => built,
            Err(_) => return,
        }
    };
    let report = match scan_bytes(&bytes, first_seq, expected_last_seq) {
        Ok(report) => report,
        // A cut or flipped header: refused as not a segment, rather than cut away.
        Err(_) if bytes.len() < HEADER_LEN as usize || bytes[..8] != MAGIC[..] => return,
        Err(e) => panic!("a segment with a valid header is scanned, not refused: {e}"),
    };
    if bytes.is_empty() {
        return;
    }
    check_report(&bytes, &report, first_seq, expected_last_seq);
    if clean {
        assert!(report.damaged.is_empty(), "written records are not damage");
        assert_eq!(report.torn_tail, 0);
        assert_eq!(
            report.valid_len,
            bytes.len() as u64,
            "every written record is found"
        );
    }
}

/// The report describes the bytes: walking them from the header, stepping over each damaged
/// range, finds exactly its records, in increasing sequence order, up to `valid_len`.
fn check_report(bytes: &[u8], report: &ScanReport, first_seq: u64, expected: Option<u64>) {
    let len = bytes.len() as u64;
    assert!(HEADER_LEN <= report.valid_len && report.valid_len <= len);
    assert!(report.valid_len + report.torn_tail <= len);
    assert!(
        report.torn_tail == 0 || expected.is_none(),
        "only the newest segment is torn"
    );
    let mut end_of_previous = HEADER_LEN;
    for damage in &report.damaged {
        assert!(damage.len > 0 && damage.offset >= end_of_previous && damage.end() <= len);
        end_of_previous = damage.end();
    }
    let mut offset = HEADER_LEN;
    let mut previous = first_seq.saturating_sub(1);
    let mut records = 0;
    let mut damaged = report.damaged.iter().peekable();
    while offset < report.valid_len {
        if let Some(damage) = damaged.next_if(|d| d.offset == offset) {
            offset = damage.end();
            continue;
        }
        let (seq, record_len) =
            scan::decode_next(&bytes[offset as usize..], report.generation, previous)
                .unwrap_or_else(|| panic!("no record at {offset}, inside the valid part"));
        previous = seq;
        records += 1;
        offset += record_len as u64;
    }
    assert_eq!(offset, report.valid_len, "records end at valid_len");
    assert_eq!(records, report.records);
    if records > 0 {
        assert_eq!(previous, report.last_seq);
    }
}

/// One file of a generated spool directory.
#[derive(Arbitrary, Debug)]
enum SpoolFile {
    Segment {
        first_seq: u8,
    },
    Spare {
        first_seq: u8,
    },
    /// A valid cursor for the `file` sink at this position.
    Cursor(u8),
    /// A cursor file for the `file` sink holding these bytes.
    CursorBytes(Vec<u8>),
    /// The sink manifest, as text.
    Manifest(String),
    /// A file of another name.
    Other {
        name: u8,
        bytes: Vec<u8>,
    },
}

/// A spool directory built from the fuzzer's bytes, opened by the real recovery: no panic; a
/// refused start changes nothing on disk; an opened spool hands out records in increasing
/// sequence order that re-encode to themselves, takes a new notification and hands it back byte
/// for byte, and opens again to the same records.
pub fn spool_recovery(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(files) = u.arbitrary::<Vec<SpoolFile>>() else {
        return;
    };
    let start_from_end = u.arbitrary::<bool>().unwrap_or(false);
    let dir = TempDir::new();
    for file in files.into_iter().take(6) {
        let written = match file {
            SpoolFile::Segment { first_seq } => {
                let first_seq = u64::from(first_seq % 64);
                let Ok((bytes, _)) = build_segment(&mut u, first_seq) else {
                    break;
                };
                fs::write(segment::path_for(&dir.0, first_seq), bytes)
            }
            SpoolFile::Spare { first_seq } => fs::write(
                segment::spare_path_for(&dir.0, u64::from(first_seq)),
                u.arbitrary::<Vec<u8>>().unwrap_or_default(),
            ),
            SpoolFile::Cursor(acked) => {
                Cursor::create(&dir.0.join("cursor.file"), u64::from(acked % 64)).map(drop)
            }
            SpoolFile::CursorBytes(bytes) => fs::write(dir.0.join("cursor.file"), bytes),
            SpoolFile::Manifest(text) => fs::write(dir.0.join("sinks"), text),
            SpoolFile::Other { name, bytes } => {
                let names = [
                    "cursor",
                    "lock",
                    "sinks.tmp",
                    "quarantine",
                    "x.seg",
                    "1.seg",
                ];
                fs::write(dir.0.join(names[usize::from(name) % names.len()]), bytes)
            }
        };
        written.expect("the fuzz directory is writable");
    }
    let options = SpoolOptions {
        dir: dir.0.clone(),
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        commit_interval: Duration::ZERO,
        missing_cursor: if start_from_end {
            MissingCursor::StartFromEnd
        } else {
            MissingCursor::Refuse
        },
    };

    let before = snapshot(&dir.0);
    let spool = match Spool::open(options.clone(), &["file"], Metrics::new()) {
        Ok(spool) => spool,
        Err(_) => {
            assert_eq!(
                snapshot(&dir.0),
                before,
                "a refused start changes nothing on disk"
            );
            return;
        }
    };
    let mut reader = spool.reader_for("file").expect("the sink has a cursor");
    let mut records = read_all(&mut reader);
    let appended = sample(0, 10);
    let runtime = runtime();
    let seq = runtime
        .block_on(spool.append(appended.clone()))
        .expect("an opened spool takes a notification");
    let new = read_all(&mut reader);
    assert_eq!(new.len(), 1, "the appended notification is read back");
    assert_eq!((new[0].seq, &new[0].notification), (seq, &appended));
    assert!(records.last().is_none_or(|r| r.seq < seq));
    records.extend(new);
    runtime.block_on(spool.close());
    drop(spool);

    let again = Spool::open(options, &["file"], Metrics::new())
        .expect("a spool that opened once opens again");
    let reread = read_all(&mut again.reader_for("file").expect("the sink has a cursor"));
    runtime.block_on(again.close());
    let seqs = |r: &[SpoolRecord]| r.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&reread), seqs(&records), "recovery is repeatable");
    for (a, b) in reread.iter().zip(&records) {
        assert_eq!(a.notification, b.notification);
    }
}

fn read_all(reader: &mut SpoolReader) -> Vec<SpoolRecord> {
    let mut records: Vec<SpoolRecord> = Vec::new();
    loop {
        let batch = reader.read_available(64).expect("an opened spool reads");
        if batch.is_empty() {
            break;
        }
        for record in batch {
            assert!(
                records.last().is_none_or(|r| r.seq < record.seq),
                "in order"
            );
            let mut bytes = Vec::new();
            record::encode(record.seq, 1, &record.notification, &mut bytes)
                .expect("a record read back re-encodes");
            records.push(record);
        }
    }
    records
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Names and contents of the files in `dir` (one level down too).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "lock") {
                // (`lock`, an earlier version's lock file, goes whenever the directory is locked.)
                files.push((path.clone(), fs::read(&path).unwrap_or_default()));
            }
        }
    }
    files.sort();
    files
}

/// A directory under the system's temporary directory (`TMPDIR`), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "dataloy-gateway-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
