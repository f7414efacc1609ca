//! Authorization conditions from JSON (`when`), with errors that name their JSON path. Parsed
//! from `serde_json::Value` because conditions nest and their shape depends on their key.

use serde_json::{Map, Value};

use super::duration::parse_duration;
use super::ConfigError;
use crate::authz::pattern::{IpBlock, PathPattern, TextPattern};
use crate::authz::{Condition, Key, Test, Values};

/// Deeper nesting is refused: no policy needs it, and evaluation recurses.
const MAX_DEPTH: usize = 16;

pub fn build_when(path: &str, raw: Option<&[Value]>) -> Result<Vec<Condition>, ConfigError> {
    raw.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, value)| build_condition(&format!("{path}[{i}]"), value, 0))
        .collect()
}

fn build_condition(path: &str, raw: &Value, depth: usize) -> Result<Condition, ConfigError> {
    if depth > MAX_DEPTH {
        return Err(ConfigError::new(
            path,
            format!("conditions nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Value::Object(members) = raw else {
        return Err(ConfigError::new(
            path,
            "must be a condition object: {\"key\": ..., \"values\": [...]}, {\"scopes\": [...]}, {\"max_lifetime\": ...}, {\"all\": [...]}, {\"any\": [...]} or {\"not\": {...}}",
        ));
    };
    for name in members.keys() {
        if !matches!(
            name.as_str(),
            "key"
                | "values"
                | "not_values"
                | "scopes"
                | "max_lifetime"
                | "all"
                | "any"
                | "not"
                | "dry_run"
        ) {
            return Err(ConfigError::new(
                format!("{path}.{name}"),
                format!("unknown field `{name}`, expected `key`, `values`, `not_values`, `scopes`, `max_lifetime`, `all`, `any`, `not` or `dry_run`"),
            ));
        }
    }
    let dry_run = match members.get("dry_run") {
        None => false,
        Some(value) => value
            .as_bool()
            .ok_or_else(|| ConfigError::new(format!("{path}.dry_run"), "must be true or false"))?,
    };
    let kinds: Vec<&str> = ["key", "scopes", "max_lifetime", "all", "any", "not"]
        .into_iter()
        .filter(|kind| members.contains_key(*kind))
        .collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(ConfigError::new(
                path,
                "needs one of `key`, `scopes`, `max_lifetime`, `all`, `any` or `not`",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                path,
                format!("set only one of {}", kinds.join(", ")),
            ))
        }
    };
    if kind != "key" {
        for field in ["values", "not_values"] {
            if members.contains_key(field) {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    "only applies to a `key` condition",
                ));
            }
        }
    }
    let member = |name: &str| members.get(name).unwrap_or(&Value::Null);
    let (test, what) = match kind {
        "key" => build_attribute(path, members)?,
        "scopes" => {
            let scopes = strings(&format!("{path}.scopes"), member("scopes"))?;
            if let Some((i, _)) = scopes.iter().enumerate().find(|(_, s)| s.contains(' ')) {
                return Err(ConfigError::new(
                    format!("{path}.scopes[{i}]"),
                    "a scope has no spaces (list each scope on its own)",
                ));
            }
            (Test::Scopes(scopes), "scopes".to_owned())
        }
        "max_lifetime" => {
            let field = format!("{path}.max_lifetime");
            let text = member("max_lifetime")
                .as_str()
                .ok_or_else(|| ConfigError::new(&field, "must be a duration string like \"1h\""))?;
            let max = parse_duration(text).map_err(|reason| ConfigError::new(&field, reason))?;
            (Test::MaxLifetime(max.as_secs()), "max_lifetime".to_owned())
        }
        "not" => {
            let child = build_condition(&format!("{path}.not"), member("not"), depth + 1)?;
            (Test::Not(Box::new(child)), "not".to_owned())
        }
        list => {
            let field = format!("{path}.{list}");
            let items = member(list)
                .as_array()
                .filter(|items| !items.is_empty())
                .ok_or_else(|| {
                    ConfigError::new(&field, "must be a non-empty list of conditions")
                })?;
            let children = items
                .iter()
                .enumerate()
                .map(|(i, item)| build_condition(&format!("{field}[{i}]"), item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            let test = if list == "all" {
                Test::All(children)
            } else {
                Test::Any(children)
            };
            (test, list.to_owned())
        }
    };
    let reads_token = reads_token(&test);
    Ok(Condition {
        test,
        dry_run,
        label: format!("{path}: {what}"),
        reads_token,
    })
}

fn reads_token(test: &Test) -> bool {
    match test {
        Test::Attribute { key, .. } => key.reads_token(),
        Test::Scopes(_) | Test::MaxLifetime(_) => true,
        Test::All(children) | Test::Any(children) => children.iter().any(|c| c.reads_token),
        Test::Not(child) => child.reads_token,
    }
}

fn build_attribute(
    path: &str,
    members: &Map<String, Value>,
) -> Result<(Test, String), ConfigError> {
    let key_path = format!("{path}.key");
    let text = members.get("key").and_then(Value::as_str).ok_or_else(|| {
        ConfigError::new(
            &key_path,
            "must be a string such as \"request.auth.claims[groups]\"",
        )
    })?;
    let key = parse_key(text).map_err(|reason| ConfigError::new(&key_path, reason))?;
    let values = members
        .get("values")
        .map(|raw| values_for(&key, &format!("{path}.values"), raw))
        .transpose()?;
    let not_values = members
        .get("not_values")
        .map(|raw| values_for(&key, &format!("{path}.not_values"), raw))
        .transpose()?;
    if values.is_none() && not_values.is_none() {
        return Err(ConfigError::new(
            path,
            "a `key` condition needs `values` or `not_values`",
        ));
    }
    Ok((
        Test::Attribute {
            key,
            values,
            not_values,
        },
        text.to_owned(),
    ))
}

/// Istio's attribute names (`conditions` reference), plus `source.service_account` and
/// `source.trust_domain` for Istio's `serviceAccounts` and trust domains.
pub fn parse_key(text: &str) -> Result<Key, String> {
    if let Some(rest) = text.strip_prefix("request.auth.claims") {
        return claim_path(rest)
            .map(Key::Claim)
            .ok_or_else(|| format!("{text:?}: a claim is named in brackets, request.auth.claims[name] or request.auth.claims[outer][inner]"));
    }
    if let Some(rest) = text.strip_prefix("request.headers[") {
        let name = rest
            .strip_suffix(']')
            .filter(|name| !name.is_empty() && name.bytes().all(super::is_token_byte))
            .ok_or_else(|| {
                format!("{text:?}: a header is named in brackets, request.headers[x-tenant]")
            })?;
        return Ok(Key::Header(name.to_ascii_lowercase()));
    }
    Ok(match text {
        "request.auth.principal" => Key::RequestPrincipal,
        "request.auth.audiences" => Key::Audiences,
        "request.auth.presenter" => Key::Presenter,
        "source.principal" => Key::SourcePrincipal,
        "source.namespace" => Key::SourceNamespace,
        "source.service_account" => Key::SourceServiceAccount,
        "source.trust_domain" => Key::SourceTrustDomain,
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "request.path" => Key::Path,
        "request.method" => Key::Method,
        "request.host" => Key::Host,
        "destination.port" => Key::Port,
        other => {
            return Err(format!(
                "unknown key {other:?}; expected request.auth.claims[...], request.auth.principal, request.auth.audiences, request.auth.presenter, source.principal, source.namespace, source.service_account, source.trust_domain, source.ip, remote.ip, request.headers[...], request.path, request.method, request.host or destination.port"
            ))
        }
    })
}

/// `[a][b.c]` → `["a", "b.c"]`: brackets, so a claim name may hold dots (URLs often do).
fn claim_path(mut rest: &str) -> Option<Vec<String>> {
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name.to_owned());
        rest = after;
    }
    (!path.is_empty()).then_some(path)
}

