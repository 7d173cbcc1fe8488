//! One pass over a notification body that checks it is a single well-formed JSON text (RFC 8259),
//! that arrays and objects nest no deeper than a limit, and that hands back the members of the
//! top-level object as slices of the body. It replaces two passes (a bracket-depth scan, then
//! `serde_json` skipping every value into `RawValue`s), which together were the largest piece of
//! the request path's own CPU in a profile (BENCHMARKS.md). It builds nothing and allocates
//! nothing; it only answers "valid or not" — the caller asks `serde_json` why when it is not.
//!
//! The body comes as a `&str`, already valid UTF-8, so strings are scanned as bytes.
//! It also refuses the well-formed JSON that consumers' parsers refuse (RFC 7493, I-JSON): a
//! number beyond the range of an IEEE 754 double (`1e400`), and a `\uXXXX` escape of an unpaired
//! UTF-16 surrogate. `serde_json::Value` refuses both, so a body holding one would be accepted
//! here and then fail in every consumer (found by fuzzing, see docs/fuzzing.md).

/// A member of the top-level object, as slices of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key between its quotes, escapes not decoded.
    pub raw_key: &'a str,
    /// The value's JSON text, without surrounding whitespace.
    pub value: &'a str,
}

/// Why a body is not one JSON text within the nesting limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not well-formed JSON.
    Malformed,
    /// Arrays and objects nest deeper than the limit.
    TooDeep,
    /// A number beyond the range of an IEEE 754 double; `at` is its byte offset.
    OutOfRange { at: usize },
    /// A `\u` escape of a UTF-16 surrogate without its pair; `at` is its byte offset.
    LoneSurrogate { at: usize },
}

