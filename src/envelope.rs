//! The Dataloy notification envelope: the few fields the gateway needs to route, deduplicate and
//! label a notification, parsed from the received bytes without building the (possibly large)
//! `resource` object. The body itself is never re-serialized: sinks relay the bytes as received.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest notification id we accept; Dataloy ids look like `1573335-244070007`.
pub const MAX_ID_LEN: usize = 128;
/// Longest object type name we accept (an identifier such as `BunkerOrderLine`).
pub const MAX_OBJECT_TYPE_LEN: usize = 128;
/// Deepest nesting of arrays and objects we relay. Dataloy's payloads nest a handful of levels;
/// far deeper JSON is hostile and would fail in consumers whose parsers stop at 128 (serde_json's
/// default), so it is refused here rather than queued.
pub const MAX_NESTING: usize = 128;

/// A validated notification id: non-empty, at most [`MAX_ID_LEN`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationId(String);

impl NotificationId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must be a non-empty string");
        }
        if raw.chars().count() > MAX_ID_LEN {
            return Err("must be at most 128 characters");
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

/// The envelope as raw JSON slices borrowed from the body; unknown fields are skipped.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
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

#[derive(Deserialize)]
struct RawSubscription<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
}

impl Envelope {
    /// Parses and validates the envelope of a notification body.
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| EnvelopeError::InvalidJson(format!("invalid UTF-8: {e}")))?;
        if nesting_exceeds(body, MAX_NESTING) {
            return Err(EnvelopeError::InvalidJson(format!(
                "arrays and objects nested deeper than {MAX_NESTING} levels"
            )));
        }
        let first = text.trim_start().as_bytes().first().copied();
        if first != Some(b'{') {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(EnvelopeError::NotAnObject),
                Err(e) => Err(EnvelopeError::InvalidJson(e.to_string())),
            };
        }
        let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
            // A field of the wrong JSON kind never fails here (fields are raw), so any error is
            // malformed JSON or a duplicated key.
            EnvelopeError::InvalidJson(e.to_string())
        })?;

        let id = required("id", raw.id)?;
        let id = as_string(id)
            .and_then(|s| NotificationId::parse(&s).ok())
            .ok_or_else(|| id_error(id))?;

        let event_time = required("eventTime", raw.event_time)?;
        let event_time = as_string(event_time)
            .filter(|s| is_dataloy_date_time(s))
            .ok_or(EnvelopeError::InvalidField {
                field: "eventTime",
                reason: "must be a date-time such as 2016-09-14T13:37:26",
            })?;

        let object_type = required("objectType", raw.object_type)?;
        let object_type = as_string(object_type).filter(|s| is_identifier(s)).ok_or(
            EnvelopeError::InvalidField {
                field: "objectType",
                reason: "must be an identifier such as BunkerOrder",
            },
        )?;

        let event_type = required("eventType", raw.event_type)?;
        let event_type = as_string(event_type)
            .and_then(|s| EventType::from_code(&s))
            .ok_or(EnvelopeError::InvalidField {
                field: "eventType",
                reason: "must be one of C, U, D",
            })?;

        let dataloy_object = required("dataloyObject", raw.dataloy_object)?;
        let dataloy_object = serde_json::from_str::<i64>(dataloy_object.get()).map_err(|_| {
            EnvelopeError::InvalidField {
                field: "dataloyObject",
                reason: "must be an integer",
            }
        })?;

        let subscription = required("subscription", raw.subscription)?;
        if !starts_with(subscription, b'{') {
            return Err(EnvelopeError::InvalidField {
                field: "subscription",
                reason: "must be an object",
            });
        }
        let subscription: RawSubscription<'_> =
            serde_json::from_str(subscription.get()).map_err(|_| EnvelopeError::InvalidField {
                field: "subscription",
                reason: "must be an object",
            })?;
        let subscription_key = subscription
            .key
            .and_then(|key| serde_json::from_str::<i64>(key.get()).ok());

        if let Some(resource) = raw.resource {
            if !(starts_with(resource, b'{') || resource.get() == "null") {
                return Err(EnvelopeError::InvalidField {
                    field: "resource",
                    reason: "must be an object or null",
                });
            }
        }

        Ok(Envelope {
            id,
            event_time,
            object_type,
            event_type,
            dataloy_object,
            subscription_key,
        })
    }
}

