//! Trace context target (`trace_context`): arbitrary bytes as the `traceparent` and `tracestate`
//! header values of a request. Nothing panics; what is kept is what the spool record and the
//! message headers can carry: a `traceparent` that renders to 55 bytes and reads back the same,
//! a canonical `tracestate` within 32 members and 512 bytes that reads back the same. A header
//! that already is a valid, canonical `tracestate` within the bounds is kept unchanged.

use crate::trace_context::{
    TraceContext, TraceParent, TraceState, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS,
    TRACEPARENT_LEN,
};

/// The first byte tells how many `traceparent` values (0 to 2) and where the rest splits into
/// values (at each `\n`).
pub fn trace_context(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let values: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let parents = usize::from(mode % 3).min(values.len());
    let (traceparents, tracestates) = values.split_at(parents);
    let Some(context) =
        TraceContext::from_headers(traceparents.iter().copied(), tracestates.iter().copied())
    else {
        return;
    };
    assert_eq!(parents, 1, "one traceparent, or none is kept");
    let rendered = context.traceparent();
    assert_eq!(rendered.len(), TRACEPARENT_LEN);
    assert_eq!(
        TraceParent::parse(rendered.as_bytes()),
        Some(context.parent),
        "renders back"
    );
    let state = context.tracestate();
    assert!(state.len() <= MAX_TRACESTATE_LEN);
    assert!(state.split(',').count() <= MAX_TRACESTATE_MEMBERS);
    assert_eq!(
        TraceState::from_canonical(state).as_ref(),
        Some(&context.state),
        "a kept tracestate is canonical"
    );
    if let [one] = tracestates {
        if let Some(canonical) = std::str::from_utf8(one)
            .ok()
            .and_then(TraceState::from_canonical)
        {
            assert_eq!(
                &context.state, &canonical,
                "a canonical tracestate is kept as it is"
            );
        }
    }
}
