//! The Dataloy notification envelope: the few fields the gateway needs to route, deduplicate and
//! label a notification, parsed from the received bytes without building the (possibly large)
//! `resource` object. The body itself is never re-serialized: sinks relay the bytes as received.
//! One pass over the body (`scan`) both validates it and finds the envelope's members.

mod origin;
mod scan;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use origin::{is_origin, MAX_ORIGIN_LEN};
use scan::ScanError;

/// Longest notification id we accept, in bytes of UTF-8; Dataloy ids look like
/// `1573335-244070007`. Bytes, not characters: every sink carries the id in a field whose limit
/// is in bytes (AMQP `message_id` is a short string of at most 255).
pub const MAX_ID_LEN: usize = 128;
/// Longest object type name we accept (an identifier such as `BunkerOrderLine`).
pub const MAX_OBJECT_TYPE_LEN: usize = 128;
/// Deepest nesting of arrays and objects we relay. Dataloy's payloads nest a handful of levels;
/// far deeper JSON is hostile and would fail in consumers whose parsers stop at 128 (serde_json's
/// default recursion limit, which refuses a 128th level: it accepts at most 127), so it is
/// refused here rather than queued. `tests::serde_json_reads_every_depth_we_accept` holds it.
pub const MAX_NESTING: usize = 127;

/// A validated notification id: non-empty, at most [`MAX_ID_LEN`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationId(String);

impl NotificationId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must be a non-empty string");
        }
        if raw.len() > MAX_ID_LEN {
            return Err("must be at most 128 bytes in UTF-8");
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NotificationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Dataloy's change kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Create,
    Update,
    Delete,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Create => "C",
            EventType::Update => "U",
            EventType::Delete => "D",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "C" => Some(EventType::Create),
            "U" => Some(EventType::Update),
            "D" => Some(EventType::Delete),
            _ => None,
        }
    }
}

/// What the gateway knows about a notification besides its bytes. Small and owned: its size does
/// not depend on `resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: NotificationId,
    pub event_time: String,
    pub object_type: String,
    pub event_type: EventType,
    pub dataloy_object: i64,
    /// `subscription.key`, absent for subscriptions that carry none.
    pub subscription_key: Option<i64>,
    /// The Dataloy instance that sent it: `scheme://host[:port]` of `dataloyObjectSelf`, else of
    /// `subscription.self` (CloudEvents' default `source`). Absent when neither is an http(s)
    /// URL; never a reason to refuse the notification.
    pub origin: Option<String>,
}

/// Why a body is not a Dataloy notification. Each variant maps to one stable error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
}

impl EnvelopeError {
    /// Stable, machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::InvalidJson(_) => "invalid_json",
            EnvelopeError::NotAnObject => "invalid_envelope",
            EnvelopeError::MissingField(_) => "missing_field",
            EnvelopeError::InvalidField { .. } => "invalid_field",
        }
    }

    /// The envelope field at fault, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            EnvelopeError::MissingField(field) | EnvelopeError::InvalidField { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }
}

/// The envelope's members as JSON text borrowed from the body; other members are skipped.
#[derive(Default)]
struct RawEnvelope<'a> {
    id: Option<&'a str>,
    event_time: Option<&'a str>,
    object_type: Option<&'a str>,
    event_type: Option<&'a str>,
    dataloy_object: Option<&'a str>,
    subscription: Option<&'a str>,
    resource: Option<&'a str>,
    /// Set when one of these members appears twice: the body is refused, as ambiguous.
    duplicated: bool,
    /// `dataloyObjectSelf`, only for the origin: not validated, so a second copy makes it
    /// ambiguous (`Some(None)`), not the body invalid.
    object_self: Option<Option<&'a str>>,
}

impl<'a> RawEnvelope<'a> {
    fn take(&mut self, member: scan::Member<'a>) {
        let Some(key) = member_name(member.raw_key) else {
            return; // an escape that is not valid in a name: not one we look for
        };
        let slot = match key.as_ref() {
            "id" => &mut self.id,
            "eventTime" => &mut self.event_time,
            "objectType" => &mut self.object_type,
            "eventType" => &mut self.event_type,
            "dataloyObject" => &mut self.dataloy_object,
            "subscription" => &mut self.subscription,
            "resource" => &mut self.resource,
            "dataloyObjectSelf" => {
                self.object_self = Some(match self.object_self {
                    None => Some(member.value),
                    Some(_) => None,
                });
                return;
            }
            _ => return,
        };
        self.duplicated |= slot.replace(member.value).is_some();
    }
}

