//! What a forwarded dead letter says besides its body: the reason headers, shared by both
//! destinations (the notification's own `dataloy-*` and trace headers come from the sinks'
//! encoders), and the RabbitMQ routing key template over an entry's metadata.
//!
//! The broker's error text can be long; the `dataloy-dead-letter-error` header carries at most
//! [`ERROR_HEADER_MAX`] bytes of it, so an AMQP message's header frame stays within the 4096
//! bytes every broker accepts. A longer text is cut at a character boundary and says so in the
//! header itself (`… [cut: N bytes in all; the entry keeps the whole text]`), never silently.

use chrono::{DateTime, SecondsFormat};

use super::super::DeadLetterMeta;
use crate::sink::template::{split_placeholders, Piece, PlaceholderError};

/// Most bytes of the broker's error text in the `dataloy-dead-letter-error` header.
pub const ERROR_HEADER_MAX: usize = 1024;

/// The reason headers of a forwarded dead letter, in order (names and values).
pub fn reason_headers(meta: &DeadLetterMeta) -> Vec<(&'static str, String)> {
    vec![
        (
            "dataloy-dead-letter-reason",
            meta.reason.as_str().to_owned(),
        ),
        ("dataloy-dead-letter-sink", meta.sink.clone()),
        ("dataloy-dead-letter-error", bounded_error(&meta.error)),
        ("dataloy-dead-letter-attempts", meta.attempts.to_string()),
        (
            "dataloy-dead-letter-first-attempt",
            rfc3339(meta.first_attempt_ms),
        ),
        (
            "dataloy-dead-letter-last-attempt",
            rfc3339(meta.last_attempt_ms),
        ),
        ("dataloy-dead-letter-entry", meta.name.clone()),
    ]
}

/// `error`, or its first bytes (cut at a character boundary) with a note saying it was cut.
pub fn bounded_error(error: &str) -> String {
    if error.len() <= ERROR_HEADER_MAX {
        return error.to_owned();
    }
    let note = format!(
        " … [cut: {} bytes in all; the entry keeps the whole text]",
        error.len()
    );
    let mut end = ERROR_HEADER_MAX - note.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &error[..end])
}

/// Milliseconds since the epoch as RFC 3339 UTC, e.g. `2026-12-01T10:31:42.123Z`.
fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Sink,
    Reason,
    ObjectType,
    EventType,
}

const FIELDS: [(&str, Field); 4] = [
    ("sink", Field::Sink),
    ("reason", Field::Reason),
    ("objectType", Field::ObjectType),
    ("eventType", Field::EventType),
];

type Part = Piece<Field>;

/// `dead_letters.forward.rabbitmq.routing_key`, e.g. `{sink}.{reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey {
    parts: Vec<Part>,
}

impl RoutingKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = split_placeholders(text, &FIELDS).map_err(|e| match e {
            PlaceholderError::Unclosed => "has an unclosed `{`".to_owned(),
            PlaceholderError::Unknown(name) => format!(
                "has an unknown placeholder `{{{name}}}`; known: {{sink}}, {{reason}}, \
                 {{objectType}}, {{eventType}}"
            ),
        })?;
        Ok(Self { parts })
    }

    /// Bytes of the literal parts.
    pub fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.len(),
                Part::Field(_) => 0,
            })
            .sum()
    }

    pub fn render(&self, meta: &DeadLetterMeta) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(text) => text,
                Part::Field(Field::Sink) => &meta.sink,
                Part::Field(Field::Reason) => meta.reason.as_str(),
                Part::Field(Field::ObjectType) => &meta.object_type,
                Part::Field(Field::EventType) => &meta.event_type,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary_and_says_so() {
        let short = "no queue bound";
        assert_eq!(bounded_error(short), short);
        let long = "é😀".repeat(400);
        let bounded = bounded_error(&long);
        assert!(bounded.len() <= ERROR_HEADER_MAX, "{}", bounded.len());
        assert!(bounded.ends_with(&format!(
            "[cut: {} bytes in all; the entry keeps the whole text]",
            long.len()
        )));
        assert!(long.starts_with(bounded.split(" … [cut").next().unwrap()));
        let exact = "x".repeat(ERROR_HEADER_MAX);
        assert_eq!(bounded_error(&exact), exact);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_764_585_102_123), "2025-12-01T10:31:42.123Z");
    }

    #[test]
    fn the_routing_key_template_knows_its_placeholders() {
        assert!(RoutingKey::parse("{sink}.{reason}.{objectType}.{eventType}").is_ok());
        assert!(RoutingKey::parse("{id}").unwrap_err().contains("unknown"));
        assert!(RoutingKey::parse("dl.{sink")
            .unwrap_err()
            .contains("unclosed"));
        assert_eq!(RoutingKey::parse("dl.{sink}").unwrap().literal_len(), 3);
    }
}
