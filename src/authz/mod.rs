//! Authorization: who may do what. Conditions on the verified tokens, the caller's mesh
//! identity, its addresses and the request itself, combined with all / any / not; deny rules
//! that win over allow rules whatever their order; audit rules that only mark the record; and
//! dry runs that decide and record but never refuse. Plain Rust: the facts come in as values.

pub mod pattern;
pub mod peer;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::rc::Rc;

use serde_json::Value;

use crate::auth::cache::VerifiedToken;
use crate::config::{Provider, RuleMatch};
use crate::request::Request;
use pattern::{IpBlock, PathPattern, TextPattern};

/// The attribute a `key` condition reads (Istio's names, `README.md` "Authorization").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `request.auth.claims[a][b]`: a claim by path into nested objects.
    Claim(Vec<String>),
    /// `request.auth.principal`: `iss/sub`.
    RequestPrincipal,
    /// `request.auth.audiences`: each `aud`.
    Audiences,
    /// `request.auth.presenter`: `azp`.
    Presenter,
    SourcePrincipal,
    SourceNamespace,
    SourceServiceAccount,
    SourceTrustDomain,
    /// The direct peer's address.
    SourceIp,
    /// The client address Envoy derived (`X-Forwarded-For` under its trusted hops).
    RemoteIp,
    /// `request.headers[name]`, lower-case name.
    Header(String),
    Path,
    Method,
    Host,
    Port,
}

impl Key {
    pub fn reads_token(&self) -> bool {
        matches!(
            self,
            Key::Claim(_) | Key::RequestPrincipal | Key::Audiences | Key::Presenter
        )
    }

    pub fn reads_peer(&self) -> bool {
        matches!(
            self,
            Key::SourcePrincipal
                | Key::SourceNamespace
                | Key::SourceServiceAccount
                | Key::SourceTrustDomain
        )
    }
}

/// What a key's value is compared with; which kind is checked against the key when built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    Text(Vec<TextPattern>),
    /// Host names: compared without regard to case (patterns are lower-case).
    Host(Vec<TextPattern>),
    Path(Vec<PathPattern>),
    Ip(Vec<IpBlock>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Attribute {
        key: Key,
        values: Option<Values>,
        not_values: Option<Values>,
    },
    /// Every listed scope is granted (`scope` / `scp`, space-delimited or an array).
    Scopes(Vec<String>),
    /// Every verified token has `exp` and `iat`, `exp - iat` at most this many seconds.
    MaxLifetime(u64),
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub test: Test,
    pub dry_run: bool,
    /// Where it is and what it reads (`rules[2].when[0]: scopes`), for the record. Never a value
    /// a request sent.
    pub label: String,
    /// Whether a token could make it hold: a refusal on it, with no token sent, is a 401.
    pub reads_token: bool,
}

/// A deny or audit rule: it never chooses the request's authentication or rate limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub name: String,
    pub matcher: RuleMatch,
    pub when: Vec<Condition>,
    pub dry_run: bool,
}

/// The authorization parts of a configuration besides the allow rules' own `when`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    pub deny: Vec<PolicyRule>,
    pub audit: Vec<PolicyRule>,
    pub bypass_cors_preflight: bool,
}

/// Everything conditions read, borrowed for one decision.
pub struct Facts<'a> {
    /// The request, with the connection facts the host read for it (peer, addresses, port).
    pub request: &'a Request<'a>,
    pub tokens: &'a [Rc<VerifiedToken>],
    pub providers: &'a [Provider],
}

/// The claims always read as space-delimited lists (RFC 8693 `scope`, and `scp`, which
/// Microsoft Entra and Okta use); providers add more with `space_delimited_claims`.
pub const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "scp"];

