//! Envelope targets: arbitrary bytes into the parser (`envelope_parse`), and generated envelopes
//! whose field lengths sit around every width boundary (`envelope_structured`), serialized, parsed
//! and judged against what the README's envelope rules say about them.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::envelope::{Envelope, MAX_ID_LEN, MAX_OBJECT_TYPE_LEN};
use crate::notification::Notification;

use super::spool::round_trip;

/// Arbitrary bytes: parsed without a panic, and what is accepted is accepted everywhere after.
pub fn envelope_parse(data: &[u8]) {
    if let Ok(envelope) = Envelope::parse(data) {
        accepted(&envelope, data);
    }
}

/// What must hold for every body the envelope accepts: `serde_json::Value` reads it (what
/// consumers use) to the same envelope fields, and it round-trips through the spool's record and
/// segment code byte for byte.
pub fn accepted(envelope: &Envelope, body: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("the envelope accepted a body serde_json::Value refuses: {e}"));
    let object = value.as_object().expect("an accepted body is an object");
    let text = |field: &str| object.get(field).and_then(|v| v.as_str());
    assert_eq!(text("id"), Some(envelope.id.as_str()), "id");
    assert_eq!(text("eventTime"), Some(envelope.event_time.as_str()));
    assert_eq!(text("objectType"), Some(envelope.object_type.as_str()));
    assert_eq!(text("eventType"), Some(envelope.event_type.as_str()));
    assert_eq!(
        object.get("dataloyObject").and_then(|v| v.as_i64()),
        Some(envelope.dataloy_object)
    );
    let subscription = object.get("subscription").expect("subscription");
    assert!(subscription.is_object(), "subscription is an object");
    assert_eq!(
        subscription.get("key").and_then(|v| v.as_i64()),
        envelope.subscription_key,
        "subscription.key"
    );
    if let Some(resource) = object.get("resource") {
        assert!(resource.is_object() || resource.is_null(), "resource");
    }
    if let Some(origin) = &envelope.origin {
        // The origin is one of the two URLs' (which one, and when a duplicated member makes it
        // ambiguous, the unit tests hold), never anything else.
        let origin_of = |url: Option<&serde_json::Value>| {
            let url = url::Url::parse(url?.as_str()?).ok()?;
            Some(url.origin().ascii_serialization())
        };
        let candidates = [
            origin_of(object.get("dataloyObjectSelf")),
            origin_of(subscription.get("self")),
        ];
        assert!(
            candidates.contains(&Some(origin.clone())),
            "origin {origin} is of neither URL"
        );
    }
    round_trip(&Notification::new(
        envelope.clone(),
        Bytes::copy_from_slice(body),
    ));
}

/// Lengths the generated fields are built around: the envelope's own limits and the widths of
/// every length field downstream (u8, u16, AMQP short strings, the default body limit).
const BOUNDARIES: [usize; 10] = [
    0,
    19,
    35,
    128,
    255,
    256,
    65_535,
    65_536,
    (1 << 20) - 256,
    1 << 20,
];

/// A length near a boundary, in units of the field's character.
#[derive(Arbitrary, Debug)]
struct Near {
    boundary: u8,
    delta: i8,
}

impl Near {
    fn len(&self, cap: usize) -> usize {
        let base = BOUNDARIES[usize::from(self.boundary) % BOUNDARIES.len()].min(cap);
        base.saturating_add_signed(isize::from(self.delta % 4))
    }
}

#[derive(Arbitrary, Debug)]
struct Shape {
    id_char: u8,
    id_len: Near,
    /// Writes the id with every character as a `\u` escape.
    id_escaped: bool,
    object_type_len: Near,
    object_type_bad_char: bool,
    fraction_digits: Option<u8>,
    zone: u8,
    event_time_padding: Near,
    event_type: u8,
    dataloy_object: i64,
    subscription_key: Option<i64>,
    resource_len: Near,
    resource_extra: u8,
    rotate: u8,
    pretty: bool,
}