fn strings(path: &str, raw: &Value) -> Result<Vec<String>, ConfigError> {
    let items = raw
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or_else(|| ConfigError::new(path, "must be a non-empty list of strings"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(text) if !text.is_empty() => Ok(text.to_owned()),
            _ => Err(ConfigError::new(
                format!("{path}[{i}]"),
                "must be a non-empty string",
            )),
        })
        .collect()
}

fn values_for(key: &Key, path: &str, raw: &Value) -> Result<Values, ConfigError> {
    let texts = strings(path, raw)?;
    let each = |i: usize| format!("{path}[{i}]");
    Ok(match key {
        Key::SourceIp | Key::RemoteIp => Values::Ip(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| IpBlock::parse(t).map_err(|reason| ConfigError::new(each(i), reason)))
                .collect::<Result<_, _>>()?,
        ),
        Key::Path => Values::Path(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    PathPattern::parse(t).map_err(|reason| ConfigError::new(each(i), reason))
                })
                .collect::<Result<_, _>>()?,
        ),
        Key::Host => Values::Host(
            texts
                .iter()
                .map(|t| present_or(TextPattern::parse(&t.to_ascii_lowercase())))
                .collect(),
        ),
        Key::Header(_) => Values::Text(
            texts
                .iter()
                .map(|t| present_or(TextPattern::parse(t)))
                .collect(),
        ),
        Key::Port => {
            for (i, text) in texts.iter().enumerate() {
                if text.parse::<u16>().is_err() {
                    return Err(ConfigError::new(
                        each(i),
                        format!("{text:?} is not a port number"),
                    ));
                }
            }
            Values::Text(
                texts
                    .iter()
                    .map(|t| TextPattern::Exact(t.clone()))
                    .collect(),
            )
        }
        _ => Values::Text(texts.iter().map(|t| TextPattern::parse(t)).collect()),
    })
}

/// For headers and hosts istiod writes `*` as Envoy's `present_match` (header.go), which an
/// empty value meets too; elsewhere `*` is the regex `.+`.
fn present_or(pattern: TextPattern) -> TextPattern {
    match pattern {
        TextPattern::Present => TextPattern::Prefix(String::new()),
        other => other,
    }
}