impl Envelope {
    /// Parses and validates the envelope of a notification body.
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| EnvelopeError::InvalidJson(format!("invalid UTF-8: {e}")))?;
        let mut raw = RawEnvelope::default();
        match scan::scan(text, MAX_NESTING, |member| raw.take(member)) {
            Ok(true) if !raw.duplicated => {}
            Ok(false) => return Err(EnvelopeError::NotAnObject),
            Ok(true) | Err(ScanError::Malformed) => return Err(explain_invalid_json(text)),
            Err(ScanError::TooDeep) => {
                return Err(EnvelopeError::InvalidJson(format!(
                    "arrays and objects nested deeper than {MAX_NESTING} levels"
                )))
            }
            Err(ScanError::OutOfRange { at }) => {
                return Err(EnvelopeError::InvalidJson(format!(
                    "number out of range at {}: JSON numbers must fit an IEEE 754 double \
                     (RFC 7493, I-JSON), which consumers' parsers require",
                    position(text, at)
                )))
            }
            Err(ScanError::LoneSurrogate { at }) => {
                return Err(EnvelopeError::InvalidJson(format!(
                    "unpaired UTF-16 surrogate in a \\u escape at {}: strings must be valid \
                     Unicode (RFC 7493, I-JSON), which consumers' parsers require",
                    position(text, at)
                )))
            }
        }

        let id = required("id", raw.id)?;
        let id = as_string(id)
            .and_then(|s| NotificationId::parse(&s).ok())
            .ok_or_else(|| id_error(id))?;

        let event_time = required("eventTime", raw.event_time)?;
        let event_time = as_string(event_time)
            .filter(|s| is_dataloy_date_time(s))
            .ok_or(EnvelopeError::InvalidField {
                field: "eventTime",
                reason: "must be a date-time YYYY-MM-DDTHH:MM:SS, with optional .fraction (1-9 digits) and Z or ±HH:MM, such as 2016-09-14T13:37:26",
            })?
            .into_owned();

        let object_type = required("objectType", raw.object_type)?;
        let object_type = as_string(object_type)
            .filter(|s| is_identifier(s))
            .ok_or(EnvelopeError::InvalidField {
                field: "objectType",
                reason: "must be an identifier such as BunkerOrder",
            })?
            .into_owned();

        let event_type = required("eventType", raw.event_type)?;
        let event_type = as_string(event_type)
            .and_then(|s| EventType::from_code(&s))
            .ok_or(EnvelopeError::InvalidField {
                field: "eventType",
                reason: "must be one of C, U, D",
            })?;

        let dataloy_object = required("dataloyObject", raw.dataloy_object)?;
        let dataloy_object = serde_json::from_str::<i64>(dataloy_object).map_err(|_| {
            EnvelopeError::InvalidField {
                field: "dataloyObject",
                reason: "must be an integer",
            }
        })?;

        let subscription = required("subscription", raw.subscription)?;
        let not_an_object = || EnvelopeError::InvalidField {
            field: "subscription",
            reason: "must be an object",
        };
        if !subscription.starts_with('{') {
            return Err(not_an_object());
        }
        let (mut subscription_key, mut keys) = (None, 0);
        let mut subscription_self = None;
        scan::scan(subscription, MAX_NESTING, |member| {
            match member_name(member.raw_key).as_deref() {
                Some("key") => {
                    subscription_key = serde_json::from_str::<i64>(member.value).ok();
                    keys += 1;
                }
                Some("self") => {
                    subscription_self = Some(match subscription_self {
                        None => Some(member.value),
                        Some(_) => None,
                    })
                }
                _ => {}
            }
        })
        .map_err(|_| not_an_object())?;
        if keys > 1 {
            return Err(not_an_object());
        }

        if let Some(resource) = raw.resource {
            if !(resource.starts_with('{') || resource == "null") {
                return Err(EnvelopeError::InvalidField {
                    field: "resource",
                    reason: "must be an object or null",
                });
            }
        }

        let origin = [raw.object_self, subscription_self]
            .into_iter()
            .find_map(|url| origin::of(url.flatten()?));
        Ok(Envelope {
            id,
            event_time,
            object_type,
            event_type,
            dataloy_object,
            subscription_key,
            origin,
        })
    }
}