/// Characters of 1 to 4 bytes in UTF-8, a quote, a backslash and a control character.
const ID_CHARS: [char; 7] = ['a', 'é', '€', '😀', '"', '\\', '\u{1}'];

/// A generated envelope, serialized and parsed: accepted exactly when the README's rules say so,
/// to the generated fields; what is accepted passes [`accepted`].
pub fn envelope_structured(data: &[u8]) {
    let Ok(shape) = Shape::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut valid = true;

    let id_char = ID_CHARS[usize::from(shape.id_char) % ID_CHARS.len()];
    let id: String = std::iter::repeat_n(id_char, shape.id_len.len(300)).collect();
    valid &= !id.is_empty() && id.len() <= MAX_ID_LEN && !id_char.is_control();
    let id_json = if shape.id_escaped {
        let units: String = id.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
        format!("\"{units}\"")
    } else {
        serde_json::to_string(&id).expect("a string serializes")
    };

    let object_type_len = shape.object_type_len.len(300);
    let mut object_type: String = std::iter::once('B')
        .chain(std::iter::repeat_n('x', object_type_len.saturating_sub(1)))
        .take(object_type_len)
        .collect();
    if shape.object_type_bad_char && !object_type.is_empty() {
        object_type.replace_range(..1, "9");
        valid = false;
    }
    valid &= !object_type.is_empty() && object_type.len() <= MAX_OBJECT_TYPE_LEN;

    let padding = shape.event_time_padding.len(70_000);
    let mut event_time = format!("{}2016-09-14T13:37:26", " ".repeat(padding));
    valid &= padding == 0;
    if let Some(digits) = shape.fraction_digits {
        let digits = usize::from(digits % 14);
        event_time.push('.');
        event_time.push_str(&"7".repeat(digits));
        valid &= (1..=9).contains(&digits);
    }
    event_time.push_str(["", "Z", "+02:00", "-11:30"][usize::from(shape.zone % 4)]);

    let event_type = ["C", "U", "D", "X"][usize::from(shape.event_type % 4)];
    valid &= event_type != "X";

    let key = shape
        .subscription_key
        .map_or("null".to_owned(), |k| k.to_string());
    let resource_text = "r".repeat(shape.resource_len.len(1 << 20));
    let (extra, extra_valid) = [
        ("1", true),
        ("1e308", true),
        ("-0.0", true),
        ("\"\\ud83d\\ude00\"", true),
        ("1e400", false),
        ("\"\\ud800\"", false),
        ("\"\\udc00x\"", false),
    ][usize::from(shape.resource_extra) % 7];
    valid &= extra_valid;

    let mut members = [
        format!("\"id\":{id_json}"),
        format!("\"eventTime\":\"{event_time}\""),
        format!("\"objectType\":\"{object_type}\""),
        format!("\"eventType\":\"{event_type}\""),
        format!("\"dataloyObject\":{}", shape.dataloy_object),
        format!("\"subscription\":{{\"self\":\"s\",\"key\":{key}}}"),
        format!("\"resource\":{{\"text\":\"{resource_text}\",\"extra\":{extra}}}"),
    ];
    let rotate = usize::from(shape.rotate) % members.len();
    members.rotate_left(rotate);
    let separator = if shape.pretty { ",\n  " } else { "," };
    let body = format!("{{{}}}", members.join(separator));

    match Envelope::parse(body.as_bytes()) {
        Ok(envelope) => {
            assert!(valid, "accepted an envelope the rules refuse: {shape:?}");
            assert_eq!(envelope.id.as_str(), id);
            assert_eq!(envelope.object_type, object_type);
            assert_eq!(envelope.event_time, event_time);
            assert_eq!(envelope.event_type.as_str(), event_type);
            assert_eq!(envelope.dataloy_object, shape.dataloy_object);
            assert_eq!(envelope.subscription_key, shape.subscription_key);
            accepted(&envelope, body.as_bytes());
        }
        Err(error) => assert!(
            !valid,
            "refused an envelope the rules accept ({error}): {shape:?}"
        ),
    }
}
