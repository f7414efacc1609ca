//! The pluginConfig the import writes, field for field as /work/authz-spec.md names them, and
//! the boolean algebra that keeps the written conditions short.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

#[derive(Serialize, Debug, Default)]
pub struct PluginConfig {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, Provider>,
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Provider {
    pub issuer: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<LocalJwks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwks>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<HeaderLocation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub forward: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_payload_header: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LocalJwks {
    pub inline: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub uri: String,
    pub timeout: String,
    pub cache_duration: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HeaderLocation {
    pub name: String,
    pub value_prefix: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ClaimToHeader {
    pub claim_name: String,
    pub header_name: String,
}

#[derive(Serialize, Debug)]
pub struct Rule {
    pub name: String,
    /// `None` is an allow rule (the contract's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(rename = "match")]
    pub matcher: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<Value>,
    #[serde(skip_serializing_if = "is_false")]
    pub allow_missing: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub allow_unauthenticated: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Value>,
    #[serde(skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

impl Rule {
    /// A deny or audit rule that holds when `condition` does; none if it never can.
    pub fn judging(
        name: String,
        action: &'static str,
        condition: &Cond,
        dry_run: bool,
    ) -> Option<Rule> {
        if *condition == Cond::False {
            return None;
        }
        Some(Rule {
            name,
            action: Some(action),
            matcher: json!({}),
            requires: None,
            allow_missing: false,
            allow_unauthenticated: false,
            when: condition.when_list(),
            dry_run,
        })
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A condition as Istio's rules compose it. `True`/`False` never reach the output: they are
/// folded away, and a rule whose condition is `False` is not written (deny/audit) or gets
/// [`NEVER`] (the allow rule).
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    True,
    False,
    Key { key: String, values: Vec<String> },
    Not(Box<Cond>),
    All(Vec<Cond>),
    Any(Vec<Cond>),
}

impl Cond {
    pub fn key(key: impl Into<String>, values: Vec<String>) -> Cond {
        Cond::Key {
            key: key.into(),
            values,
        }
    }

    /// Istio's `values` (OR'ed) and `notValues` (a NOT of the OR, which holds when the attribute
    /// is absent: RBAC `not_id`, model.go `principal()`/`permission()`), AND'ed.
    pub fn values_and_not(key: &str, values: Vec<String>, not_values: Vec<String>) -> Cond {
        let mut parts = Vec::new();
        if !values.is_empty() {
            parts.push(Cond::key(key, values));
        }
        if !not_values.is_empty() {
            parts.push(Cond::not(Cond::key(key, not_values)));
        }
        Cond::all(parts)
    }

    pub fn not(inner: Cond) -> Cond {
        match inner {
            Cond::True => Cond::False,
            Cond::False => Cond::True,
            Cond::Not(inner) => *inner,
            other => Cond::Not(Box::new(other)),
        }
    }

    pub fn all(parts: Vec<Cond>) -> Cond {
        let mut kept = Vec::new();
        for part in parts {
            match part {
                Cond::True => {}
                Cond::False => return Cond::False,
                Cond::All(inner) => kept.extend(inner),
                other => kept.push(other),
            }
        }
        match kept.len() {
            0 => Cond::True,
            1 => kept.pop().unwrap_or(Cond::True),
            _ => Cond::All(kept),
        }
    }

    pub fn any(parts: Vec<Cond>) -> Cond {
        let mut kept = Vec::new();
        for part in parts {
            match part {
                Cond::False => {}
                Cond::True => return Cond::True,
                Cond::Any(inner) => kept.extend(inner),
                other => kept.push(other),
            }
        }
        match kept.len() {
            0 => Cond::False,
            1 => kept.pop().unwrap_or(Cond::False),
            _ => Cond::Any(kept),
        }
    }

    /// The condition with every attribute of the verified token taken as absent (false).
    pub fn without_token(self) -> Cond {
        match self {
            Cond::Key { key, .. } if key.starts_with("request.auth.") => Cond::False,
            Cond::Not(inner) => Cond::not(inner.without_token()),
            Cond::All(parts) => Cond::all(parts.into_iter().map(Cond::without_token).collect()),
            Cond::Any(parts) => Cond::any(parts.into_iter().map(Cond::without_token).collect()),
            other => other,
        }
    }

    /// A rule's `when` list (AND'ed): the parts of a top-level `all`, or the one condition.
    pub fn when_list(&self) -> Vec<Value> {
        match self {
            Cond::True => Vec::new(),
            Cond::All(parts) => parts.iter().map(Cond::to_json).collect(),
            other => vec![other.to_json()],
        }
    }

    fn to_json(&self) -> Value {
        match self {
            // Folded away before output; kept total so no input can make the import panic.
            Cond::True => json!({"not": never()}),
            Cond::False => never(),
            Cond::Key { key, values } => json!({"key": key, "values": values}),
            Cond::Not(inner) => json!({"not": inner.to_json()}),
            Cond::All(parts) => json!({"all": parts.iter().map(Cond::to_json).collect::<Vec<_>>()}),
            Cond::Any(parts) => json!({"any": parts.iter().map(Cond::to_json).collect::<Vec<_>>()}),
        }
    }
}

/// A condition that never holds, for the allow rule when ALLOW policies exist but none can
/// match (`spec: {}`): every request has a method, and `*` matches any.
pub fn never() -> Value {
    json!({"not": {"key": "request.method", "values": ["*"]}})
}
