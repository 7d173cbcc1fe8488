//! The Dataloy instance a notification comes from, as the origin (`scheme://host[:port]`) of one
//! of its REST URLs: CloudEvents' default `source`. Only read, never a reason to refuse a body.

/// Longest origin kept, in bytes: a DNS name is at most 253, so only a hostile URL is longer.
pub const MAX_ORIGIN_LEN: usize = 255;

/// The origin of the JSON string `raw` (a member's text) when it holds an absolute http(s) URL:
/// scheme and host lowercased, the default port left out, user and password never included
/// (WHATWG URL serialization, by the `url` crate).
pub fn of(raw: &str) -> Option<String> {
    let text = super::as_string(raw)?;
    let url = url::Url::parse(&text).ok()?;
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
    use super::of;

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
}
