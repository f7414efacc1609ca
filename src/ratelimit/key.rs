//! The bucket key of a request for one policy: its key parts, joined. A part that is missing
//! (no such header, no such claim) is its own bucket `-`, never a bypass; present values are
//! written `=value`, so a header whose value is "-" is not confused with a missing one.

use std::borrow::Cow;

use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::auth::outputs::claim_header_value;
use crate::config::KeyPart;
use crate::request::Request;

pub struct KeyFacts<'a> {
    pub request: &'a Request<'a>,
    pub rule: &'a str,
    /// Claims of the verified tokens, first provider first (one or two: kept inline).
    pub claims: SmallVec<[&'a Map<String, Value>; 2]>,
}

/// The bytes `push_part` writes for `value`.
fn part_len(value: Option<&str>) -> usize {
    1 + value.map_or(0, |value| {
        value.len() + 2 * value.bytes().filter(|b| matches!(b, b'|' | b'%')).count()
    })
}

fn push_part(key: &mut String, value: Option<&str>) {
    if !key.is_empty() {
        key.push('|');
    }
    match value {
        None => key.push('-'),
        Some(value) => {
            key.push('=');
            for c in value.chars() {
                match c {
                    '|' => key.push_str("%7C"),
                    '%' => key.push_str("%25"),
                    other => key.push(other),
                }
            }
        }
    }
}

/// The value of one key part on this request; `None` when the request does not carry it.
/// Borrowed from the request, its tokens or the configuration where it can be.
pub fn key_part_value<'f>(part: &'f KeyPart, facts: &'f KeyFacts) -> Option<Cow<'f, str>> {
    match part {
        KeyPart::ClientIp => facts.request.client_ip.as_deref().map(Cow::Borrowed),
        KeyPart::Header(name) => facts.request.header_combined(name).map(Cow::Owned),
        KeyPart::Claim(name) => facts
            .claims
            .iter()
            .find_map(|claims| claim_header_value(claims, name)),
        KeyPart::Rule => Some(Cow::Borrowed(facts.rule)),
        KeyPart::Path => Some(Cow::Borrowed(facts.request.path_only())),
        KeyPart::Const(text) => Some(Cow::Borrowed(text)),
    }
}

/// The key, in one allocation of its exact size.
pub fn build_key(parts: &[KeyPart], facts: &KeyFacts) -> String {
    let values: SmallVec<[Option<Cow<str>>; 4]> = parts
        .iter()
        .map(|part| key_part_value(part, facts))
        .collect();
    let separators = values.len().saturating_sub(1);
    let len = values
        .iter()
        .map(|value| part_len(value.as_deref()))
        .sum::<usize>()
        + separators;
    let mut key = String::with_capacity(len);
    for value in &values {
        push_part(&mut key, value.as_deref());
    }
    key
}

/// The address part of Envoy's `source.address` (`10.0.0.1:5555`, `[::1]:5555`).
pub fn ip_of_address(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Request<'static> {
        let mut request = Request::new(
            "GET",
            "/api/x?q=1",
            "svc",
            vec![("x-api-key".into(), "k|1".into())],
        );
        request.client_ip = Some("10.0.0.7".into());
        request
    }

    #[test]
    fn joins_parts_and_marks_missing_ones() {
        let request = request();
        let claims = json!({"sub": "alice", "tier": 2})
            .as_object()
            .cloned()
            .unwrap();
        let facts = KeyFacts {
            request: &request,
            rule: "api",
            claims: smallvec::smallvec![&claims],
        };
        let parts = vec![
            KeyPart::ClientIp,
            KeyPart::Header("x-api-key".into()),
            KeyPart::Header("x-absent".into()),
            KeyPart::Claim("sub".into()),
            KeyPart::Claim("tier".into()),
            KeyPart::Claim("absent".into()),
            KeyPart::Rule,
            KeyPart::Path,
            KeyPart::Const("v1".into()),
        ];
        assert_eq!(
            build_key(&parts, &facts),
            "=10.0.0.7|=k%7C1|-|=alice|=2|-|=api|=/api/x|=v1"
        );
    }

    #[test]
    fn a_dash_value_is_not_a_missing_value() {
        let request = Request::new("GET", "/", "", vec![("x-k".into(), "-".into())]);
        let facts = KeyFacts {
            request: &request,
            rule: "r",
            claims: Default::default(),
        };
        let present = build_key(&[KeyPart::Header("x-k".into())], &facts);
        let missing = build_key(&[KeyPart::Header("x-other".into())], &facts);
        assert_ne!(present, missing);
    }

    #[test]
    fn client_ip_without_port() {
        assert_eq!(ip_of_address("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(ip_of_address("[::1]:5555"), "::1");
        assert_eq!(ip_of_address("::1"), "::1");
        assert_eq!(ip_of_address("10.1.2.3"), "10.1.2.3");
    }
}
