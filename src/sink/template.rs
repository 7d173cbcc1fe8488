//! Routing templates such as `dataloy.{objectType}` or `{objectType}:{dataloyObject}`: parsed
//! once at start-up (an unknown placeholder is a configuration error), rendered per message
//! without re-reading the body.

use std::fmt::Write;

use crate::envelope::{Envelope, EventType, MAX_ID_LEN, MAX_OBJECT_TYPE_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ObjectType,
    EventType,
    DataloyObject,
    Id,
    SubscriptionKey,
    /// `created`, `updated` or `deleted`, from the event type.
    Action,
}

impl Field {
    const ALL: [(&'static str, Field); 6] = [
        ("objectType", Field::ObjectType),
        ("eventType", Field::EventType),
        ("dataloyObject", Field::DataloyObject),
        ("id", Field::Id),
        ("subscriptionKey", Field::SubscriptionKey),
        ("action", Field::Action),
    ];

    /// The most bytes the field renders to, by the envelope's limits.
    fn max_len(self) -> usize {
        match self {
            Field::ObjectType => MAX_OBJECT_TYPE_LEN,
            Field::EventType => 1,
            Field::DataloyObject | Field::SubscriptionKey => "-9223372036854775808".len(),
            Field::Id => MAX_ID_LEN,
            Field::Action => "created".len(),
        }
    }
}

/// The word for a change kind, as CloudEvents types usually say it.
pub fn action(event_type: EventType) -> &'static str {
    match event_type {
        EventType::Create => "created",
        EventType::Update => "updated",
        EventType::Delete => "deleted",
    }
}

/// A piece of a template with placeholders: literal text or one of the fields `F` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<F> {
    Literal(String),
    Field(F),
}

type Part = Piece<Field>;

/// Why a template's text cannot be split into pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlaceholderError {
    /// A `{` without its `}`.
    Unclosed,
    /// A placeholder none of the known fields is named like.
    Unknown(String),
}

/// Splits `text` into literal pieces and `{name}` placeholders, each name looked up in `known`:
/// the one parser of every routing template the gateway has (the sinks' keys and topics, the
/// dead-letter forwarder's routing key).
pub(crate) fn split_placeholders<F: Copy>(
    text: &str,
    known: &[(&str, F)],
) -> Result<Vec<Piece<F>>, PlaceholderError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(PlaceholderError::Unclosed)?;
        let name = &after[..close];
        let field = known
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| PlaceholderError::Unknown(name.to_owned()))?;
        pieces.push(Piece::Field(field));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(pieces)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("has an unknown placeholder `{{{0}}}`; known: {{objectType}}, {{eventType}}, {{dataloyObject}}, {{id}}, {{subscriptionKey}}, {{action}}")]
    UnknownField(String),
    #[error("has an unclosed `{{`")]
    Unclosed,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let parts = split_placeholders(text, &Field::ALL).map_err(|e| match e {
            PlaceholderError::Unclosed => TemplateError::Unclosed,
            PlaceholderError::Unknown(name) => TemplateError::UnknownField(name),
        })?;
        Ok(Template { parts })
    }

    pub fn render(&self, envelope: &Envelope) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(Field::ObjectType) => out.push_str(&envelope.object_type),
                Part::Field(Field::EventType) => out.push_str(envelope.event_type.as_str()),
                Part::Field(Field::DataloyObject) => {
                    let _ = write!(out, "{}", envelope.dataloy_object);
                }
                Part::Field(Field::Id) => out.push_str(envelope.id.as_str()),
                Part::Field(Field::SubscriptionKey) => {
                    if let Some(key) = envelope.subscription_key {
                        let _ = write!(out, "{key}");
                    }
                }
                Part::Field(Field::Action) => out.push_str(action(envelope.event_type)),
            }
        }
        out
    }

    /// The most bytes a rendering can take, with every placeholder at its longest.
    pub fn max_rendered_len(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.len(),
                Part::Field(field) => field.max_len(),
            })
            .sum()
    }

    /// The literal parts.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Literal(text) => Some(text.as_str()),
            Part::Field(_) => None,
        })
    }

    /// Whether every rendering is empty.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether every rendering is a legal Kafka topic name: literal parts use only the legal
    /// characters and placeholders expand to identifiers, codes or numbers (not the free-form id).
    pub fn renders_valid_topic_names(&self) -> bool {
        !self.parts.is_empty()
            && self.parts.iter().all(|part| match part {
                Part::Literal(text) => text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                Part::Field(field) => *field != Field::Id,
            })
    }

    /// Whether rendering depends on the envelope at all.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field() {
        let body = include_bytes!("../../tests/fixtures/bunker-order-updated.json");
        let env = Envelope::parse(body).unwrap();
        let t = Template::parse(
            "{objectType}.{eventType}:{dataloyObject}/{id}@{subscriptionKey}~{action}",
        )
        .unwrap();
        assert_eq!(
            t.render(&env),
            "PortCall.U:189126972/1573335-244070007@243885046~updated"
        );
        assert_eq!(
            t.max_rendered_len(),
            128 + 1 + 1 + 1 + 20 + 1 + 128 + 1 + 20 + 1 + 7
        );
        assert!(Template::parse("dataloy").unwrap().is_constant());
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        assert_eq!(
            Template::parse("{nope}").unwrap_err(),
            TemplateError::UnknownField("nope".into())
        );
        assert_eq!(
            Template::parse("a{id").unwrap_err(),
            TemplateError::Unclosed
        );
    }
}
