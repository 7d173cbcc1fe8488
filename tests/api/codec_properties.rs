//! Codec properties: every body the envelope accepts round-trips through the spool's record
//! and segment code byte for byte, with field lengths generated around every width boundary
//! (2^8, 2^16, and 2^32 through the length checks, which need no 4 GiB of memory) up to
//! `server.max_body_bytes`; the record encoder refuses what it cannot represent instead of
//! truncating. Case counts are kept small: these run in every `cargo test`.

use bytes::Bytes;
use dataloy_gateway::config::Settings;
use dataloy_gateway::envelope::Envelope;
use dataloy_gateway::fuzzing::{accepted, trace_for};
use dataloy_gateway::metrics::Metrics;
use dataloy_gateway::notification::Notification;
use dataloy_gateway::spool::record::{
    self, check_lengths, EncodeError, MAX_PAYLOAD_LEN, MAX_TEXT_LEN,
};
use dataloy_gateway::spool::{MissingCursor, Spool, SpoolOptions};
use proptest::prelude::*;

/// A length around a width boundary, capped at `cap`.
fn near_boundary(cap: usize) -> impl Strategy<Value = usize> {
    let boundary =
        prop::sample::select(vec![0usize, 1 << 7, 1 << 8, 1 << 15, 1 << 16, 1 << 20, cap]);
    (boundary, -3isize..=3).prop_map(move |(b, d)| b.saturating_add_signed(d).min(cap))
}

fn max_body_bytes() -> usize {
    Settings::default().server.max_body_bytes.bytes() as usize
}

/// A valid envelope whose id, `eventTime` and `resource` text have generated lengths; the body
/// stays within `server.max_body_bytes`.
fn accepted_body() -> impl Strategy<Value = Vec<u8>> {
    let id_char = prop::sample::select(vec!["a", "é", "€", "😀"]);
    (
        id_char,
        1usize..=32,
        prop::option::of(1usize..=9),
        near_boundary(max_body_bytes() - 400),
        prop::sample::select(vec!["r", "\\u00e9", "ø", "\\n"]),
    )
        .prop_map(|(id_char, id_units, fraction, resource_len, unit)| {
            // 32 four-byte characters are the 128 bytes an id may have.
            let id = id_char.repeat(id_units);
            let event_time = match fraction {
                Some(digits) => format!("2016-09-14T13:37:26.{}", "1".repeat(digits)),
                None => "2016-09-14T13:37:26".to_owned(),
            };
            let text = unit.repeat(resource_len / unit.len());
            format!(
                r#"{{"id":"{id}","eventTime":"{event_time}","objectType":"PortCall","eventType":"U","dataloyObject":7,"subscription":{{"key":3}},"resource":{{"text":"{text}"}}}}"#
            )
            .into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Through the record encoder and decoder and a segment and its scan, in memory.
    #[test]
    fn accepted_bodies_round_trip_through_record_and_segment(body in accepted_body()) {
        prop_assert!(body.len() <= max_body_bytes());
        let envelope = Envelope::parse(&body).expect("generated bodies are valid");
        accepted(&envelope, &body);
    }

    /// Text fields near and past `u16` (and `u32`, where only the check runs): encoded when
    /// they fit, refused when not, never wrapped.
    #[test]
    fn the_length_check_refuses_exactly_what_does_not_fit(
        id in near_boundary(1 << 33),
        event_time in near_boundary(1 << 17),
        body in prop::sample::select(vec![0usize, 1 << 16, 1 << 32, MAX_PAYLOAD_LEN - 512, MAX_PAYLOAD_LEN, usize::MAX]),
        // None, or the longest trace context and origin: 16 + 8 + 1 + 2 + 512 and 2 + 255.
        optional in prop::sample::select(vec![0usize, 539 + 257]),
    ) {
        let outcome = check_lengths([("id", id), ("objectType", 8), ("eventTime", event_time)], optional, body);
        let fits_texts = id <= MAX_TEXT_LEN && event_time <= MAX_TEXT_LEN;
        // The payload also holds fixed fields, fewer than 64 bytes.
        let payload = |fixed: usize| body.checked_add(id + 8 + event_time + optional + fixed);
        match outcome {
            Ok(()) => prop_assert!(fits_texts && payload(0).is_some_and(|n| n <= MAX_PAYLOAD_LEN)),
            Err(EncodeError::FieldTooLong { len, .. }) => prop_assert!(!fits_texts && len > MAX_TEXT_LEN),
            Err(EncodeError::TooLarge { .. }) => prop_assert!(fits_texts && payload(64).is_none_or(|n| n > MAX_PAYLOAD_LEN)),
            Err(EncodeError::Unrepresentable { .. }) => prop_assert!(false, "only lengths are checked here"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The encoder itself, with a text field built past the envelope's rules (so only the
    /// encoder stands between it and a wrapped length): round-trips up to `u16::MAX` bytes,
    /// refused past it, the output left as it was.
    #[test]
    fn the_encoder_refuses_instead_of_truncating(len in near_boundary(MAX_TEXT_LEN + 3)) {
        let body = Bytes::from_static(crate::helpers::UPDATED);
        let mut notification = Notification::new(Envelope::parse(&body).unwrap(), body);
        notification.envelope.event_time = "9".repeat(len);
        let mut out = vec![7u8; 3];
        match record::encode(5, 9, &notification, &mut out) {
            Ok(()) => {
                prop_assert!(len <= MAX_TEXT_LEN);
                let (decoded, used) = record::decode(&out[3..], 9).unwrap();
                prop_assert_eq!(used, out.len() - 3);
                prop_assert_eq!(decoded.notification, notification);
            }
            Err(error) => {
                prop_assert!(len > MAX_TEXT_LEN);
                prop_assert_eq!(error, EncodeError::FieldTooLong { field: "eventTime", len });
                prop_assert_eq!(out, vec![7u8; 3]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Through the real spool: appended (the writer's segment code, fsync and all), read back
    /// byte for byte with the trace context of those that have one, after recovery reopened the
    /// directory.
    #[test]
    fn accepted_bodies_round_trip_through_the_real_spool(
        bodies in prop::collection::vec(accepted_body(), 1..4)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            commit_interval: std::time::Duration::ZERO,
            missing_cursor: MissingCursor::Refuse,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sent: Vec<Bytes> = bodies.into_iter().map(Bytes::from).collect();
        // Every other one with a trace context: records of both forms in one segment.
        let traces: Vec<_> = sent
            .iter()
            .enumerate()
            .map(|(i, body)| (i % 2 == 0).then(|| trace_for(body)))
            .collect();
        let spool = Spool::open(options.clone(), &["file"], Metrics::new()).unwrap();
        for (body, trace) in sent.iter().zip(&traces) {
            let mut notification = Notification::new(Envelope::parse(body).unwrap(), body.clone());
            notification.trace = trace.clone();
            runtime.block_on(spool.append(notification)).unwrap();
        }
        runtime.block_on(spool.close());
        drop(spool);

        let spool = Spool::open(options, &["file"], Metrics::new()).unwrap();
        let mut reader = spool.reader_for("file").unwrap();
        let mut read = Vec::new();
        loop {
            let batch = reader.read_available(16).unwrap();
            if batch.is_empty() { break; }
            read.extend(batch.into_iter().map(|r| (r.notification.body, r.notification.trace)));
        }
        runtime.block_on(spool.close());
        prop_assert_eq!(read, sent.into_iter().zip(traces).collect::<Vec<_>>());
    }
}
