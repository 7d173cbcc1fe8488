//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` a caller sends with a webhook, kept with the notification through the spool and
//! dead letters, and written into the headers of every message published for it, so a trace that
//! starts at Dataloy's request continues in the consumers of the queues.
//!
//! Input is judged as the recommendation's processing model says: an invalid `traceparent` is
//! ignored (never a 400, never copied onto a queue) and the gateway starts a new trace; an
//! invalid `tracestate` is dropped while its `traceparent` is kept. What is kept is bounded where
//! it enters: a `traceparent` is rendered back as version `00`, always 55 bytes; a `tracestate`
//! holds at most [`MAX_TRACESTATE_MEMBERS`] members and [`MAX_TRACESTATE_LEN`] bytes (the length
//! the recommendation asks every vendor to propagate), longer ones are cut the way it says:
//! members over 128 bytes first, then from the end.

mod tracestate;

pub use tracestate::{TraceState, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS};

/// Header (and message header) names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Length of a rendered `traceparent` (version `00`).
pub const TRACEPARENT_LEN: usize = 55;
/// The one flag version `00` defines; other bits are cleared, as OpenTelemetry's propagator does.
pub const SAMPLED: u8 = 0x01;

/// The `traceparent` fields: a trace, the span a message descends from, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    /// `0` or [`SAMPLED`].
    pub flags: u8,
}

impl TraceParent {
    /// Fields that make a valid `traceparent`: non-zero ids, known flags only.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        let valid = trace_id != [0; 16] && parent_id != [0; 8] && flags & !SAMPLED == 0;
        valid.then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace: random ids, sampled (what OpenTelemetry's default sampler decides for a root).
    pub fn new_root() -> Self {
        Self {
            trace_id: loop {
                let id = fastrand::u128(..).to_be_bytes();
                if id != [0; 16] {
                    break id;
                }
            },
            parent_id: random_span_id(),
            flags: SAMPLED,
        }
    }

    /// Parses a `traceparent` header value (surrounding spaces and tabs allowed). Version `00`
    /// must be exactly 55 bytes; a later version may carry more after a `-`, which is dropped
    /// (its known fields are kept, as the recommendation asks); `ff` is invalid. Hex digits must
    /// be lowercase, ids must not be all zeros.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let rest_ok = match version {
            0xff => false,
            0x00 => value.len() == TRACEPARENT_LEN,
            _ => value.len() == TRACEPARENT_LEN || value[TRACEPARENT_LEN] == b'-',
        };
        if !rest_ok || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        Self::new(trace_id, parent_id, flags & SAMPLED)
    }

    /// Renders the header value (version `00`) into `out`, without allocating.
    pub fn render_into<'a>(&self, out: &'a mut [u8; TRACEPARENT_LEN]) -> &'a str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut at = 0;
        let mut put = |bytes: &[u8], out: &mut [u8; TRACEPARENT_LEN]| {
            for byte in bytes {
                out[at] = HEX[usize::from(byte >> 4)];
                out[at + 1] = HEX[usize::from(byte & 0x0f)];
                at += 2;
            }
            at += 1;
        };
        put(&[0], out);
        put(&self.trace_id, out);
        put(&self.parent_id, out);
        put(&[self.flags], out);
        for dash in [2, 35, 52] {
            out[dash] = b'-';
        }
        std::str::from_utf8(out).expect("ASCII")
    }

    pub fn render(&self) -> String {
        let mut out = [0u8; TRACEPARENT_LEN];
        self.render_into(&mut out).to_owned()
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// A random non-zero span id.
pub fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Two lowercase hex digits as a byte.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    Some(value(digits[0])? << 4 | value(digits[1])?)
}

/// What a notification carries of its trace: the `traceparent` its messages descend from and
/// the vendors' `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub parent: TraceParent,
    pub state: TraceState,
}

