//! CloudEvents 1.0 in binary mode: the body stays the message's data, byte for byte, and the
//! event's attributes travel as headers, named by each protocol binding: `ce_` for Kafka,
//! `cloudEvents_` for AMQP (the binding's `_` form; RabbitMQ headers). `datacontenttype` is the
//! transport's content type (Kafka header `content-type`, AMQP property `content_type`).
//!
//! - `id`: the notification id; `source`: configured, else the origin of the notification's
//!   Dataloy URLs (`dataloyObjectSelf`, then `subscription.self`), else [`UNKNOWN_SOURCE`];
//! - `type`: a template, by default `com.dataloy.{objectType}.{action}`;
//! - `time`: `eventTime` as RFC 3339: Dataloy sends a local date-time without an offset, so the
//!   offset of the configured zone (`time_zone`, UTC by default) at that date-time is added (in
//!   a daylight-saving fold the earlier instant, in a gap the time after it, as RFC 9557 and
//!   Temporal's "compatible" do); an `eventTime` that carries an offset keeps it;
//! - `subject`: the changed object's key (`dataloyObject`);
//! - with a trace context, `traceparent` and `tracestate` (the distributed tracing extension).
//!
//! Every value is bounded where it enters (configuration, envelope, trace context), so the
//! headers of one message stay under 4 KiB, the smallest frame an AMQP broker may negotiate.

use std::fmt::Write;

use crate::config::{parse_time_zone, CloudEventsSettings};
use crate::envelope::Envelope;
use crate::sink::template::Template;

pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype`: Dataloy's bodies are JSON.
pub const CONTENT_TYPE: &str = "application/json";
/// `source` when none is configured and the notification has no Dataloy URL to take it from.
pub const UNKNOWN_SOURCE: &str = "urn:dataloy:unknown-host";

/// The header names one protocol binding gives the attributes.
pub struct Binding {
    pub specversion: &'static str,
    pub id: &'static str,
    pub source: &'static str,
    pub event_type: &'static str,
    pub time: &'static str,
    pub subject: &'static str,
    pub traceparent: &'static str,
    pub tracestate: &'static str,
}

/// Kafka protocol binding, binary mode.
pub const KAFKA: Binding = Binding {
    specversion: "ce_specversion",
    id: "ce_id",
    source: "ce_source",
    event_type: "ce_type",
    time: "ce_time",
    subject: "ce_subject",
    traceparent: "ce_traceparent",
    tracestate: "ce_tracestate",
};

/// AMQP binding, application properties with the `cloudEvents_` prefix, as RabbitMQ headers.
pub const AMQP: Binding = Binding {
    specversion: "cloudEvents_specversion",
    id: "cloudEvents_id",
    source: "cloudEvents_source",
    event_type: "cloudEvents_type",
    time: "cloudEvents_time",
    subject: "cloudEvents_subject",
    traceparent: "cloudEvents_traceparent",
    tracestate: "cloudEvents_tracestate",
};

/// One sink's CloudEvents settings, parsed once.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    source: Option<String>,
    event_type: Template,
    zone: jiff::tz::TimeZone,
}

/// One notification's attributes (besides `specversion`, `datacontenttype` and trace context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: String,
    /// Absent only if `eventTime` cannot be placed in the zone (out of the zone's range).
    pub time: Option<String>,
    pub subject: String,
}

impl CloudEvents {
    /// From validated settings (`Settings::validate` checked the template and the zone).
    pub fn new(settings: &CloudEventsSettings) -> Self {
        Self {
            source: settings.source.clone(),
            event_type: Template::parse(&settings.event_type).expect("validated at load"),
            zone: parse_time_zone(&settings.time_zone).expect("validated at load"),
        }
    }

    /// From the sink's optional table: `None` when absent or switched off.
    pub fn from_settings(settings: &Option<CloudEventsSettings>) -> Option<Self> {
        settings.as_ref().filter(|s| s.enabled).map(Self::new)
    }

    pub fn attributes<'a>(&'a self, envelope: &'a Envelope) -> Attributes<'a> {
        let source = self
            .source
            .as_deref()
            .or(envelope.origin.as_deref())
            .unwrap_or(UNKNOWN_SOURCE);
        Attributes {
            id: envelope.id.as_str(),
            source,
            event_type: self.event_type.render(envelope),
            time: rfc3339(&envelope.event_time, &self.zone),
            subject: envelope.dataloy_object.to_string(),
        }
    }
}

/// `event_time` (a validated Dataloy date-time) as RFC 3339 in `zone`, when it has no offset.
pub fn rfc3339(event_time: &str, zone: &jiff::tz::TimeZone) -> Option<String> {
    let b = event_time.as_bytes();
    let has_offset = b.last() == Some(&b'Z')
        || (b.len() >= 25 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':');
    if has_offset {
        return Some(event_time.to_owned());
    }
    let civil: jiff::civil::DateTime = event_time.parse().ok()?;
    let zoned = zone.to_ambiguous_zoned_datetime(civil).compatible().ok()?;
    let seconds = zoned.offset().seconds();
    // The digits after the seconds, as Dataloy sent them (none, or `.` and 1 to 9).
    let fraction = &event_time[19..];
    let mut text = String::with_capacity(event_time.len() + 6);
    if seconds % 60 != 0 {
        // A historical offset with seconds (local mean time before ~1900): RFC 3339 has no
        // seconds in offsets, so the instant is given in UTC.
        let utc = zoned.with_time_zone(jiff::tz::TimeZone::UTC).datetime();
        let _ = write!(text, "{}{fraction}Z", utc.strftime("%Y-%m-%dT%H:%M:%S"));
        return Some(text);
    }
    if zoned.datetime() == civil {
        text.push_str(event_time);
    } else {
        // In a gap: the local time the instant has after it.
        let _ = write!(
            text,
            "{}{fraction}",
            zoned.datetime().strftime("%Y-%m-%dT%H:%M:%S")
        );
    }
    if seconds == 0 {
        text.push('Z');
    } else {
        let sign = if seconds < 0 { '-' } else { '+' };
        let minutes = seconds.unsigned_abs() / 60;
        let _ = write!(text, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> jiff::tz::TimeZone {
        parse_time_zone(name).unwrap()
    }

    #[test]
    fn event_time_gets_the_zone_s_offset_at_that_date() {
        let oslo = zone("Europe/Oslo");
        assert_eq!(
            rfc3339("2016-09-14T13:37:26", &oslo).as_deref(),
            Some("2016-09-14T13:37:26+02:00")
        );
        assert_eq!(
            rfc3339("2016-01-14T13:37:26.120", &oslo).as_deref(),
            Some("2016-01-14T13:37:26.120+01:00")
        );
        assert_eq!(
            rfc3339("2016-09-14T13:37:26", &zone("UTC")).as_deref(),
            Some("2016-09-14T13:37:26Z")
        );
        assert_eq!(
            rfc3339("2016-09-14T13:37:26", &zone("-03:30")).as_deref(),
            Some("2016-09-14T13:37:26-03:30")
        );
    }

    #[test]
    fn a_fold_takes_the_earlier_instant_and_a_gap_the_later_time() {
        let oslo = zone("Europe/Oslo");
        // 2016-10-30 02:30 happened twice in Oslo (summer time ended at 03:00).
        assert_eq!(
            rfc3339("2016-10-30T02:30:00", &oslo).as_deref(),
            Some("2016-10-30T02:30:00+02:00")
        );
        // 2016-03-27 02:30 never happened (clocks went from 02:00 to 03:00): read with the
        // offset before the gap it is 01:30 UTC, which is 03:30 after it.
        assert_eq!(
            rfc3339("2016-03-27T02:30:00.5", &oslo).as_deref(),
            Some("2016-03-27T03:30:00.5+02:00")
        );
    }

    #[test]
    fn an_offset_dataloy_sent_is_kept() {
        let oslo = zone("Europe/Oslo");
        for time in [
            "2016-09-14T13:37:26Z",
            "2016-09-14T13:37:26.5+05:30",
            "2016-09-14T13:37:26-11:30",
        ] {
            assert_eq!(rfc3339(time, &oslo).as_deref(), Some(time));
        }
    }

    #[test]
    fn offsets_with_seconds_become_utc() {
        // Local mean time, as tz databases keep for dates before standard time (Berlin's
        // +00:53:28 until 1893); which zones still have it depends on how the database was built,
        // so the offset is made here.
        let lmt = jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(3208).unwrap());
        assert_eq!(
            rfc3339("1890-01-01T12:00:00.5", &lmt).as_deref(),
            Some("1890-01-01T11:06:32.5Z")
        );
    }

    #[test]
    fn attributes_of_the_documented_sample() {
        let body = include_bytes!("../../tests/fixtures/bunker-order-updated.json");
        let envelope = Envelope::parse(body).unwrap();
        let derived = CloudEvents::new(&CloudEventsSettings::default());
        assert_eq!(
            derived.attributes(&envelope),
            Attributes {
                id: "1573335-244070007",
                source: "http://localhost:8080",
                event_type: "com.dataloy.PortCall.updated".into(),
                time: Some("2016-09-14T13:37:26Z".into()),
                subject: "189126972".into(),
            }
        );
        let configured = CloudEvents::new(&CloudEventsSettings {
            source: Some("https://dataloy.example".into()),
            event_type: "dataloy.{eventType}".into(),
            ..CloudEventsSettings::default()
        });
        let attributes = configured.attributes(&envelope);
        assert_eq!(
            (attributes.source, attributes.event_type.as_str()),
            ("https://dataloy.example", "dataloy.U")
        );
        let mut without_urls = envelope.clone();
        without_urls.origin = None;
        assert_eq!(derived.attributes(&without_urls).source, UNKNOWN_SOURCE);
    }
}
