//! `tracestate`: the vendors' list of `key=value` members. Parsed by the recommendation's grammar
//! (keys `simple-key` or `tenant@system`, values of printable ASCII without `,` and `=`, no
//! duplicate keys, at most 32 members); kept in a canonical form (members joined by `,`, no
//! optional whitespace, no empty members) that is what the spool record and dead letters store
//! and what goes onto the queues.

/// Most members a `tracestate` may have; a longer list is invalid.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Most bytes of the canonical `tracestate` kept: the 512 characters the recommendation asks
/// every vendor to propagate at least. Longer ones lose members (see [`TraceState::from_headers`]).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Members longer than this go first when a `tracestate` must be cut (the recommendation's rule).
const LONG_MEMBER: usize = 128;

/// A valid `tracestate` in canonical form, at most [`MAX_TRACESTATE_LEN`] bytes; may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TraceState(String);

impl TraceState {
    /// The `tracestate` header values of a request, combined in order as one list. Invalid (bad
    /// member, duplicate key, more than 32 members): empty. Over 512 bytes: members longer than
    /// 128 bytes are removed, then members from the end, until it fits.
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut members: Vec<&str> = Vec::new();
        for value in values {
            let Ok(text) = std::str::from_utf8(value) else {
                return Self::default();
            };
            for member in text.split(',') {
                let member = member.trim_matches([' ', '\t']);
                if member.is_empty() {
                    continue;
                }
                if members.len() == MAX_TRACESTATE_MEMBERS || !is_member(member) {
                    return Self::default();
                }
                members.push(member);
            }
        }
        if has_duplicate_keys(&members) {
            return Self::default();
        }
        if joined_len(&members) > MAX_TRACESTATE_LEN {
            members.retain(|m| m.len() <= LONG_MEMBER);
            while joined_len(&members) > MAX_TRACESTATE_LEN {
                members.pop();
            }
        }
        Self(members.join(","))
    }

    /// A `tracestate` already in canonical form (as stored), or `None`.
    pub fn from_canonical(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::default());
        }
        if text.len() > MAX_TRACESTATE_LEN {
            return None;
        }
        let members: Vec<&str> = text.split(',').collect();
        let canonical = members.len() <= MAX_TRACESTATE_MEMBERS
            && members
                .iter()
                .all(|m| *m == m.trim_matches([' ', '\t']) && is_member(m))
            && !has_duplicate_keys(&members);
        canonical.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn joined_len(members: &[&str]) -> usize {
    members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
}

fn has_duplicate_keys(members: &[&str]) -> bool {
    fn key(member: &str) -> &str {
        member.split_once('=').map_or(member, |(key, _)| key)
    }
    members
        .iter()
        .enumerate()
        .any(|(i, a)| members[..i].iter().any(|b| key(a) == key(b)))
}

/// `key "=" value`.
fn is_member(member: &str) -> bool {
    member
        .split_once('=')
        .is_some_and(|(key, value)| is_key(key) && is_value(value))
}

/// `simple-key` (`lcalpha` then up to 255 of `lcalpha DIGIT _ - * /`), or `tenant-id "@"
/// system-id` (an `lcalpha` or `DIGIT` then up to 240 more; an `lcalpha` then up to 13 more).
fn is_key(key: &str) -> bool {
    let rest_ok = |s: &[u8], most: usize| {
        s.len() <= most
            && s.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    let b = key.as_bytes();
    match key.split_once('@') {
        None => b.first().is_some_and(u8::is_ascii_lowercase) && rest_ok(&b[1..], 255),
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            t.first()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && rest_ok(&t[1..], 240)
                && s.first().is_some_and(u8::is_ascii_lowercase)
                && rest_ok(&s[1..], 13)
        }
    }
}

/// 1 to 256 printable ASCII characters other than `,` and `=`; spaces inside, not at the end.
fn is_value(value: &str) -> bool {
    let b = value.as_bytes();
    let chr = |c: &u8| matches!(c, 0x20..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    (1..=256).contains(&b.len()) && b.iter().all(chr) && b.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(values: &[&str]) -> String {
        TraceState::from_headers(values.iter().map(|v| v.as_bytes()))
            .as_str()
            .to_owned()
    }

    #[test]
    fn members_are_combined_and_made_canonical() {
        assert_eq!(state(&["rojo=00f067aa0ba902b7"]), "rojo=00f067aa0ba902b7");
        assert_eq!(state(&[" a=1 ,\t, b=2", "c=3"]), "a=1,b=2,c=3");
        assert_eq!(state(&["t3n@dt=x", "1t@s-y=v"]), "t3n@dt=x,1t@s-y=v");
        assert_eq!(state(&["a= v w"]), "a= v w");
        assert_eq!(state(&[]), "");
        assert_eq!(state(&[",, ,"]), "");
    }

    #[test]
    fn an_invalid_list_is_dropped_whole() {
        for bad in [
            "A=1",
            "a=1,a=2",
            "a",
            "a=",
            "=1",
            "a=1=2",
            "a=é",
            "a=x\u{7f}",
            "@s=1",
            "t@=1",
            "t@S=1",
            "t@abcdefghijklmno=1",
            "1a=1",
        ] {
            assert_eq!(state(&[bad]), "", "{bad}");
        }
        let many: Vec<String> = (0..=MAX_TRACESTATE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert_eq!(state(&[&many.join(",")]), "");
        let enough = many[..MAX_TRACESTATE_MEMBERS].join(",");
        assert_eq!(state(&[&enough]), enough);
        assert_eq!(
            TraceState::from_headers([&b"a=\xff"[..]]).as_str(),
            "",
            "not UTF-8"
        );
    }

    #[test]
    fn keys_and_values_at_their_length_limits() {
        let key256 = format!("a{}", "b".repeat(255));
        let value256 = "v".repeat(256);
        assert_eq!(state(&[&format!("{key256}=1")]).len(), 258);
        assert_eq!(state(&[&format!("{key256}b=1")]), "");
        assert_eq!(state(&[&format!("a={value256}")]).len(), 258);
        assert_eq!(state(&[&format!("a={value256}v")]), "");
    }

    #[test]
    fn a_long_list_loses_long_members_first_then_from_the_end() {
        let long = format!("long={}", "x".repeat(200));
        let shorts: Vec<String> = (0..20)
            .map(|i| format!("k{i:02}={}", "y".repeat(20)))
            .collect();
        let mut members = vec![shorts[0].clone(), long];
        members.extend(shorts[1..].iter().cloned());
        let kept = state(&[&members.join(",")]);
        assert!(kept.len() <= MAX_TRACESTATE_LEN, "{}", kept.len());
        assert!(!kept.contains("long="));
        // 24-byte members: 20 of them joined are 499 bytes, so all fit once the long one went.
        assert_eq!(kept, shorts.join(","));
        let more: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "y".repeat(20)))
            .collect();
        let cut = state(&[&more.join(",")]);
        assert_eq!(cut, more[..20].join(","), "cut from the end");
        assert!(TraceState::from_canonical(&cut).is_some());
    }

    #[test]
    fn only_the_canonical_form_is_canonical() {
        for ok in ["", "a=1", "a=1,b=2", "a= v"] {
            assert_eq!(TraceState::from_canonical(ok).unwrap().as_str(), ok);
        }
        for bad in ["a=1,", ",a=1", "a=1, b=2", "a=1 ", "a=1,a=2", "A=1"] {
            assert!(TraceState::from_canonical(bad).is_none(), "{bad}");
        }
        assert!(TraceState::from_canonical(&format!("a={}", "v".repeat(600))).is_none());
    }
}
