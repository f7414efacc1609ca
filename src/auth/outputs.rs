//! What a verified token puts on the upstream request: claims as headers (`claim_to_headers`)
//! and the payload (`forward_payload_header`).

use std::borrow::Cow;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::config::Provider;
use crate::names::Names;

/// A claim rendered as a header value an application can use as it stands (README, "Claims
/// become headers"; deliberately not Envoy jwt_authn's `%f` numbers and base64 arrays): strings
/// as they are, numbers and booleans as JSON, arrays of strings joined by `,`. Anything else
/// (objects, mixed arrays, values with control characters) gives no header.
/// A string claim is borrowed.
pub fn claim_header_value<'c>(
    claims: &'c Map<String, Value>,
    claim_name: &str,
) -> Option<Cow<'c, str>> {
    let value = lookup(claims, claim_name)?;
    let rendered = match value {
        Value::String(text) => Cow::Borrowed(text.as_str()),
        Value::Number(number) => Cow::Owned(number.to_string()),
        Value::Bool(flag) => Cow::Borrowed(if *flag { "true" } else { "false" }),
        Value::Array(items) => Cow::Owned(
            items
                .iter()
                .map(|item| item.as_str())
                .collect::<Option<Vec<_>>>()?
                .join(","),
        ),
        Value::Null | Value::Object(_) => return None,
    };
    let safe = rendered
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    safe.then_some(rendered)
}

/// `a.b.c` reaches into nested objects when no top-level claim has that exact name.
fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// The headers a verified token adds upstream for `provider` (names shared from `names`).
pub fn upstream_headers(
    provider: &Provider,
    names: &Names,
    claims: &Map<String, Value>,
    payload_b64: &str,
) -> Vec<(Rc<str>, Rc<str>)> {
    let mut headers: Vec<(Rc<str>, Rc<str>)> = provider
        .claim_to_headers
        .iter()
        .filter_map(|mapping| {
            claim_header_value(claims, &mapping.claim_name)
                .map(|value| (names.header(&mapping.header_name), Rc::from(value)))
        })
        .collect();
    if let Some(header) = &provider.forward_payload_header {
        headers.push((names.header(header), Rc::from(payload_b64)));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "alice", "n": 42, "f": 1.5, "admin": true,
            "roles": ["read", "write"], "mixed": ["a", 1], "obj": {"team": {"id": "t1"}},
            "nul": null, "crlf": "a\r\nx-evil: 1", "a.b": "flat"
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn renders_scalars_as_json_and_string_arrays_joined() {
        let c = claims();
        assert_eq!(claim_header_value(&c, "sub").as_deref(), Some("alice"));
        assert_eq!(claim_header_value(&c, "n").as_deref(), Some("42"));
        assert_eq!(claim_header_value(&c, "f").as_deref(), Some("1.5"));
        assert_eq!(claim_header_value(&c, "admin").as_deref(), Some("true"));
        assert_eq!(
            claim_header_value(&c, "roles").as_deref(),
            Some("read,write")
        );
    }

    #[test]
    fn nested_claims_by_dotted_name_and_exact_names_first() {
        let c = claims();
        assert_eq!(claim_header_value(&c, "obj.team.id").as_deref(), Some("t1"));
        assert_eq!(claim_header_value(&c, "a.b").as_deref(), Some("flat"));
    }

    #[test]
    fn no_header_for_objects_mixed_arrays_nulls_absent_or_unsafe_values() {
        let c = claims();
        for name in ["obj", "mixed", "nul", "absent", "crlf", "obj.none"] {
            assert_eq!(claim_header_value(&c, name), None, "{name}");
        }
    }
}
