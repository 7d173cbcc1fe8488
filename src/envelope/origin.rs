//! The Dataloy instance a notification comes from, as the origin (`scheme://host[:port]`) of one
//! of its REST URLs: CloudEvents' default `source`. Only read, never a reason to refuse a body.
//!
//! Found on every request, so the URL parser's work is remembered: each thread keeps the last
//! scheme and authority it parsed and the origin they gave. One Dataloy instance sends every
//! notification, so the parser runs about once per thread (it cost about 3 % of a request's
//! instructions, see BENCHMARKS.md).

use std::cell::RefCell;

/// Longest origin kept, in bytes: a DNS name is at most 253, so only a hostile URL is longer.
pub const MAX_ORIGIN_LEN: usize = 255;

/// The origin of the JSON string `raw` (a member's text) when it holds an absolute http(s) URL:
/// scheme and host lowercased, the default port left out, user and password never included
/// (WHATWG URL serialization, by the `url` crate).
pub fn of(raw: &str) -> Option<String> {
    let text = super::as_string(raw)?;
    let Some(key) = scheme_and_authority(&text) else {
        return parse(&text);
    };
    LAST.with_borrow_mut(|last| match last {
        Some((known, origin)) if known.as_str() == key => origin.clone(),
        _ => {
            let origin = parse(&text);
            *last = Some((key.to_owned(), origin.clone()));
            origin
        }
    })
}

thread_local! {
    /// The scheme and authority this thread parsed last, and the origin they gave.
    static LAST: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// The start of `text` up to the first `/`, `\`, `?` or `#` that follows its first `://` and the
/// run of `/`, `\`, tabs and newlines right after it: for an http(s) URL, its scheme and whole
/// authority (the parser skips any number of slashes and backslashes before a special scheme's
/// authority, drops tabs and newlines anywhere, and ends the authority at the first of those
/// four characters, which is never later), and what comes after it never changes the origin
/// (nor fails the parse of such a URL). So the origin is a function of this key. `None` without
/// `://` or without such a character after it (the parser strips spaces and controls from the
/// end of the text, so the end of the authority would change it): such text is parsed every
/// time.
fn scheme_and_authority(text: &str) -> Option<&str> {
    // Searched as bytes: each is ASCII, so where one is found is a character boundary (and a
    // string searcher's set-up cost more than the search, which ends a few bytes in).
    let bytes = text.as_bytes();
    let slashes = bytes.windows(3).position(|three| three == b"://")? + 3;
    // Without this, `http:///a.example/` and `http:///b.example/` had the one key `http://`
    // (found by the envelope_parse fuzz target: fuzz/regressions/envelope_parse/).
    let authority = slashes
        + bytes[slashes..]
            .iter()
            .take_while(|b| matches!(b, b'/' | b'\\' | b'\t' | b'\n' | b'\r'))
            .count();
    let end = authority
        + bytes[authority..]
            .iter()
            .position(|b| matches!(b, b'/' | b'\\' | b'?' | b'#'))?;
    Some(&text[..end])
}

fn parse(text: &str) -> Option<String> {
    let url = url::Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    is_origin(&origin).then_some(origin)
}

/// What an origin may hold: printable ASCII without spaces, within [`MAX_ORIGIN_LEN`]. What the
/// spool record accepts back.
pub fn is_origin(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_ORIGIN_LEN && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::{of, parse};
    use proptest::prelude::*;

    fn origin(url: &str) -> Option<String> {
        of(&serde_json::to_string(url).unwrap())
    }

    #[test]
    fn the_origin_of_dataloy_urls() {
        assert_eq!(
            origin("http://platform-dev.dataloy.com:80/ws/rest/BunkerOrderLine/320996749"),
            Some("http://platform-dev.dataloy.com".into())
        );
        assert_eq!(
            origin("https://User:pw@Dataloy.Example:8443/ws/rest/X/1?a=b#c"),
            Some("https://dataloy.example:8443".into())
        );
        assert_eq!(
            origin("http://localhost:8080/ws/rest/PortCall/1"),
            Some("http://localhost:8080".into())
        );
        assert_eq!(
            origin("https://bücher.example/x"),
            Some("https://xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn anything_else_has_none() {
        for url in [
            "",
            "s",
            "/ws/rest/PortCall/1",
            "ftp://dataloy.example/x",
            "file:///etc/passwd",
            "mailto:a@b",
            "http://",
        ] {
            assert_eq!(origin(url), None, "{url}");
        }
        assert_eq!(of("42"), None);
        assert_eq!(of("null"), None);
        let long = format!("http://{}.example/x", "a".repeat(300));
        assert_eq!(origin(&long), None);
    }

    #[test]
    fn a_remembered_authority_gives_the_same_origin_as_a_parse() {
        let urls = [
            "http://platform-dev.dataloy.com:80/ws/rest/PortCall/1",
            "http://platform-dev.dataloy.com:80/ws/rest/PortCall/2",
            "http://platform-dev.dataloy.com:8080/ws/rest/PortCall/2",
            "http://platform-dev.dataloy.com:80",
            "http://platform-dev.dataloy.com:80?x",
            "http://user@platform-dev.dataloy.com:80/x",
            "http:a://b.example/x",
            "http://a.example\\b/x",
            "http://a.example\tb/x",
            "http://a.example ",
            "http://a.example /x",
            " http://a.example/x",
            "javascript:alert('http://x.example/')",
            "http:///com:80/ws/rest/X/1",
            "http:///plaws/ws/rest/X/1",
            "http://\\/\\a.example/x",
            "http://\t/b.example/x",
            "http://\n\\c.example/x",
            "http:///",
            "http://platform-dev.dataloy.com:80/ws/rest/PortCall/1",
        ];
        for url in urls.iter().chain(urls.iter().rev()) {
            assert_eq!(origin(url), parse(url), "{url:?}");
        }
    }

    proptest! {
        /// Whatever the text, remembered or not, the origin is the one a parse gives.
        #[test]
        fn the_origin_is_always_what_the_parser_says(
            texts in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        Just("http"), Just("https"), Just("ftp"), Just(":"), Just("//"),
                        Just("/"), Just("\\"), Just("?"), Just("#"), Just("@"),
                        Just("a.example"), Just("B.example"), Just(":80"), Just(":443"),
                        Just(":8080"), Just("%41"), Just("\t"), Just("\n"), Just(" "),
                        Just("[::1]"), Just("xn--bcher-kva"), Just("bücher"), Just("."),
                    ],
                    0..10,
                ),
                1..5,
            ),
        ) {
            // Several texts in a row on one thread, so each meets what the one before it left
            // in the memo (one text per case let a key shared by two origins pass).
            for parts in texts {
                let text = parts.concat();
                let raw = serde_json::to_string(&text).unwrap();
                prop_assert_eq!(of(&raw), parse(&text), "{:?}", text);
                prop_assert_eq!(of(&raw), parse(&text), "{:?} (remembered)", text);
            }
        }
    }
}
