//! Request facts -> the first rule whose `match` holds.

use crate::authz::pattern::TextPattern;
use crate::config::{Rule, RuleMatch};
use crate::request::Request;

/// Rules are tried in order; the first that matches applies.
pub fn match_rule<'c>(rules: &'c [Rule], request: &Request) -> Option<(usize, &'c Rule)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, rule)| matches(&rule.matcher, request))
}

/// `path` is exact and `prefix` a plain string prefix, as Envoy's route match; both apply to
/// the path without its query. Normalising `..` and `//` is Envoy's job (`normalize_path`,
/// `merge_slashes` in the shipped configs) before any filter runs.
pub fn matches(matcher: &RuleMatch, request: &Request) -> bool {
    let path = request.path_only();
    if matcher.path.as_deref().is_some_and(|exact| path != exact) {
        return false;
    }
    if matcher
        .prefix
        .as_deref()
        .is_some_and(|prefix| !path.starts_with(prefix))
    {
        return false;
    }
    // Methods are case-sensitive tokens (RFC 9110 §9.1), but HTTP/2 lets a client send
    // `post`, and many servers treat it as POST: a rule for POST must apply to it.
    if !matcher.methods.is_empty()
        && !matcher
            .methods
            .iter()
            .any(|method| method.eq_ignore_ascii_case(&request.method))
    {
        return false;
    }
    if matcher
        .not_methods
        .iter()
        .any(|method| method.eq_ignore_ascii_case(&request.method))
    {
        return false;
    }
    if !matcher.paths.is_empty() && !matcher.paths.iter().any(|p| p.matches(path)) {
        return false;
    }
    if matcher.not_paths.iter().any(|p| p.matches(path)) {
        return false;
    }
    if !matcher.hosts.is_empty() || !matcher.not_hosts.is_empty() {
        let (authority, host) = host_forms(&request.authority);
        let named = |h: &TextPattern| h.matches(&host) || h.matches(&authority);
        if !matcher.hosts.is_empty() && !matcher.hosts.iter().any(named) {
            return false;
        }
        if matcher.not_hosts.iter().any(named) {
            return false;
        }
    }
    if !matcher.ports.is_empty() && !request.port.is_some_and(|p| matcher.ports.contains(&p)) {
        return false;
    }
    if request.port.is_some_and(|p| matcher.not_ports.contains(&p)) {
        return false;
    }
    matcher
        .headers
        .iter()
        .all(|(name, value)| request.header_combined(name).as_deref() == Some(value.as_str()))
}

/// An authority as configured hosts are compared with it: lower-case and without a trailing
/// dot, whole and without its port (`admin.example.com.:8443` and `admin.example.com:` name
/// `admin.example.com`). Configured hosts are lower-case without a trailing dot
/// (`config::validate`); one written with a port matches the whole authority.
fn host_forms(authority: &str) -> (String, String) {
    let authority = authority.to_ascii_lowercase();
    let without_port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority.as_str(),
    };
    let bare = |name: &str| name.strip_suffix('.').unwrap_or(name).to_owned();
    (bare(&authority), bare(without_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn rules() -> Vec<Rule> {
        let config = config::parse(
            br#"{
              "providers": {"corp": {"issuer": "i", "local_jwks": {"inline": "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}"}}},
              "rules": [
                {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true},
                {"name": "writes", "match": {"prefix": "/api/", "methods": ["post", "DELETE"]}, "requires": "corp"},
                {"name": "admin", "match": {"prefix": "/api/", "hosts": ["Admin.example.com"], "headers": {"X-Tenant": "blue"}}, "requires": "corp"},
                {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"}
              ]
            }"#,
        )
        .unwrap();
        config.rules
    }

    fn rule_for(
        method: &str,
        path: &str,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let request = Request::new(
            method,
            path,
            authority,
            headers
                .iter()
                .map(|(n, v)| (n.to_string().into(), v.to_string().into()))
                .collect(),
        );
        let rules = rules();
        match_rule(&rules, &request).map(|(_, r)| r.name.clone())
    }

    #[test]
    fn first_match_wins_in_order() {
        assert_eq!(
            rule_for("POST", "/api/orders", "svc", &[]).as_deref(),
            Some("writes")
        );
        assert_eq!(
            rule_for("GET", "/api/orders", "svc", &[]).as_deref(),
            Some("api")
        );
    }

    #[test]
    fn exact_path_ignores_the_query_but_not_more() {
        assert_eq!(
            rule_for("GET", "/healthz?probe=1", "svc", &[]).as_deref(),
            Some("health")
        );
        assert_eq!(rule_for("GET", "/healthz/x", "svc", &[]), None);
        assert_eq!(rule_for("GET", "/healthzz", "svc", &[]), None);
    }

    #[test]
    fn prefix_is_case_sensitive_and_unmatched_is_none() {
        assert_eq!(rule_for("GET", "/API/orders", "svc", &[]), None);
        assert_eq!(rule_for("GET", "/other", "svc", &[]), None);
    }

    #[test]
    fn hosts_ignore_a_trailing_dot_and_an_empty_port() {
        let blue = [("x-tenant", "blue")];
        for authority in [
            "admin.example.com.",
            "admin.example.com.:8443",
            "admin.example.com:",
            "ADMIN.example.com.:",
        ] {
            assert_eq!(
                rule_for("GET", "/api/x", authority, &blue).as_deref(),
                Some("admin"),
                "{authority}"
            );
        }
        assert_eq!(
            rule_for("GET", "/api/x", "admin.example.com..", &blue).as_deref(),
            Some("api")
        );
    }

    #[test]
    fn methods_match_whatever_their_case() {
        assert_eq!(
            rule_for("post", "/api/orders", "svc", &[]).as_deref(),
            Some("writes")
        );
        assert_eq!(
            rule_for("Delete", "/api/orders", "svc", &[]).as_deref(),
            Some("writes")
        );
    }

    #[test]
    fn a_repeated_header_is_compared_as_its_joined_value() {
        for headers in [
            [("x-tenant", "acme"), ("x-tenant", "blue")],
            [("x-tenant", "blue"), ("x-tenant", "acme")],
        ] {
            assert_eq!(
                rule_for("GET", "/api/x", "admin.example.com", &headers).as_deref(),
                Some("api"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn hosts_match_with_or_without_port_and_headers_exactly() {
        let blue = [("x-tenant", "blue")];
        assert_eq!(
            rule_for("GET", "/api/x", "admin.example.com:8080", &blue).as_deref(),
            Some("admin")
        );
        assert_eq!(
            rule_for("GET", "/api/x", "ADMIN.example.com", &blue).as_deref(),
            Some("admin")
        );
        assert_eq!(
            rule_for(
                "GET",
                "/api/x",
                "admin.example.com",
                &[("x-tenant", "Blue")]
            )
            .as_deref(),
            Some("api")
        );
        assert_eq!(
            rule_for("GET", "/api/x", "other.example.com", &blue).as_deref(),
            Some("api")
        );
    }
}