impl Facts<'_> {
    /// Calls `visit` with each value the key has on this request; false when it has none.
    fn each_value(&self, key: &Key, visit: &mut dyn FnMut(&str)) -> bool {
        let mut present = false;
        let mut seen = |value: &str| {
            present = true;
            visit(value);
        };
        match key {
            Key::Claim(path) => {
                for token in self.tokens {
                    let split = path.len() == 1
                        && path
                            .first()
                            .is_some_and(|name| self.space_delimited(token, name));
                    if let Some(value) = claim_at(&token.claims, path) {
                        each_string(value, split, &mut seen);
                    }
                }
            }
            Key::RequestPrincipal => {
                for principal in self.tokens.iter().filter_map(|t| t.principal.as_deref()) {
                    seen(principal);
                }
            }
            Key::Audiences => {
                for token in self.tokens {
                    if let Some(aud) = token.claims.get("aud") {
                        each_string(aud, false, &mut seen);
                    }
                }
            }
            Key::Presenter => {
                for token in self.tokens {
                    if let Some(Value::String(azp)) = token.claims.get("azp") {
                        seen(azp);
                    }
                }
            }
            Key::SourcePrincipal => {
                if let Some(peer) = self.request.peer.as_ref() {
                    seen(&peer.principal);
                }
            }
            Key::SourceNamespace => {
                if let Some(ns) = self
                    .request
                    .peer
                    .as_ref()
                    .and_then(|p| p.namespace.as_deref())
                {
                    seen(ns);
                }
            }
            Key::SourceServiceAccount => {
                if let Some(sa) = self
                    .request
                    .peer
                    .as_ref()
                    .and_then(|p| p.service_account.as_deref())
                {
                    seen(sa);
                }
            }
            Key::SourceTrustDomain => {
                if let Some(peer) = self.request.peer.as_ref() {
                    seen(&peer.trust_domain);
                }
            }
            Key::Path => seen(self.request.path_only()),
            Key::Method => seen(&self.request.method),
            Key::Host => seen(&self.request.authority),
            Key::Port => {
                if let Some(port) = self.request.port {
                    seen(&port.to_string());
                }
            }
            // Addresses are compared as addresses (`Values::Ip`), never as text; a header's
            // lines one by one (`header_holds`).
            Key::SourceIp | Key::RemoteIp | Key::Header(_) => {}
        }
        present
    }

    fn space_delimited(&self, token: &VerifiedToken, name: &str) -> bool {
        SPACE_DELIMITED_CLAIMS.contains(&name)
            || self
                .providers
                .get(token.provider)
                .is_some_and(|p| p.space_delimited_claims.iter().any(|c| c == name))
    }

    fn address(&self, key: &Key) -> Option<IpAddr> {
        match key {
            Key::SourceIp => self.request.direct_ip,
            Key::RemoteIp => self.request.remote_ip,
            _ => None,
        }
    }

    fn attribute_holds(
        &self,
        key: &Key,
        values: Option<&Values>,
        not_values: Option<&Values>,
    ) -> bool {
        if let (Some(Values::Ip(_)), _) | (_, Some(Values::Ip(_))) = (values, not_values) {
            let Some(address) = self.address(key) else {
                return false;
            };
            let within = |blocks: Option<&Values>| match blocks {
                Some(Values::Ip(blocks)) => blocks.iter().any(|b| b.contains(address)),
                _ => false,
            };
            return (values.is_none() || within(values)) && !within(not_values);
        }
        let mut any_value = values.is_none();
        let mut any_not_value = false;
        let present = self.each_value(key, &mut |value| {
            if !any_value && values.is_some_and(|v| matches_value(v, value)) {
                any_value = true;
            }
            if !any_not_value && not_values.is_some_and(|v| matches_value(v, value)) {
                any_not_value = true;
            }
        });
        present && any_value && !any_not_value
    }

    /// A header condition. Envoy's rbac compares each line of a repeated header on its own and
    /// holds if any line does, so a client can add a friendlier copy to meet an allow rule. Here
    /// a repeated header is read the way that lets the request through least: when holding lets
    /// it through (`pass`), every line must hold; when holding refuses it, any line will do.
    fn header_holds(
        &self,
        name: &str,
        values: Option<&Values>,
        not_values: Option<&Values>,
        pass: bool,
    ) -> bool {
        let line_holds = |line: &str| {
            values.is_none_or(|v| matches_value(v, line))
                && !not_values.is_some_and(|v| matches_value(v, line))
        };
        let mut lines = self.request.header_values(name).peekable();
        if lines.peek().is_none() {
            return false;
        }
        if pass {
            lines.all(line_holds)
        } else {
            lines.any(line_holds)
        }
    }

    fn scopes_granted(&self, scopes: &[String]) -> bool {
        scopes.iter().all(|wanted| {
            self.tokens.iter().any(|token| {
                SPACE_DELIMITED_CLAIMS.iter().any(|claim| {
                    let mut granted = false;
                    if let Some(value) = token.claims.get(*claim) {
                        each_string(value, true, &mut |scope| granted |= scope == wanted);
                    }
                    granted
                })
            })
        })
    }

    fn lifetimes_within(&self, max_s: u64) -> bool {
        !self.tokens.is_empty()
            && self.tokens.iter().all(|token| {
                let number = |name: &str| token.claims.get(name).and_then(Value::as_u64);
                matches!((number("exp"), number("iat")), (Some(exp), Some(iat)) if exp.saturating_sub(iat) <= max_s)
            })
    }
}