impl TraceContext {
    /// The context a request's headers carry: `None` unless there is exactly one valid
    /// `traceparent` (two are ambiguous, so invalid). `tracestate` values are combined in order;
    /// an invalid one is dropped.
    pub fn from_headers<'a>(
        traceparents: impl IntoIterator<Item = &'a [u8]>,
        tracestates: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<Self> {
        let mut traceparents = traceparents.into_iter();
        let parent = TraceParent::parse(traceparents.next()?)?;
        if traceparents.next().is_some() {
            return None;
        }
        Some(Self {
            parent,
            state: TraceState::from_headers(tracestates),
        })
    }

    /// A new trace without vendor state.
    pub fn new_root() -> Self {
        Self {
            parent: TraceParent::new_root(),
            state: TraceState::default(),
        }
    }

    /// The context stored in a dead letter's metadata; `None` when the `traceparent` is absent or
    /// invalid (a `tracestate` that is not in canonical form is dropped).
    pub fn from_stored(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let parent = TraceParent::parse(traceparent?.as_bytes())?;
        let state = tracestate
            .and_then(TraceState::from_canonical)
            .unwrap_or_default();
        Some(Self { parent, state })
    }

    pub fn traceparent(&self) -> String {
        self.parent.render()
    }

    /// The `tracestate` value; empty when there is none (then no header is written).
    pub fn tracestate(&self) -> &str {
        self.state.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(text: &str) -> Option<TraceParent> {
        TraceParent::parse(text.as_bytes())
    }

    #[test]
    fn a_valid_traceparent_renders_back_to_itself() {
        let parsed = parse(VALID).expect("valid");
        assert_eq!(parsed.render(), VALID);
        assert!(parsed.is_sampled());
        assert_eq!(parse(&format!(" \t{VALID} ")).unwrap(), parsed);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse(&unsampled).unwrap().is_sampled());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let zeros_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zeros_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        for bad in [
            "",
            "00",
            &VALID.to_uppercase(),
            &VALID.replace("4bf9", "4BF9"),
            &VALID[..54],
            &format!("{VALID}-"),
            &format!("{VALID}0"),
            &VALID.replacen("00-", "ff-", 1),
            &VALID.replacen("00-", "0g-", 1),
            &VALID.replace('-', "_"),
            &VALID.replace("-01", "-1x"),
            zeros_trace,
            zeros_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01x",
            "😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_keeps_its_known_fields_and_is_rendered_as_version_00() {
        let future = VALID.replacen("00-", "cc-", 1);
        assert_eq!(parse(&future).unwrap().render(), VALID);
        let extended = format!("{future}-what-comes-next");
        assert_eq!(parse(&extended).unwrap().render(), VALID);
        assert_eq!(parse(&format!("{future}x")), None);
    }

    #[test]
    fn flags_other_than_sampled_are_cleared() {
        let all = VALID.replace("-01", "-ff");
        assert_eq!(parse(&all).unwrap().flags, SAMPLED);
        let random_only = VALID.replace("-01", "-02");
        assert_eq!(parse(&random_only).unwrap().flags, 0);
    }

    #[test]
    fn two_traceparents_are_ambiguous_and_ignored() {
        let one = [VALID.as_bytes()];
        assert!(TraceContext::from_headers(one, []).is_some());
        let two = [VALID.as_bytes(), VALID.as_bytes()];
        assert!(TraceContext::from_headers(two, []).is_none());
        assert!(TraceContext::from_headers([], [&b"a=b"[..]]).is_none());
    }

    #[test]
    fn a_new_root_is_valid_sampled_and_new() {
        let a = TraceParent::new_root();
        let b = TraceParent::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(parse(&a.render()), Some(a));
        assert!(a.is_sampled());
        assert_eq!(a.render().len(), TRACEPARENT_LEN);
    }

    #[test]
    fn stored_contexts_are_checked_again() {
        let stored = TraceContext::from_stored(Some(VALID), Some("a=1,b=2")).unwrap();
        assert_eq!(stored.tracestate(), "a=1,b=2");
        let loose = TraceContext::from_stored(Some(VALID), Some(" a=1 ,")).unwrap();
        assert_eq!(loose.tracestate(), "");
        assert!(TraceContext::from_stored(Some("00-x"), None).is_none());
        assert!(TraceContext::from_stored(None, Some("a=1")).is_none());
    }
}