/// Bytes that end the fast run through a string: the closing quote, an escape, or a control
/// character (which JSON forbids unescaped).
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Checks that `text` is exactly one JSON value (whitespace around it allowed) with arrays and
/// objects nested at most `max_depth` deep (at most 128). When that value is an object, each of
/// its members is passed to `on_member` as it is found. Returns whether the value is an object.
pub fn scan<'a>(
    text: &'a str,
    max_depth: usize,
    mut on_member: impl FnMut(Member<'a>),
) -> Result<bool, ScanError> {
    assert!(max_depth <= 128, "the container stack holds 128 levels");
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    // Bit `d - 1` is set when the container at depth `d` is an object.
    let mut objects: u128 = 0;
    let mut depth = 0usize;
    // Whether the container at `depth` is an object: bit `depth - 1` of `objects`, kept apart so
    // that each element does not shift a u128 (only opening and closing a container does).
    let mut in_object = false;
    // The member of the top-level object whose value is being read: its key and value start.
    // (Byte ranges: only a top-level key is made a `&str`, which checks its ends.)
    let mut member: Option<(std::ops::Range<usize>, usize)> = None;
    s.skip_whitespace();
    let is_object = s.peek() == Some(b'{');

    'value: loop {
        // Expecting a value.
        s.skip_whitespace();
        let Some(byte) = s.peek() else {
            return Err(ScanError::Malformed);
        };
        match byte {
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ScanError::TooDeep);
                }
                let object = byte == b'{';
                in_object = object;
                if object {
                    objects |= 1 << (depth - 1);
                } else {
                    objects &= !(1 << (depth - 1));
                }
                s.at += 1;
                s.skip_whitespace();
                let close = if object { b'}' } else { b']' };
                if s.peek() == Some(close) {
                    s.at += 1;
                    depth -= 1;
                    in_object = depth > 0 && objects & (1 << (depth - 1)) != 0;
                } else if object {
                    let key = s.key()?;
                    if depth == 1 {
                        member = Some((key, s.value_start()));
                    }
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            b'"' => s.string()?,
            b't' => s.literal(b"true")?,
            b'f' => s.literal(b"false")?,
            b'n' => s.literal(b"null")?,
            b'-' | b'0'..=b'9' => s.number()?,
            _ => return Err(ScanError::Malformed),
        }

        // A value just ended: close containers until one continues with another element.
        loop {
            if depth == 1 {
                if let Some((key, start)) = member.take() {
                    on_member(Member {
                        raw_key: &text[key],
                        value: &text[start..s.at],
                    });
                }
            }
            s.skip_whitespace();
            if depth == 0 {
                return if s.at == s.bytes.len() {
                    Ok(is_object)
                } else {
                    Err(ScanError::Malformed)
                };
            }
            match (s.peek(), in_object) {
                (Some(b','), _) => {
                    s.at += 1;
                    if in_object {
                        s.skip_whitespace();
                        let key = s.key()?;
                        if depth == 1 {
                            member = Some((key, s.value_start()));
                        }
                    }
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    s.at += 1;
                    depth -= 1;
                    in_object = depth > 0 && objects & (1 << (depth - 1)) != 0;
                }
                _ => return Err(ScanError::Malformed),
            }
        }
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// An object key and the colon after it; returns where the key between its quotes is.
    #[inline(always)]
    fn key(&mut self) -> Result<std::ops::Range<usize>, ScanError> {
        if self.peek() != Some(b'"') {
            return Err(ScanError::Malformed);
        }
        let start = self.at + 1;
        self.string()?;
        let key = start..self.at - 1;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(ScanError::Malformed);
        }
        self.at += 1;
        Ok(key)
    }

    /// Where the value after a key's colon starts.
    fn value_start(&mut self) -> usize {
        self.skip_whitespace();
        self.at
    }

    /// A string, from its opening quote to just after its closing one. Inlined where it is
    /// used, its rare escapes handled out of line: a call per string (over a hundred in a
    /// notification) cost more than the bytes it skips (BENCHMARKS.md).
    #[inline(always)]
    fn string(&mut self) -> Result<(), ScanError> {
        self.at += 1;
        loop {
            self.skip_plain_string_bytes();
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => self.escape()?,
                // A control character, or the end of the body.
                _ => return Err(ScanError::Malformed),
            }
        }
    }

    /// The escape at `at` (its backslash), which must be one JSON defines, and a `\u` escape of
    /// a UTF-16 surrogate must be one of a pair.
    #[cold]
    #[inline(never)]
    fn escape(&mut self) -> Result<(), ScanError> {
        let escape_at = self.at;
        self.at += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
            Some(b'u') => {
                let unit = self.hex4(self.at + 1).ok_or(ScanError::Malformed)?;
                self.at += 5;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = match self.bytes.get(self.at..self.at + 2) {
                            Some(b"\\u") => self.hex4(self.at + 2),
                            _ => None,
                        };
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(ScanError::LoneSurrogate { at: escape_at });
                        }
                        self.at += 6;
                    }
                    0xDC00..=0xDFFF => return Err(ScanError::LoneSurrogate { at: escape_at }),
                    _ => {}
                }
            }
            _ => return Err(ScanError::Malformed),
        }
        Ok(())
    }

    /// Moves to the next byte in [`STRING_STOP`] (or the end), eight bytes at a time while none
    /// of them is one: a zero-byte test on each of three transformed words, whose lowest flagged
    /// byte is always a true match (a borrow only flags bytes above a real one).
    #[inline(always)]
    fn skip_plain_string_bytes(&mut self) {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let stops = has_zero(word ^ (ONES * u64::from(b'"')))
                | has_zero(word ^ (ONES * u64::from(b'\\')))
                | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
            if stops != 0 {
                self.at += (stops.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while self
            .bytes
            .get(self.at)
            .is_some_and(|&b| !STRING_STOP[b as usize])
        {
            self.at += 1;
        }
    }

    /// The four hex digits at `at` as a UTF-16 code unit.
    fn hex4(&self, at: usize) -> Option<u16> {
        let hex = std::str::from_utf8(self.bytes.get(at..at + 4)?).ok()?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None; // `from_str_radix` would also take a sign
        }
        u16::from_str_radix(hex, 16).ok()
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(ScanError::Malformed)
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, within the range of a double.
    fn number(&mut self) -> Result<(), ScanError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(ScanError::Malformed),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.one_or_more_digits()?;
            return self.in_double_range(start);
        }
        if self.at - start > 300 {
            return self.in_double_range(start);
        }
        // Fewer than 300 digits and no exponent: far inside a double's range.
        Ok(())
    }

    /// Whether the number from `start` is one `serde_json` reads (it refuses what overflows a
    /// double, and a little more than Rust's `f64` parsing does: the exact rule consumers meet).
    fn in_double_range(&self, start: usize) -> Result<(), ScanError> {
        match serde_json::from_str::<f64>(&self.text[start..self.at]) {
            Ok(_) => Ok(()),
            Err(_) => Err(ScanError::OutOfRange { at: start }),
        }
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), ScanError> {
        let start = self.at;
        self.digits();
        if self.at == start {
            Err(ScanError::Malformed)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Result<(bool, Vec<(String, String)>), ScanError> {
        let mut found = Vec::new();
        let is_object = scan(text, 128, |m| {
            found.push((m.raw_key.to_owned(), m.value.to_owned()))
        })?;
        Ok((is_object, found))
    }

    /// What consumers use: `Value` also checks number ranges and surrogate pairs.
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text).is_ok()
    }

    #[test]
    fn top_level_members_are_slices_of_the_body() {
        let text = " { \"id\" : \"a\\\"b\" , \"n\":[1, {\"id\":2}] ,\"o\":{}, \"e\":[],\"x\":-0.5e+3, \"t\":true}\n";
        let (is_object, found) = members(text).unwrap();
        assert!(is_object);
        let found: Vec<(&str, &str)> = found
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("id", "\"a\\\"b\""),
                ("n", "[1, {\"id\":2}]"),
                ("o", "{}"),
                ("e", "[]"),
                ("x", "-0.5e+3"),
                ("t", "true"),
            ]
        );
    }

    #[test]
    fn other_top_level_values_are_valid_but_not_objects() {
        for text in ["[]", "[1,[2,{}]]", "\"s\"", "0", "null", " false "] {
            assert_eq!(members(text), Ok((false, vec![])), "{text}");
        }
    }

    #[test]
    fn malformed_json_is_refused() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "{]",
            "[}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "{,}",
            "{a:1}",
            "{\"a\":1 \"b\":2}",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"a\u{1}b\"",
            "{} {}",
            "[] x",
            "{\"a\":1}}",
            "[1]]",
            "'a'",
            "NaN",
            "[1 2]",
        ] {
            assert_eq!(members(text), Err(ScanError::Malformed), "{text:?}");
            assert!(!serde_accepts(text), "serde_json accepts {text:?}");
        }
    }

    #[test]
    fn what_consumers_refuse_is_refused_with_its_place() {
        for (text, error) in [
            ("[1e400]", ScanError::OutOfRange { at: 1 }),
            ("[0, -1e400]", ScanError::OutOfRange { at: 4 }),
            ("[1.7976931348623158e308]", ScanError::OutOfRange { at: 1 }),
            ("[\"\\ud800\"]", ScanError::LoneSurrogate { at: 2 }),
            ("[\"a\\udc00\"]", ScanError::LoneSurrogate { at: 3 }),
            ("[\"\\ud800\\u0041\"]", ScanError::LoneSurrogate { at: 2 }),
            ("{\"\\udbff\":1}", ScanError::LoneSurrogate { at: 2 }),
        ] {
            assert_eq!(members(text), Err(error), "{text}");
            assert!(!serde_accepts(text), "serde_json accepts {text}");
        }
        let long_integer = format!("[{}]", "9".repeat(400));
        assert_eq!(members(&long_integer), Err(ScanError::OutOfRange { at: 1 }));
        for text in [
            "[1e308]",
            "[1e-400]",
            "[0e999999999999999999]",
            "[\"\\ud83d\\ude00\"]",
            "[\"\\uD83D\\uDE00\"]",
            &format!("[{}]", "9".repeat(300)),
        ] {
            assert!(members(text).is_ok(), "{text}");
            assert!(serde_accepts(text), "{text}");
        }
    }

    #[test]
    fn every_stop_byte_is_found_at_every_place_in_a_word() {
        for len in 0..20 {
            for place in 0..len {
                for stop in ['"', '\\', '\u{1}', '\u{1f}'] {
                    let mut inner: Vec<char> =
                        "aé~ \u{7f}bcdefghijklmnopqrs".chars().take(len).collect();
                    inner[place] = stop;
                    let inner: String = inner.into_iter().collect();
                    let text = format!("[\"{inner}\"]");
                    assert_eq!(
                        scan(&text, 128, |_| {}).is_ok(),
                        serde_accepts(&text),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn nesting_is_limited_outside_strings() {
        let at_limit = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(scan(&at_limit, 128, |_| {}).is_ok());
        let too_deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(scan(&too_deep, 128, |_| {}), Err(ScanError::TooDeep));
        let objects = format!("{}1{}", "{\"a\":".repeat(3), "}".repeat(3));
        assert_eq!(scan(&objects, 2, |_| {}), Err(ScanError::TooDeep));
        assert!(scan(&objects, 3, |_| {}).is_ok());
        let quoted = format!("[\"{}\\\"\"]", "[".repeat(500));
        assert!(scan(&quoted, 128, |_| {}).is_ok());
    }

    /// JSON-ish text from a small alphabet, so that structure and near-misses are common.
    fn jsonish() -> impl proptest::strategy::Strategy<Value = String> {
        let pieces = proptest::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"",
            "\"k\"",
            "\"v\\\"\"",
            "\\",
            "\\u00e9",
            "1",
            "-",
            "0",
            ".",
            "e",
            "+",
            "12",
            "true",
            "null",
            "fa",
            "lse",
            "\n",
            "\u{7}",
            "é",
        ]);
        proptest::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn agrees_with_serde_json_on_what_is_json(text in jsonish()) {
            let ours = scan(&text, 128, |_| {});
            proptest::prop_assert_eq!(ours.is_ok(), serde_accepts(&text), "{:?}", text);
        }

        #[test]
        fn agrees_with_serde_json_on_generated_documents(value in arbitrary_json(), pretty in proptest::bool::ANY) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let mut found = Vec::new();
            let is_object = scan(&text, 128, |m| found.push((m.raw_key.to_owned(), m.value.to_owned())));
            proptest::prop_assert_eq!(is_object, Ok(value.is_object()));
            if let serde_json::Value::Object(map) = &value {
                proptest::prop_assert_eq!(found.len(), map.len());
                for (key, raw) in &found {
                    let key: String = serde_json::from_str(&format!("\"{key}\"")).unwrap();
                    let expected = serde_json::to_string(&map[&key]).unwrap();
                    // Parsed on both sides, so that float parsing rounds the same way.
                    let parsed: serde_json::Value = serde_json::from_str(raw).unwrap();
                    let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
                    proptest::prop_assert_eq!(parsed, expected);
                }
            }
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = proptest::prop_oneof![
            proptest::strategy::Just(Value::Null),
            proptest::bool::ANY.prop_map(Value::Bool),
            proptest::num::i64::ANY.prop_map(Value::from),
            proptest::num::f64::NORMAL.prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            proptest::prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