fn matches_value(values: &Values, value: &str) -> bool {
    match values {
        Values::Text(patterns) => patterns.iter().any(|p| p.matches(value)),
        Values::Host(patterns) => {
            let lower = value.to_ascii_lowercase();
            patterns.iter().any(|p| p.matches(&lower))
        }
        Values::Path(patterns) => patterns.iter().any(|p| p.matches(value)),
        Values::Ip(_) => false,
    }
}

fn claim_at<'v>(claims: &'v serde_json::Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for name in rest {
        value = value.as_object()?.get(name)?;
    }
    Some(value)
}

/// A claim's string values: itself, or each string element of an array; split on spaces when
/// the claim is space-delimited. Numbers, booleans and objects have no string value, as Envoy's
/// metadata string matcher sees them.
fn each_string(value: &Value, split: bool, visit: &mut dyn FnMut(&str)) {
    let mut one = |text: &str| {
        if split {
            text.split(' ')
                .filter(|s| !s.is_empty())
                .for_each(&mut *visit);
        } else {
            visit(text);
        }
    };
    match value {
        Value::String(text) => one(text),
        Value::Array(items) => items.iter().filter_map(Value::as_str).for_each(one),
        _ => {}
    }
}

/// How a condition is read. `pass` is the value that lets the request through (true in an
/// allow rule's `when`, false in a deny rule's; `not` flips it). Enforcement reads a dry-run
/// condition as `pass`; the actual reading uses its real value. A repeated header is read the
/// way that lets the request through least (`Facts::header_holds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    enforced: bool,
    pass: bool,
}

impl Reading {
    fn flipped(self) -> Reading {
        Reading {
            pass: !self.pass,
            ..self
        }
    }
}

fn holds(condition: &Condition, facts: &Facts, reading: Reading) -> bool {
    if condition.dry_run && reading.enforced {
        return reading.pass;
    }
    match &condition.test {
        Test::Attribute {
            key: Key::Header(name),
            values,
            not_values,
        } => facts.header_holds(name, values.as_ref(), not_values.as_ref(), reading.pass),
        Test::Attribute {
            key,
            values,
            not_values,
        } => facts.attribute_holds(key, values.as_ref(), not_values.as_ref()),
        Test::Scopes(scopes) => facts.scopes_granted(scopes),
        Test::MaxLifetime(max_s) => facts.lifetimes_within(*max_s),
        Test::All(children) => children.iter().all(|c| holds(c, facts, reading)),
        Test::Any(children) => children.iter().any(|c| holds(c, facts, reading)),
        Test::Not(child) => !holds(child, facts, reading.flipped()),
    }
}

/// The first condition of an `all`-list that does not hold, looking into nested `all`s so the
/// record names the leaf that failed.
fn first_failure<'c>(
    conditions: &'c [Condition],
    facts: &Facts,
    reading: Reading,
) -> Option<&'c Condition> {
    let failed = conditions.iter().find(|c| !holds(c, facts, reading))?;
    match &failed.test {
        Test::All(children) if !(failed.dry_run && reading.enforced) => {
            first_failure(children, facts, reading).or(Some(failed))
        }
        _ => Some(failed),
    }
}

fn any_dry_run(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| {
        c.dry_run
            || match &c.test {
                Test::All(children) | Test::Any(children) => any_dry_run(children),
                Test::Not(child) => any_dry_run(std::slice::from_ref(child.as_ref())),
                _ => false,
            }
    })
}

/// Whether a rule's `when` holds: as enforced, and as it would with its dry-run parts enforced.
/// `pass` is the value that lets the request through (true for an allow rule's `when`).
fn when_holds(when: &[Condition], facts: &Facts, pass: bool) -> (bool, bool) {
    let reading = Reading {
        enforced: true,
        pass,
    };
    let enforced = when.iter().all(|c| holds(c, facts, reading));
    if !any_dry_run(when) {
        return (enforced, enforced);
    }
    let actual = when.iter().all(|c| {
        holds(
            c,
            facts,
            Reading {
                enforced: false,
                pass,
            },
        )
    });
    (enforced, actual)
}