/// A member's name with its escapes decoded; borrowed from the body when it has none.
fn member_name(raw_key: &str) -> Option<Cow<'_, str>> {
    if raw_key.contains('\\') {
        serde_json::from_str::<String>(&format!("\"{raw_key}\""))
            .ok()
            .map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(raw_key))
    }
}

/// Why `serde_json` refuses a body the scan found malformed (or with a duplicated envelope
/// member): its message names the line and column. Only on this rare path is the body parsed
/// twice.
fn explain_invalid_json(text: &str) -> EnvelopeError {
    #[derive(Deserialize)]
    #[allow(dead_code)] // fields exist so that serde reports a duplicated one
    struct Members<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "eventTime")]
        event_time: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "objectType")]
        object_type: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "eventType")]
        event_type: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "dataloyObject")]
        dataloy_object: Option<&'a RawValue>,
        #[serde(borrow, default)]
        subscription: Option<&'a RawValue>,
        #[serde(borrow, default)]
        resource: Option<&'a RawValue>,
    }
    // A struct would also take an array, and judge a scalar by its type rather than its syntax.
    let outcome = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Members<'_>>(text).map(drop)
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map(drop)
    };
    let message = match outcome {
        Err(e) => e.to_string(),
        Ok(()) => "not a single well-formed JSON value".to_owned(),
    };
    EnvelopeError::InvalidJson(message)
}

/// `line L column C` of a byte offset, counted like `serde_json` does (both from 1).
fn position(text: &str, at: usize) -> String {
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1)
        + 1;
    format!("line {line} column {column}")
}

fn required<'a>(field: &'static str, value: Option<&'a str>) -> Result<&'a str, EnvelopeError> {
    match value {
        Some(v) if v != "null" => Ok(v),
        _ => Err(EnvelopeError::MissingField(field)),
    }
}

fn id_error(raw: &str) -> EnvelopeError {
    let reason = match as_string(raw) {
        None if raw.starts_with('"') => "is not a valid JSON string (bad escape)",
        None => "must be a string",
        Some(s) => NotificationId::parse(&s).err().unwrap_or("is invalid"),
    };
    EnvelopeError::InvalidField {
        field: "id",
        reason,
    }
}

/// The value as a string, if it is a JSON string; borrowed from the body unless it has escapes
/// to decode.
fn as_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && s.len() <= MAX_OBJECT_TYPE_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Longest `eventTime` we accept: `YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM`.
pub const MAX_EVENT_TIME_LEN: usize = 35;

