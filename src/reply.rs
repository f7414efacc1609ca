//! The local replies meshguard sends instead of forwarding a request: status, headers and a
//! small JSON body `{"error": ..., "reason": ...}` that never echoes the token.

use serde::Serialize;

use crate::accesslog::AuthzRecord;
use crate::auth::error::AuthError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Short machine-readable cause, for logs and Envoy's response details.
    pub detail: &'static str,
    /// The reason in words (the body's `reason`), for the access log.
    pub reason: String,
    /// What authorization concluded, for the access log (a refusal, or a dry run's would-be one).
    pub authz: Option<AuthzRecord>,
}

/// The body's two members, in the order `json!` wrote them (a `Value` and its `Display`, both
/// pretty and compact, cost the module ~4 KB more than this struct).
#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
}

fn json_body(error: &str, reason: &str) -> String {
    // Two strings always serialise.
    serde_json::to_string(&Body { error, reason }).unwrap_or_default()
}

impl LocalReply {
    /// The value of one of the reply's headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Escapes a value for a quoted-string in `WWW-Authenticate` (RFC 9110 §5.6.4).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn reply(
    status: u32,
    headers: Vec<(String, String)>,
    error: &str,
    reason: &str,
    detail: &'static str,
) -> LocalReply {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    LocalReply {
        status,
        headers,
        body: json_body(error, reason),
        detail,
        reason: reason.to_owned(),
        authz: None,
    }
}

/// 401 for a request with no token where the rule requires one (RFC 6750 §3.1: no error code).
pub fn token_missing(rule: &str) -> LocalReply {
    reply(
        401,
        vec![(
            "www-authenticate".into(),
            format!("Bearer realm={}", quoted(rule)),
        )],
        "unauthenticated",
        "token is missing",
        "meshguard_token_missing",
    )
}

/// The reply for a token that was found and refused.
pub fn token_refused(error: AuthError) -> LocalReply {
    match error {
        AuthError::AudienceNotAllowed => reply(
            403,
            vec![(
                "www-authenticate".into(),
                "Bearer error=\"insufficient_scope\"".into(),
            )],
            "forbidden",
            error.description(),
            "meshguard_audience_not_allowed",
        ),
        AuthError::KeysUnavailable { retry_after_s } => reply(
            503,
            vec![("retry-after".into(), retry_after_s.max(1).to_string())],
            "unavailable",
            error.description(),
            "meshguard_jwks_unavailable",
        ),
        other => reply(
            401,
            vec![(
                "www-authenticate".into(),
                format!(
                    "Bearer error=\"invalid_token\", error_description={}",
                    quoted(other.description())
                ),
            )],
            "unauthenticated",
            other.description(),
            "meshguard_invalid_token",
        ),
    }
}

/// 403 for a request no rule matches while `unmatched` is deny.
pub fn no_rule_matches() -> LocalReply {
    reply(
        403,
        vec![],
        "forbidden",
        "no rule matches the request",
        "meshguard_no_rule",
    )
}

/// 403 for a request a deny rule refused. The rule is named; no claim value is.
pub fn denied_by_rule(rule: &str) -> LocalReply {
    reply(
        403,
        vec![],
        "forbidden",
        &format!("denied by rule {rule:?}"),
        "meshguard_authz_denied",
    )
}

/// 403 for a request whose rule's conditions do not hold.
pub fn conditions_unmet(rule: &str) -> LocalReply {
    reply(
        403,
        vec![],
        "forbidden",
        &format!("rule {rule:?} does not allow this request"),
        "meshguard_authz_unmet",
    )
}

/// 403 for a token without the scopes a rule needs: RFC 6750 §3.1 `insufficient_scope`, with
/// the scopes required (§3: `scope`) so a client knows what to ask its authorization server for.
pub fn insufficient_scope(rule: &str, scopes: &[String]) -> LocalReply {
    reply(
        403,
        vec![(
            "www-authenticate".into(),
            format!(
                "Bearer error=\"insufficient_scope\", scope={}",
                quoted(&scopes.join(" "))
            ),
        )],
        "forbidden",
        &format!("rule {rule:?} needs scope {}", scopes.join(" ")),
        "meshguard_insufficient_scope",
    )
}

/// 429 for a request over a rate limit, with the policy and state headers of every policy.
pub fn rate_limited(
    config: &crate::config::Config,
    outcomes: &[crate::ratelimit::PolicyOutcome],
    refused_by: usize,
) -> LocalReply {
    let name = outcomes
        .get(refused_by)
        .and_then(|o| config.rate_limits.get(o.policy))
        .map_or("rate limit", |p| p.name.as_str());
    let headers = crate::ratelimit::headers::rate_limit_headers(config, outcomes, Some(refused_by));
    reply(
        429,
        headers,
        "rate_limited",
        &format!("rate limit {name:?} exceeded"),
        "meshguard_rate_limited",
    )
}

/// 503 when a rate-limit service did not answer and its policy fails closed
/// (`failure_mode_deny`). (Envoy's ratelimit filter answers 500 by default; a 503 with
/// `Retry-After` says "try again" rather than "bug".)
pub fn rate_limit_service_unavailable(policy: &str) -> LocalReply {
    reply(
        503,
        vec![("retry-after".into(), "1".into())],
        "unavailable",
        &format!("rate limit service for {policy:?} did not answer"),
        "meshguard_rate_limit_service_unavailable",
    )
}

/// 500 when the filter cannot decide (no valid configuration): fail closed, never open.
pub fn internal_error() -> LocalReply {
    reply(
        500,
        vec![],
        "internal",
        "meshguard cannot decide this request",
        "meshguard_internal",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_names_the_rule_as_realm_with_no_error_code() {
        let r = token_missing("api \"v2\"");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="api \"v2\"""#)
        );
    }

    #[test]
    fn refused_tokens_follow_the_behaviour_table() {
        let expired = token_refused(AuthError::Expired);
        assert_eq!(expired.status, 401);
        assert_eq!(
            expired.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token", error_description="token is expired""#)
        );
        let audience = token_refused(AuthError::AudienceNotAllowed);
        assert_eq!(audience.status, 403);
        assert_eq!(
            audience.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        let down = token_refused(AuthError::KeysUnavailable { retry_after_s: 0 });
        assert_eq!(down.status, 503);
        assert_eq!(down.header("retry-after"), Some("1"));
        assert_eq!(no_rule_matches().status, 403);
    }

    #[test]
    fn a_missing_scope_is_named_in_the_challenge() {
        let r = insufficient_scope("orders", &["orders:write".into(), "orders:read".into()]);
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope", scope="orders:write orders:read""#)
        );
        assert_eq!(denied_by_rule("no-admin").status, 403);
        assert!(conditions_unmet("api").body.contains("api"));
    }

    #[test]
    fn bodies_are_small_json() {
        let body: serde_json::Value =
            serde_json::from_str(&token_refused(AuthError::BadSignature).body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert_eq!(body["reason"], "token signature does not verify");
    }

    #[test]
    fn bodies_are_written_as_the_json_value_wrote_them() {
        for (error, reason) in [
            ("unauthenticated", "token is missing"),
            (
                "forbidden",
                "rule \"a\\b\" denies: caf\u{e9} \u{1} \n\t </script>",
            ),
            ("", ""),
        ] {
            assert_eq!(
                json_body(error, reason),
                serde_json::json!({ "error": error, "reason": reason }).to_string()
            );
        }
    }
}