/// Why the request's own allow rule refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet<'c> {
    pub rule: &'c str,
    /// None only if the conditions changed their minds between two readings (they cannot).
    pub condition: Option<&'c Condition>,
    /// The scopes the failed condition wants (an `insufficient_scope` challenge).
    pub scopes: Option<&'c [String]>,
}

/// A would-be refusal a dry run let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunDenial<'c> {
    pub rule: &'c str,
    pub condition: Option<&'c Condition>,
}

/// What authorization concluded, steps 4–6 of `README.md` "Authorization: precedence".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judgement<'c> {
    /// The deny rule that refused the request.
    pub denied_by: Option<&'c str>,
    /// The allow rule's condition that was not met (when no deny rule refused first).
    pub unmet: Option<Unmet<'c>>,
    pub dry_run_denials: Vec<DryRunDenial<'c>>,
    /// Audit rules that hold.
    pub audited: Vec<&'c str>,
}

impl Judgement<'_> {
    pub fn refuses(&self) -> bool {
        self.denied_by.is_some() || self.unmet.is_some()
    }
}

/// The matched allow rule's side of a judgement: its name, `when` and `dry_run`.
pub struct AllowSide<'c> {
    pub rule: &'c str,
    pub when: &'c [Condition],
    pub dry_run: bool,
}

/// Deny rules in order (the first that holds refuses), audit rules, then the allow rule's `when`.
pub fn judge<'c>(
    authz: &'c Authorization,
    allow: Option<AllowSide<'c>>,
    facts: &Facts,
    matches: &dyn Fn(&RuleMatch) -> bool,
) -> Judgement<'c> {
    let mut judgement = Judgement::default();
    for rule in &authz.deny {
        if !matches(&rule.matcher) {
            continue;
        }
        let (enforced, actual) = when_holds(&rule.when, facts, false);
        if enforced && !rule.dry_run {
            judgement.denied_by = Some(&rule.name);
            break;
        }
        if actual {
            judgement.dry_run_denials.push(DryRunDenial {
                rule: &rule.name,
                condition: None,
            });
        }
    }
    for rule in &authz.audit {
        if matches(&rule.matcher) && when_holds(&rule.when, facts, false).1 {
            judgement.audited.push(&rule.name);
        }
    }
    if judgement.denied_by.is_some() {
        return judgement;
    }
    let Some(allow) = allow else {
        return judgement;
    };
    let (enforced, actual) = when_holds(allow.when, facts, true);
    if actual {
        return judgement;
    }
    // Enforcement refuses only on a condition that is not a dry run; the record of a dry run
    // names the condition that would have refused.
    let reading = Reading {
        enforced: !enforced,
        pass: true,
    };
    let condition = first_failure(allow.when, facts, reading);
    let unmet = Unmet {
        rule: allow.rule,
        condition,
        scopes: condition.and_then(|c| match &c.test {
            Test::Scopes(scopes) => Some(scopes.as_slice()),
            _ => None,
        }),
    };
    if enforced || allow.dry_run {
        judgement.dry_run_denials.push(DryRunDenial {
            rule: allow.rule,
            condition,
        });
    } else {
        judgement.unmet = Some(unmet);
    }
    judgement
}

/// Which facts the conditions read, so the host fetches only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionReads {
    pub peer: bool,
    pub source_ip: bool,
    pub remote_ip: bool,
    pub port: bool,
    pub method: bool,
    pub authority: bool,
    pub path: bool,
}

/// Adds what `conditions` read to `reads`, and the header names to `headers`.
pub fn collect_reads(
    conditions: &[Condition],
    reads: &mut ConditionReads,
    headers: &mut Vec<String>,
) {
    for condition in conditions {
        match &condition.test {
            Test::Attribute { key, .. } => match key {
                Key::SourceIp => reads.source_ip = true,
                Key::RemoteIp => reads.remote_ip = true,
                Key::Port => reads.port = true,
                Key::Method => reads.method = true,
                Key::Host => reads.authority = true,
                Key::Path => reads.path = true,
                Key::Header(name) if !headers.contains(name) => headers.push(name.clone()),
                key if key.reads_peer() => reads.peer = true,
                _ => {}
            },
            Test::All(children) | Test::Any(children) => collect_reads(children, reads, headers),
            Test::Not(child) => collect_reads(std::slice::from_ref(child.as_ref()), reads, headers),
            Test::Scopes(_) | Test::MaxLifetime(_) => {}
        }
    }
}