/// Dataloy sends local date-times without a zone (`2016-09-14T13:37:26`). Accepted, exactly:
/// `YYYY-MM-DDTHH:MM:SS`, then optionally `.` and 1 to 9 digits, then optionally `Z` or
/// `±HH:MM`; a real date (years 0001 to 9999) and time (no leap second `:60`). Nothing else: no
/// whitespace, no lowercase `t`/`z`, no space for `T`, no single-digit fields. Checked byte by
/// byte, so its length is bounded ([`MAX_EVENT_TIME_LEN`]) before anything else looks at it.
fn is_dataloy_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 19 || b.len() > MAX_EVENT_TIME_LEN {
        return false;
    }
    let digits = |from: usize, len: usize| -> Option<u32> {
        b[from..from + len].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let shape = b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0, 4),
        digits(5, 2),
        digits(8, 2),
        digits(11, 2),
        digits(14, 2),
        digits(17, 2),
    ) else {
        return false;
    };
    let real = year >= 1
        && chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_some()
        && hour < 24
        && minute < 60
        && second < 60;
    if !(shape && real) {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&len) {
            return false;
        }
        rest = &fraction[len..];
    }
    match rest {
        [] | [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let (h, m) = (
                [h1, h2].iter().all(|c| c.is_ascii_digit()),
                [m1, m2].iter().all(|c| c.is_ascii_digit()),
            );
            h && m && (*h1 - b'0') * 10 + (*h2 - b'0') < 24 && (*m1 - b'0') * 10 + (*m2 - b'0') < 60
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATED: &[u8] = include_bytes!("../tests/fixtures/bunker-order-updated.json");
    const ALERT: &[u8] = include_bytes!("../tests/fixtures/bunker-order-line-alert-script.json");

    #[test]
    fn documented_samples_parse() {
        let env = Envelope::parse(UPDATED).unwrap();
        assert_eq!(env.id.as_str(), "1573335-244070007");
        assert_eq!(env.object_type, "PortCall");
        assert_eq!(env.event_type, EventType::Update);
        assert_eq!(env.dataloy_object, 189126972);
        assert_eq!(env.subscription_key, Some(243885046));

        let alert = Envelope::parse(ALERT).unwrap();
        assert_eq!(alert.id.as_str(), "245-320996749");
        assert_eq!(alert.object_type, "BunkerOrderLine");
    }

    #[test]
    fn event_time_forms() {
        for ok in [
            "2016-09-14T13:37:26",
            "2016-09-14T13:37:26.1",
            "2016-09-14T13:37:26.123",
            "2016-09-14T13:37:26.123456789",
            "2016-09-14T13:37:26Z",
            "2016-09-14T13:37:26.5+02:00",
            "2016-09-14T13:37:26-11:30",
            "2016-02-29T00:00:00",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59.999999999+23:59",
        ] {
            assert!(is_dataloy_date_time(ok), "{ok}");
        }
        let padded_ideographic = format!("{}2016-09-14T13:37:26.1", "\u{3000}".repeat(22_000));
        let padded_spaces = format!("{}2016-09-14T13:37:26", " ".repeat(70_000));
        let long_fraction = format!("2016-09-14T13:37:26.{}", "0".repeat(65_536));
        for bad in [
            "2016-13-14T13:37:26",
            "2015-02-29T13:37:26",
            "2016-09-14T13:37:60",
            "2016-09-14T24:00:00",
            "0000-01-01T00:00:00",
            "-0001-01-01T00:00:00",
            "+12345-01-01T00:00:00",
            "2016-9-4T1:2:3",
            " 2016-09-14T13:37:26",
            "2016-09-14T13:37:26 ",
            "2016-09-14T 13:37:26",
            "2016-09-14 13:37:26Z",
            "2016-09-14t13:37:26",
            "2016-09-14T13:37:26z",
            "2016-09-14T13:37:26.",
            "2016-09-14T13:37:26.1234567890",
            "2016-09-14T13:37:26.1234567890123",
            "2016-09-14T13:37:26+2:00",
            "2016-09-14T13:37:26+24:00",
            "2016-09-14T13:37:26+0200",
            "2016-09-14T13:37:26ZZ",
            "２０16-09-14T13:37:26",
            "yesterday",
            "2016-09-14",
            "",
            &padded_ideographic,
            &padded_spaces,
            &long_fraction,
        ] {
            assert!(!is_dataloy_date_time(bad), "{bad:.40}");
        }
    }

    #[test]
    fn id_length_is_counted_in_bytes() {
        assert!(NotificationId::parse(&"y".repeat(128)).is_ok());
        assert!(NotificationId::parse(&"y".repeat(129)).is_err());
        // 32 emoji are 128 bytes; 64 emoji (256 bytes) broke the AMQP message_id before.
        assert!(NotificationId::parse(&"\u{1F600}".repeat(32)).is_ok());
        assert_eq!(
            NotificationId::parse(&"\u{1F600}".repeat(33)),
            Err("must be at most 128 bytes in UTF-8")
        );
        assert!(NotificationId::parse(&"\u{1F600}".repeat(64)).is_err());
    }

    #[test]
    fn serde_json_reads_every_depth_we_accept() {
        let nested = |levels: usize| {
            with_member(&format!(
                r#","resource":{{"a":{}1{}}}"#,
                "[".repeat(levels - 2),
                "]".repeat(levels - 2)
            ))
        };
        let deepest = nested(MAX_NESTING);
        assert!(Envelope::parse(&deepest).is_ok());
        assert!(serde_json::from_slice::<serde_json::Value>(&deepest).is_ok());
        let too_deep = nested(MAX_NESTING + 1);
        assert!(Envelope::parse(&too_deep).is_err());
        assert!(serde_json::from_slice::<serde_json::Value>(&too_deep).is_err());
    }

    fn with_member(extra: &str) -> Vec<u8> {
        with_subscription(r#"{"key":7}"#, extra)
    }

    fn with_subscription(subscription: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"id":"x","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"C","dataloyObject":1,"subscription":{subscription}{extra}}}"#).into_bytes()
    }

    #[test]
    fn the_subscription_key_is_found_like_any_member() {
        let key = |subscription: &str| {
            Envelope::parse(&with_subscription(subscription, "")).map(|e| e.subscription_key)
        };
        assert_eq!(key(r#"{"self":"x","key":7}"#), Ok(Some(7)));
        assert_eq!(key(r#"{"k\u0065y":8}"#), Ok(Some(8)));
        assert_eq!(key(r#"{"key":"7"}"#), Ok(None));
        assert_eq!(key("{}"), Ok(None));
        let refused = Err(EnvelopeError::InvalidField {
            field: "subscription",
            reason: "must be an object",
        });
        assert_eq!(key(r#"{"key":7,"key":8}"#), refused);
        assert_eq!(key("[7]"), refused);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let deep = |levels: usize| {
            format!(
                r#","resource":{{"a":{}1{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // `resource` is level 1 of the body and its object level 2.
        assert!(Envelope::parse(&with_member(&deep(MAX_NESTING - 2))).is_ok());
        let error = Envelope::parse(&with_member(&deep(MAX_NESTING - 1))).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::InvalidJson(
                "arrays and objects nested deeper than 127 levels".to_owned()
            )
        );
    }

    #[test]
    fn a_duplicated_envelope_member_is_refused_with_serde_json_s_message() {
        let error = Envelope::parse(&with_member(r#","eventType":"D""#)).unwrap_err();
        assert_eq!(error.code(), "invalid_json");
        assert!(
            error.to_string().contains("duplicate field `eventType`"),
            "{error}"
        );
        // Other members may repeat: they are not the gateway's to judge.
        assert!(Envelope::parse(&with_member(r#","x":1,"x":2"#)).is_ok());
    }

    #[test]
    fn malformed_json_is_explained_with_line_and_column() {
        let error = Envelope::parse(b"{\n\"id\": 1,\n}").unwrap_err();
        assert_eq!(error.code(), "invalid_json");
        assert!(error.to_string().contains("line 3 column 1"), "{error}");
        for (body, message) in [
            (&b"1 2"[..], "trailing characters at line 1 column 3"),
            (b"[1,", "EOF while parsing a value at line 1 column 3"),
        ] {
            let error = Envelope::parse(body).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    /// Found by fuzzing: bodies `serde_json::Value` (what consumers use) refuses were accepted.
    #[test]
    fn what_consumers_cannot_read_is_refused_at_the_door() {
        for (extra, message) in [
            (
                r#","resource":{"n":1e400}"#,
                "number out of range at line 1 column 137",
            ),
            (
                r#","resource":{"s":"\ud800"}"#,
                "unpaired UTF-16 surrogate in a \\u escape at line 1 column 138",
            ),
        ] {
            let body = with_member(extra);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
            let error = Envelope::parse(&body).unwrap_err();
            assert_eq!(error.code(), "invalid_json");
            assert!(error.to_string().contains(message), "{error}");
            assert!(error.to_string().contains("RFC 7493"), "{error}");
        }
        assert!(Envelope::parse(&with_member(
            r#","resource":{"n":1e308,"s":"\ud83d\ude00"}"#
        ))
        .is_ok());
    }

    #[test]
    fn an_escaped_member_name_is_the_member() {
        let body = String::from_utf8(with_member(""))
            .unwrap()
            .replace(r#""objectType""#, r#""object\u0054ype""#);
        assert_eq!(Envelope::parse(body.as_bytes()).unwrap().object_type, "X");
    }

    #[test]
    fn escaped_id_is_decoded() {
        let body = br#"{"id":"a\u002db","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"C","dataloyObject":1,"subscription":{}}"#;
        assert_eq!(Envelope::parse(body).unwrap().id.as_str(), "a-b");
    }
}