/// Whether brackets outside strings nest deeper than `max`. One pass, no allocation. String
/// contents, most of a Dataloy body, are skipped with `memchr` rather than looked at byte by
/// byte (the byte-by-byte loop was a tenth of the request path's CPU in a profile).
fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'"' => match end_of_string(body, at + 1) {
                Some(after) => {
                    at = after;
                    continue;
                }
                None => return false, // unterminated: the JSON parser reports it
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

/// Index just after the quote that closes the string whose contents start at `at`.
fn end_of_string(body: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
        if body[found] == b'"' {
            return Some(found + 1);
        }
        at = found + 2; // an escape: the next byte never closes the string
    }
}

fn required<'a>(
    field: &'static str,
    value: Option<&'a RawValue>,
) -> Result<&'a RawValue, EnvelopeError> {
    match value {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err(EnvelopeError::MissingField(field)),
    }
}

fn id_error(raw: &RawValue) -> EnvelopeError {
    let reason = match as_string(raw) {
        None if starts_with(raw, b'"') => "is not a valid JSON string (bad escape)",
        None => "must be a string",
        Some(s) => NotificationId::parse(&s).err().unwrap_or("is invalid"),
    };
    EnvelopeError::InvalidField {
        field: "id",
        reason,
    }
}

/// The value as a string, if it is a JSON string (escapes decoded).
fn as_string(raw: &RawValue) -> Option<String> {
    if !starts_with(raw, b'"') {
        return None;
    }
    serde_json::from_str::<String>(raw.get()).ok()
}

fn starts_with(raw: &RawValue, byte: u8) -> bool {
    raw.get().as_bytes().first() == Some(&byte)
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

/// Dataloy sends local date-times without a zone (`2016-09-14T13:37:26`); fractional seconds and
/// an offset (`Z`, `+01:00`) are accepted too.
fn is_dataloy_date_time(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        || chrono::DateTime::parse_from_rfc3339(s).is_ok()
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
            "2016-09-14T13:37:26.123",
            "2016-09-14T13:37:26Z",
            "2016-09-14T13:37:26.5+02:00",
        ] {
            assert!(is_dataloy_date_time(ok), "{ok}");
        }
        for bad in ["2016-13-14T13:37:26", "yesterday", "2016-09-14", ""] {
            assert!(!is_dataloy_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(nesting_exceeds(deep.as_bytes(), 128));
        let shallow = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(!nesting_exceeds(shallow.as_bytes(), 128));
        let quoted = format!("[\"{}\\\"\"]", "[".repeat(500));
        assert!(!nesting_exceeds(quoted.as_bytes(), 128));
        let after_escaped_backslash = format!("[\"a\\\\\",{}]", "[".repeat(200));
        assert!(nesting_exceeds(after_escaped_backslash.as_bytes(), 128));
    }

    /// The byte-by-byte scan the fast one replaced: the reference it must agree with.
    fn nesting_exceeds_by_bytes(body: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &byte in body {
            if in_string {
                match (escaped, byte) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn the_fast_nesting_scan_agrees_with_the_byte_by_byte_one(
            body in proptest::collection::vec(proptest::sample::select(b"[]{}\"\\a".to_vec()), 0..400),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(
                nesting_exceeds(&body, max),
                nesting_exceeds_by_bytes(&body, max)
            );
        }
    }

    #[test]
    fn escaped_id_is_decoded() {
        let body = br#"{"id":"a\u002db","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"C","dataloyObject":1,"subscription":{}}"#;
        assert_eq!(Envelope::parse(body).unwrap().id.as_str(), "a-b");
    }
}
