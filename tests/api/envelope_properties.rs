//! Property tests of the envelope parser (bounded: proptest's default 256 cases each): any
//! bytes are answered without a panic, and generated valid envelopes always parse to their
//! fields.

use dataloy_gateway::envelope::{Envelope, EnvelopeError};
use proptest::prelude::*;

use crate::helpers::UPDATED;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Envelope::parse(&bytes);
    }

    #[test]
    fn a_mutated_sample_is_either_valid_or_a_clean_error(at in 0..UPDATED.len(), byte in any::<u8>()) {
        let mut body = UPDATED.to_vec();
        body[at] = byte;
        match Envelope::parse(&body) {
            Ok(envelope) => prop_assert!(!envelope.id.as_str().is_empty()),
            Err(e) => prop_assert!(!e.code().is_empty()),
        }
    }

    #[test]
    fn generated_valid_envelopes_parse_to_their_fields(
        id in "[A-Za-z0-9][A-Za-z0-9-]{0,127}",
        object_type in "[A-Za-z_][A-Za-z0-9_]{0,60}",
        event_type in "[CUD]",
        object in any::<i64>(),
        key in proptest::option::of(any::<i64>()),
        seconds in 0u32..60,
        extra in "[a-z]{1,10}",
    ) {
        let key = key.map_or("null".to_owned(), |k| k.to_string());
        let body = format!(
            r#"{{"{extra}x":[1,{{"a":null}}],"id":"{id}","eventTime":"2016-09-14T13:37:{seconds:02}","objectType":"{object_type}","eventType":"{event_type}","dataloyObject":{object},"subscription":{{"key":{key}}},"resource":{{"k":"v"}}}}"#
        );
        let envelope = Envelope::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(envelope.id.as_str(), id.as_str());
        prop_assert_eq!(envelope.object_type, object_type);
        prop_assert_eq!(envelope.event_type.as_str(), event_type.as_str());
        prop_assert_eq!(envelope.dataloy_object, object);
    }

    #[test]
    fn wrong_event_types_are_refused(event_type in "[^CUD\"\\\\]{1,3}") {
        let body = format!(
            r#"{{"id":"a","eventTime":"2016-09-14T13:37:26","objectType":"X","eventType":"{event_type}","dataloyObject":1,"subscription":{{}}}}"#
        );
        let refused = matches!(
            Envelope::parse(body.as_bytes()),
            Err(EnvelopeError::InvalidField { field: "eventType", .. }) | Err(EnvelopeError::InvalidJson(_))
        );
        prop_assert!(refused);
    }
}
