//! The JSON path of a serde_json error, found after the fact: the configuration's text is read
//! into a tree with plain serde_json (`tree.rs`, no position tracking compiled into the module),
//! and only when the text is not JSON is the document scanned from the start up to the error's
//! line and column, keeping the object keys and array indices open there. (`read.rs` names the
//! path of every other error itself; serde's derive, which the tests hold it to, had its data
//! errors' paths found here too, hence the cases for them below.)
//!
//! The paths read as serde_path_to_error wrote them before (`rules[0].match.path`,
//! `providers.corp.?` where a key could not be read); the unit test `paths_match_serde_path_to_error`
//! holds the two to the same answer on thousands of broken documents.

use serde_json::error::Category;

/// The path of the value `error` is about, "" for the document itself.
pub(super) fn path_of(json: &[u8], error: &serde_json::Error) -> String {
    let Some(mut offset) = offset_of(json, error.line(), error.column()) else {
        return String::new();
    };
    let message = error.to_string();
    // serde_json refuses the bracket that opens one level too many, and the element after the
    // last one a struct read from an array has fields for, without reading them.
    if message.starts_with("recursion limit exceeded") || message.starts_with("trailing characters")
    {
        offset = offset.saturating_sub(1);
    }
    let (mut frames, number_may_end) = scan(json.get(..offset).unwrap_or(json));
    if number_may_end && error.classify() == Category::Eof {
        // The document ends right after a whole number.
        value_done(&mut frames);
    }
    let syntax = matches!(error.classify(), Category::Syntax | Category::Eof);

    let mut path = String::new();
    let last = frames.len().saturating_sub(1);
    for (depth, frame) in frames.iter().enumerate() {
        let segment = if depth < last {
            Segment::Child
        } else {
            frame.innermost_segment(&message, syntax)
        };
        match (frame, segment) {
            (_, Segment::None) => {}
            (Frame::Object { .. }, Segment::Unknown) => push_key(&mut path, "?"),
            (Frame::Object { key, .. }, _) => push_key(&mut path, key),
            (Frame::Array { index, .. }, _) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// serde_json's position is a 1-based line and the count of bytes before the error on it.
fn offset_of(json: &[u8], line: usize, column: usize) -> Option<usize> {
    let start_of_line = if line <= 1 {
        0
    } else {
        json.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map(|(at, _)| at + 1)?
    };
    Some((start_of_line + column).min(json.len()))
}

enum Segment {
    /// The key or index of the child being read.
    Child,
    /// A key that was not read (yet): `?`.
    Unknown,
    /// The container itself.
    None,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before a key (objects) or an element (arrays); `after_comma` for arrays.
    Next { after_comma: bool },
    /// Inside a key string.
    Key,
    /// After a key, before its colon.
    AfterKey,
    /// After the colon, before the value.
    BeforeValue,
    /// Inside a value: a scalar being read, or a container open below.
    Value,
    /// After a whole value.
    AfterValue,
}

enum Frame {
    Object { key: String, at: At },
    Array { index: usize, at: At },
}

impl Frame {
    fn at(&self) -> At {
        match self {
            Frame::Object { at, .. } | Frame::Array { at, .. } => *at,
        }
    }

    fn set(&mut self, to: At) {
        match self {
            Frame::Object { at, .. } | Frame::Array { at, .. } => *at = to,
        }
    }

    /// Which part of the innermost open container an error there is about: serde_json reports
    /// a data error on a value after reading it, and a misplaced separator or a missing end as
    /// an error of the container (or, in an object, of the key it could not read).
    fn innermost_segment(&self, message: &str, syntax: bool) -> Segment {
        match (self, self.at()) {
            (Frame::Object { .. }, At::Next { .. } | At::Key) => Segment::Unknown,
            (Frame::Object { .. }, At::AfterKey) if message.starts_with("unknown field") => {
                Segment::Child
            }
            (Frame::Object { .. }, At::AfterKey) => Segment::None,
            (Frame::Object { .. }, At::AfterValue) if syntax => Segment::Unknown,
            (Frame::Array { .. }, At::Next { .. })
                if message.starts_with("EOF") || message.starts_with("trailing") =>
            {
                Segment::None
            }
            (Frame::Array { .. }, At::AfterValue) if syntax => Segment::None,
            _ => Segment::Child,
        }
    }
}

#[derive(Clone, Copy)]
enum Number {
    Minus,
    Zero,
    Digits,
    Dot,
    Fraction,
    E,
    ESign,
    Exponent,
}

impl Number {
    fn next(self, byte: u8) -> Option<Number> {
        use Number::*;
        Some(match (self, byte) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') | (Digits, b'0'..=b'9') => Digits,
            (Zero | Digits, b'.') => Dot,
            (Dot | Fraction, b'0'..=b'9') => Fraction,
            (Zero | Digits | Fraction, b'e' | b'E') => E,
            (E, b'+' | b'-') => ESign,
            (E | ESign | Exponent, b'0'..=b'9') => Exponent,
            _ => return None,
        })
    }

    fn can_end(self) -> bool {
        matches!(
            self,
            Number::Zero | Number::Digits | Number::Fraction | Number::Exponent
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After a backslash; `low` where only the `\u` of a low surrogate may follow.
    Backslash {
        low: bool,
    },
    /// `left` hex digits still to come after `\u`, `value` those read.
    Hex {
        left: u8,
        value: u16,
        low: bool,
    },
    /// After a high surrogate's escape: its low half must follow.
    NeedLow,
}

/// A scalar being read.
enum Scalar {
    None,
    /// A string; the raw bytes are kept for keys.
    Text {
        escape: Escape,
        key: bool,
    },
    Number(Number),
    Literal(&'static [u8]),
}

/// The containers open at the end of `json`, outermost first, and whether `json` ends in a
/// number that could end there. Stops early, keeping the state before it, at the first byte that
/// is not JSON.
fn scan(json: &[u8]) -> (Vec<Frame>, bool) {
    let mut frames: Vec<Frame> = Vec::new();
    let mut scalar = Scalar::None;
    let mut key_bytes: Vec<u8> = Vec::new();
    let mut started = false;
    let mut bytes = json.iter().copied().peekable();
    while let Some(&byte) = bytes.peek() {
        match &mut scalar {
            Scalar::Text { escape, key } => {
                if *key {
                    key_bytes.push(byte);
                }
                match (*escape, byte) {
                    (Escape::None, b'"') => {
                        if *key {
                            key_bytes.pop();
                            let name = unescape(&key_bytes);
                            if let Some(Frame::Object { key, at }) = frames.last_mut() {
                                *key = name;
                                *at = At::AfterKey;
                            }
                        } else {
                            value_done(&mut frames);
                        }
                        scalar = Scalar::None;
                    }
                    (Escape::None, b'\\') => *escape = Escape::Backslash { low: false },
                    (Escape::None, 0x20..) => {}
                    (Escape::NeedLow, b'\\') => *escape = Escape::Backslash { low: true },
                    (Escape::Backslash { low }, b'u') => {
                        *escape = Escape::Hex {
                            left: 4,
                            value: 0,
                            low,
                        }
                    }
                    (
                        Escape::Backslash { low: false },
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't',
                    ) => *escape = Escape::None,
                    (Escape::Hex { left, value, low }, _) => {
                        let Some(digit) = char::from(byte).to_digit(16) else {
                            break;
                        };
                        let value = value << 4 | digit as u16;
                        *escape = match (left, low, value) {
                            (2.., _, _) => Escape::Hex {
                                left: left - 1,
                                value,
                                low,
                            },
                            (_, true, 0xdc00..=0xdfff) => Escape::None,
                            (_, false, 0xd800..=0xdbff) => Escape::NeedLow,
                            (_, false, 0..=0xd7ff | 0xe000..) => Escape::None,
                            // serde_json refuses a lone surrogate inside the string.
                            _ => break,
                        };
                    }
                    // A control character, a bad escape, a high surrogate alone.
                    _ => break,
                }
                bytes.next();
                continue;
            }
            Scalar::Number(state) => match state.next(byte) {
                Some(next) => {
                    *state = next;
                    bytes.next();
                    continue;
                }
                // serde_json refuses a digit after a leading zero as part of the number.
                None if matches!(state, Number::Zero) && byte.is_ascii_digit() => break,
                // The byte after a number is read again as what follows it.
                None if state.can_end() => {
                    scalar = Scalar::None;
                    value_done(&mut frames);
                }
                None => break,
            },
            Scalar::Literal(rest) => match rest.split_first() {
                Some((&expected, tail)) if expected == byte => {
                    *rest = tail;
                    if tail.is_empty() {
                        scalar = Scalar::None;
                        value_done(&mut frames);
                    }
                    bytes.next();
                    continue;
                }
                _ => break,
            },
            Scalar::None => {}
        }
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            bytes.next();
            continue;
        }
        let at = frames.last().map(Frame::at);
        let in_object = matches!(frames.last(), Some(Frame::Object { .. }));
        let expects_value = match at {
            None => !started,
            Some(At::BeforeValue) => true,
            Some(At::Next { .. }) => !in_object,
            _ => false,
        };
        match byte {
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' if expects_value => {
                started = true;
                if let Some(frame) = frames.last_mut() {
                    frame.set(At::Value);
                }
                match byte {
                    b'{' => frames.push(Frame::Object {
                        key: String::new(),
                        at: At::Next { after_comma: false },
                    }),
                    b'[' => frames.push(Frame::Array {
                        index: 0,
                        at: At::Next { after_comma: false },
                    }),
                    b'"' => {
                        scalar = Scalar::Text {
                            escape: Escape::None,
                            key: false,
                        }
                    }
                    b'-' => scalar = Scalar::Number(Number::Minus),
                    b'0' => scalar = Scalar::Number(Number::Zero),
                    b't' => scalar = Scalar::Literal(b"rue"),
                    b'f' => scalar = Scalar::Literal(b"alse"),
                    b'n' => scalar = Scalar::Literal(b"ull"),
                    _ => scalar = Scalar::Number(Number::Digits),
                }
            }
            b'"' if in_object && matches!(at, Some(At::Next { .. })) => {
                key_bytes.clear();
                scalar = Scalar::Text {
                    escape: Escape::None,
                    key: true,
                };
                if let Some(frame) = frames.last_mut() {
                    frame.set(At::Key);
                }
            }
            b':' if at == Some(At::AfterKey) => {
                if let Some(frame) = frames.last_mut() {
                    frame.set(At::BeforeValue);
                }
            }
            b',' if at == Some(At::AfterValue) => match frames.last_mut() {
                Some(Frame::Object { at, .. }) => *at = At::Next { after_comma: true },
                Some(Frame::Array { index, at }) => {
                    *index += 1;
                    *at = At::Next { after_comma: true };
                }
                None => break,
            },
            b'}' if in_object
                && matches!(at, Some(At::AfterValue | At::Next { after_comma: false })) =>
            {
                frames.pop();
                value_done(&mut frames);
            }
            b']' if !in_object
                && matches!(at, Some(At::AfterValue | At::Next { after_comma: false })) =>
            {
                frames.pop();
                value_done(&mut frames);
            }
            _ => break,
        }
        bytes.next();
    }
    let number_may_end = matches!(scalar, Scalar::Number(state) if state.can_end());
    (frames, number_may_end)
}

fn value_done(frames: &mut [Frame]) {
    if let Some(frame) = frames.last_mut() {
        frame.set(At::AfterValue);
    }
}

/// A key's text as serde_json reads it (escapes decoded).
fn unescape(raw: &[u8]) -> String {
    let mut out: Vec<u16> = Vec::new();
    let mut text = String::new();
    let mut bytes = raw.iter().copied();
    let mut plain: Vec<u8> = Vec::new();
    let flush = |plain: &mut Vec<u8>, out: &mut Vec<u16>, text: &mut String| {
        text.push_str(&String::from_utf16_lossy(out));
        out.clear();
        text.push_str(&String::from_utf8_lossy(plain));
        plain.clear();
    };
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            if !out.is_empty() {
                flush(&mut plain, &mut out, &mut text);
            }
            plain.push(byte);
            continue;
        }
        let escaped = match bytes.next() {
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            Some(other) => Some(other),
            None => break,
        };
        match escaped {
            Some(byte) => {
                if !out.is_empty() {
                    flush(&mut plain, &mut out, &mut text);
                }
                plain.push(byte);
            }
            None => {
                let hex: Vec<u8> = bytes.by_ref().take(4).collect();
                let unit = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(0xfffd);
                text.push_str(&String::from_utf8_lossy(&plain));
                plain.clear();
                out.push(unit);
            }
        }
    }
    flush(&mut plain, &mut out, &mut text);
    text
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::raw::RawConfig;
    use super::super::read::tests::reads_as_serde_did;
    use super::super::tests::design_example;

    /// What the configuration's errors said before: serde_path_to_error's path.
    fn oracle(json: &[u8]) -> Option<(String, String)> {
        let without_position = |reason: String| {
            reason
                .rfind(" at line ")
                .map_or(reason.clone(), |at| reason[..at].to_owned())
        };
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        match serde_path_to_error::deserialize::<_, RawConfig>(&mut deserializer) {
            Ok(_) => deserializer
                .end()
                .err()
                .map(|err| (String::new(), without_position(err.to_string()))),
            Err(err) => {
                let path = err.path().to_string();
                let reason = without_position(err.inner().to_string());
                Some((if path == "." { String::new() } else { path }, reason))
            }
        }
    }

    /// design.md's example, and one with the rest: keys to escape, ports, header maps,
    /// conditions, numbers of every form, nulls.
    fn documents() -> Vec<Value> {
        vec![
            design_example(),
            json!({
              "providers": {
                "p\"a\\r\u{e9}\u{1F600}": {"issuer": "https://partner.example.com", "local_jwks": {"inline": "{}"}, "require_expiration": true}
              },
              "rate_limits": {
                "by_key": {"key": "header:x-api-key", "token_bucket": {"max_tokens": 0, "tokens_per_fill": 1, "fill_interval": "1h"}, "enable_ratelimit_headers": true}
              },
              "rules": [
                {"name": "ports", "match": {"path": "/p", "ports": [8080, 0], "headers": {"x-a": "b"}}, "allow_unauthenticated": true},
                {"name": "when", "requires": {"any": ["corp", {"all": []}]}, "dry_run": false,
                 "when": [{"not": {"key": "request.path", "values": [-1.5e3, 0.25E+2, null, true, [], {}]}}]},
                {"name": "a", "match": {}}
              ],
              "access_log": {"sample_rate": 0.5},
              "direct_peer_header": null
            }),
        ]
    }

    /// The reader says what serde's derive said (the same structs, or the same error), and
    /// names the path serde_path_to_error named.
    fn check(json: &[u8], checked: &mut usize) {
        let expected = oracle(json);
        let got = reads_as_serde_did(json).err().map(|e| (e.path, e.reason));
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return;
        }
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(json));
        *checked += 1;
    }

    #[test]
    fn paths_match_serde_path_to_error() {
        let inserts: [&[u8]; 28] = [
            b",",
            b"}",
            b"]",
            b"\"",
            b":",
            b"{",
            b"[",
            b"1",
            b"x",
            b" ",
            b"-",
            b".",
            b"\\",
            b"\n",
            b"0",
            b"e",
            b"\"zz\": 1,",
            b"\"name\": \"a\",",
            b"\"issuer\": \"a\",",
            b"\"x\":",
            b"null",
            b"\x01",
            b"\xff",
            b"\xc3",
            b"\\ud800",
            b"\\udc00x",
            b"1e999",
            b"\\u00e9",
        ];
        let mut checked = 0;
        for document in documents() {
            for text in [
                document.to_string(),
                serde_json::to_string_pretty(&document).unwrap(),
            ] {
                let text = text.as_bytes();
                for at in 0..=text.len() {
                    check(&text[..at], &mut checked);
                    if at < text.len() {
                        let mut deleted = text.to_vec();
                        deleted.remove(at);
                        check(&deleted, &mut checked);
                    }
                    for insert in inserts {
                        let mut inserted = text[..at].to_vec();
                        inserted.extend_from_slice(insert);
                        inserted.extend_from_slice(&text[at..]);
                        check(&inserted, &mut checked);
                    }
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    #[test]
    fn every_value_of_the_wrong_kind_is_named_as_before() {
        fn replace_each(value: &mut Value, visit: &mut dyn FnMut(&mut Value)) {
            visit(value);
            match value {
                Value::Object(map) => map.values_mut().for_each(|v| replace_each(v, visit)),
                Value::Array(items) => items.iter_mut().for_each(|v| replace_each(v, visit)),
                _ => {}
            }
        }
        let replacements = [
            json!(null),
            json!(true),
            json!(1.5),
            json!(-1),
            json!(70000),
            json!(99_999_999_999_999_999_999_f64),
            json!("s"),
            json!("1 sec"),
            json!([]),
            json!(["a", 1]),
            json!({}),
            json!({"zz": 1}),
        ];
        let mut checked = 0;
        for document in documents() {
            let mut count = 0;
            replace_each(&mut document.clone(), &mut |_| count += 1);
            for target in 0..count {
                for replacement in &replacements {
                    let mut changed = document.clone();
                    let mut index = 0;
                    replace_each(&mut changed, &mut |v| {
                        if index == target {
                            *v = replacement.clone();
                        }
                        index += 1;
                    });
                    check(changed.to_string().as_bytes(), &mut checked);
                    check(
                        serde_json::to_string_pretty(&changed).unwrap().as_bytes(),
                        &mut checked,
                    );
                }
            }
        }
        assert!(checked > 1_000, "{checked}");
    }

    #[test]
    fn nesting_past_serde_json_recursion_limit_is_named_as_before() {
        for depth in [126, 127, 128, 129, 200] {
            let mut nested = "[1]".to_owned();
            let mut objects = "{}".to_owned();
            for _ in 0..depth {
                nested = format!("[{nested}]");
                objects = format!("{{\"not\": {objects}}}");
            }
            let mut checked = 0;
            for when in [nested, objects] {
                let text = format!(r#"{{"rules": [{{"name": "a", "when": [{when}]}}]}}"#);
                check(text.as_bytes(), &mut checked);
            }
            assert_eq!(checked, 2);
        }
    }
}
