//! `[sinks.kafka.cloudevents]` and `[sinks.rabbitmq.cloudevents]`: CloudEvents binary mode, opt in
//! per sink (on when the table is present, unless `enabled = false`). Validated at start-up so
//! every header the sink writes fits its transport: the `source` and the longest rendering of the
//! `type` template are bounded in bytes and printable, and `time_zone` names a zone the tz
//! database knows.

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::sink::template::Template;

/// Longest configured `source` and longest rendering of the `type` template, in bytes: far more
/// than a URI or a reverse-DNS type needs, and small enough that every header of a message fits
/// the smallest AMQP frame (4096 bytes) with the others (see `sink::cloudevents`).
pub const MAX_ATTRIBUTE_LEN: usize = 255;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudEventsSettings {
    /// Switches the sink's CloudEvents headers off while the table stays (or on from the
    /// environment: `DATALOY_GATEWAY__SINKS__KAFKA__CLOUDEVENTS__ENABLED=true`).
    pub enabled: bool,
    /// `source` for every event. Unset: the origin (`scheme://host[:port]`) of the
    /// notification's `dataloyObjectSelf`, else of `subscription.self`, else
    /// [`crate::sink::cloudevents::UNKNOWN_SOURCE`].
    pub source: Option<String>,
    /// `type` template; `{action}` is `created`, `updated` or `deleted` (from C, U, D).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The zone Dataloy's `eventTime` is in when it carries no offset (it never does): `UTC`, a
    /// fixed offset such as `+01:00`, or a tz database name such as `Europe/Oslo`.
    pub time_zone: String,
}

impl Default for CloudEventsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            source: None,
            event_type: "com.dataloy.{objectType}.{action}".into(),
            time_zone: "UTC".into(),
        }
    }
}

/// The keys of one sink's table, for messages.
pub struct Keys {
    pub source: &'static str,
    pub event_type: &'static str,
    pub time_zone: &'static str,
}

pub const KAFKA_KEYS: Keys = Keys {
    source: "sinks.kafka.cloudevents.source",
    event_type: "sinks.kafka.cloudevents.type",
    time_zone: "sinks.kafka.cloudevents.time_zone",
};

pub const RABBITMQ_KEYS: Keys = Keys {
    source: "sinks.rabbitmq.cloudevents.source",
    event_type: "sinks.rabbitmq.cloudevents.type",
    time_zone: "sinks.rabbitmq.cloudevents.time_zone",
};

impl CloudEventsSettings {
    /// Whether the table is present and on.
    pub fn is_on(settings: &Option<CloudEventsSettings>) -> bool {
        settings.as_ref().is_some_and(|s| s.enabled)
    }

    pub(super) fn validate(&self, keys: &Keys) -> Result<(), ConfigError> {
        if let Some(source) = &self.source {
            check_attribute(keys.source, source)?;
        }
        let template = Template::parse(&self.event_type)
            .map_err(|e| invalid(keys.event_type, e.to_string()))?;
        let longest = template.max_rendered_len();
        if longest > MAX_ATTRIBUTE_LEN || template.is_empty() {
            return Err(invalid(
                keys.event_type,
                format!(
                    "renders to {longest} bytes at most; it must be 1 to {MAX_ATTRIBUTE_LEN} \
                     (placeholders count at their longest: {{objectType}} and {{id}} 128)"
                ),
            ));
        }
        if !template.literals().all(is_printable) {
            return Err(invalid(
                keys.event_type,
                "must be printable ASCII without spaces, such as com.dataloy.{objectType}.{action}",
            ));
        }
        parse_time_zone(&self.time_zone).map_err(|e| {
            invalid(
                keys.time_zone,
                format!(
                    "`{}` is not a time zone ({e}); use UTC, an offset such as +01:00, or a tz \
                     database name such as Europe/Oslo",
                    self.time_zone
                ),
            )
        })?;
        Ok(())
    }
}

/// The zone `time_zone` names: `UTC` (or `Z`), a fixed offset `±HH:MM`, or a name in the tz
/// database (the system's, else the copy built in).
pub fn parse_time_zone(text: &str) -> Result<jiff::tz::TimeZone, String> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    if let Some(sign) = text.strip_prefix(['+', '-']).map(|_| &text[..1]) {
        let b = text.as_bytes();
        let digits = |at: usize| -> Option<i32> {
            let (tens, ones) = (b.get(at)?, b.get(at + 1)?);
            (tens.is_ascii_digit() && ones.is_ascii_digit())
                .then(|| i32::from(tens - b'0') * 10 + i32::from(ones - b'0'))
        };
        let (Some(hours), Some(minutes)) = (digits(1), digits(4)) else {
            return Err("an offset is written ±HH:MM".into());
        };
        if b.len() != 6 || b[3] != b':' || hours > 23 || minutes > 59 {
            return Err("an offset is written ±HH:MM, at most ±23:59".into());
        }
        let seconds = (hours * 3600 + minutes * 60) * if sign == "-" { -1 } else { 1 };
        let offset = jiff::tz::Offset::from_seconds(seconds).map_err(|e| e.to_string())?;
        return Ok(jiff::tz::TimeZone::fixed(offset));
    }
    jiff::tz::TimeZone::get(text).map_err(|e| e.to_string())
}

fn check_attribute(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > MAX_ATTRIBUTE_LEN || !is_printable(value) {
        return Err(invalid(
            key,
            format!(
                "must be 1 to {MAX_ATTRIBUTE_LEN} bytes of printable ASCII without spaces (a URI \
                 reference such as https://dataloy.example.com)"
            ),
        ));
    }
    Ok(())
}

fn is_printable(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(change: impl FnOnce(&mut CloudEventsSettings)) -> Result<(), String> {
        let mut settings = CloudEventsSettings::default();
        change(&mut settings);
        settings.validate(&KAFKA_KEYS).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(check(|_| {}), Ok(()));
        assert_eq!(check(|s| s.time_zone = "Europe/Oslo".into()), Ok(()));
        assert_eq!(check(|s| s.time_zone = "+05:30".into()), Ok(()));
        assert_eq!(
            check(|s| s.source = Some("https://dataloy.example.com".into())),
            Ok(())
        );
    }

    type Change = Box<dyn FnOnce(&mut CloudEventsSettings)>;

    #[test]
    fn each_mistake_names_its_key() {
        let cases: [(&str, Change); 8] = [
            ("source", Box::new(|s| s.source = Some(String::new()))),
            ("source", Box::new(|s| s.source = Some("a b".into()))),
            ("source", Box::new(|s| s.source = Some("x".repeat(256)))),
            ("type", Box::new(|s| s.event_type = "{nope}".into())),
            ("type", Box::new(|s| s.event_type = String::new())),
            ("type", Box::new(|s| s.event_type = "t {id}".into())),
            (
                "type",
                Box::new(|s| s.event_type = format!("{}.{{objectType}}", "x".repeat(127))),
            ),
            (
                "time_zone",
                Box::new(|s| s.time_zone = "Mars/Olympus".into()),
            ),
        ];
        for (key, change) in cases {
            let error = check(change).expect_err(key);
            assert!(
                error.contains(&format!("`sinks.kafka.cloudevents.{key}`")),
                "{error}"
            );
        }
        // 127 literal bytes and {objectType} (128): 255, the most.
        assert_eq!(
            check(|s| s.event_type = format!("{}{{objectType}}", "x".repeat(127))),
            Ok(())
        );
    }
}
