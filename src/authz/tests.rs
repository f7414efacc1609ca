//! Authorization decided end to end in the core: real HS256 tokens verified by the pipeline,
//! then deny, audit and allow rules, dry runs, and the replies users see.

use crate::names::Names;
use serde_json::{json, Value};
use std::borrow::Cow;

use super::peer::PeerIdentity;
use crate::auth::cache::TokenCache;
use crate::auth::remote::KeyStore;
use crate::auth::testkeys::{b64e, hs256_token};
use crate::auth::verify::PortableVerifier;
use crate::auth::AuthEnv;
use crate::config::{self, Config};
use crate::pipeline::{decide, Decision};
use crate::ratelimit::MemoryBuckets;
use crate::request::Request;

const NOW_S: u64 = 1_700_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config(rules: Value, extra: Value) -> Config {
    let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64e(SECRET)}]}).to_string();
    let mut document = json!({
        "providers": {
            "corp": {"issuer": "https://idp.test", "local_jwks": {"inline": jwks},
                     "space_delimited_claims": ["permission"]}
        },
        "rules": rules,
    });
    if let (Some(base), Some(extra)) = (document.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    config::parse(document.to_string().as_bytes()).unwrap()
}

fn token(claims: Value) -> String {
    let mut payload =
        json!({"iss": "https://idp.test", "sub": "alice", "exp": NOW_S + 600, "iat": NOW_S});
    if let (Some(base), Some(extra)) = (payload.as_object_mut(), claims.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    hs256_token(
        r#"{"alg":"HS256","kid":"k1"}"#,
        &payload.to_string(),
        SECRET,
    )
}

struct Call {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    token: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    peer: Option<&'static str>,
    remote_ip: Option<&'static str>,
    direct_ip: Option<&'static str>,
    port: Option<u16>,
}

fn call(path: &'static str) -> Call {
    Call {
        method: "GET",
        path,
        authority: "svc.local",
        token: None,
        headers: Vec::new(),
        peer: None,
        remote_ip: None,
        direct_ip: None,
        port: None,
    }
}

impl Call {
    fn with_token(mut self, claims: Value) -> Call {
        self.token = Some(token(claims));
        self
    }

    fn request(&self) -> Request<'_> {
        let mut headers: Vec<(Cow<str>, Cow<str>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_string().into(), v.to_string().into()))
            .collect();
        if let Some(token) = &self.token {
            headers.push(("authorization".into(), format!("Bearer {token}").into()));
        }
        let mut request = Request::new(self.method, self.path, self.authority, headers);
        request.peer = self.peer.and_then(PeerIdentity::from_uri_san);
        request.remote_ip = self.remote_ip.map(|ip| ip.parse().unwrap());
        request.direct_ip = self.direct_ip.map(|ip| ip.parse().unwrap());
        request.port = self.port;
        request
    }
}

fn run(config: &Config, call: &Call) -> Decision {
    let keys = KeyStore::new(config);
    let names = Names::of(config);
    let env = AuthEnv {
        config,
        names: &names,
        keys: &keys,
        verifier: &PortableVerifier,
        now_ms: NOW_S * 1000,
    };
    decide(
        &env,
        &mut TokenCache::default(),
        &mut MemoryBuckets::default(),
        &call.request(),
    )
}

fn status(decision: &Decision) -> u32 {
    match decision {
        Decision::Allow(_) => 200,
        Decision::Deny { reply, .. } => reply.status,
        other => panic!("unexpected {other:?}"),
    }
}

fn record(decision: &Decision) -> Value {
    let authz = match decision {
        Decision::Allow(allowed) => allowed.authz.clone(),
        Decision::Deny { reply, .. } => reply.authz.clone(),
        other => panic!("unexpected {other:?}"),
    };
    serde_json::to_value(authz).unwrap()
}

fn challenge(decision: &Decision) -> Option<String> {
    match decision {
        Decision::Deny { reply, .. } => reply.header("www-authenticate").map(str::to_owned),
        _ => None,
    }
}

/// One allow rule that reads the token when there is one, with these conditions.
fn api_with(when: Value) -> Config {
    config(
        json!([{"name": "api", "requires": "corp", "allow_missing": true, "when": when}]),
        json!({}),
    )
}

#[test]
fn nested_claims_and_claim_names_with_dots() {
    let config = api_with(json!([
        {"key": "request.auth.claims[realm][role]", "values": ["admin"]},
        {"key": "request.auth.claims[https://example.com/tenant]", "values": ["acme"]}
    ]));
    let good = json!({"realm": {"role": "admin"}, "https://example.com/tenant": "acme"});
    assert_eq!(status(&run(&config, &call("/").with_token(good))), 200);
    let flat = json!({"realm.role": "admin", "https://example.com/tenant": "acme"});
    assert_eq!(status(&run(&config, &call("/").with_token(flat))), 403);
    let nested_url = json!({"realm": {"role": "admin"}, "https://example": {"com/tenant": "acme"}});
    assert_eq!(
        status(&run(&config, &call("/").with_token(nested_url))),
        403
    );
}

#[test]
fn an_array_claim_matches_if_any_element_does() {
    let config =
        api_with(json!([{"key": "request.auth.claims[groups]", "values": ["ops-*", "admin"]}]));
    for (groups, expected) in [
        (json!(["dev", "ops-eu"]), 200),
        (json!(["dev", "admin"]), 200),
        (json!("admin"), 200),
        (json!(["dev"]), 403),
        (json!([1, true, {"admin": 1}]), 403),
        (json!(true), 403),
    ] {
        let decision = run(&config, &call("/").with_token(json!({ "groups": groups })));
        assert_eq!(status(&decision), expected, "{groups}");
    }
}

#[test]
fn a_condition_on_a_claim_the_token_lacks_is_false_but_its_negation_holds() {
    let config =
        api_with(json!([{"key": "request.auth.claims[groups]", "not_values": ["banned"]}]));
    assert_eq!(
        status(&run(
            &config,
            &call("/").with_token(json!({"groups": ["dev"]}))
        )),
        200
    );
    assert_eq!(
        status(&run(
            &config,
            &call("/").with_token(json!({"groups": ["banned"]}))
        )),
        403
    );
    assert_eq!(
        status(&run(&config, &call("/").with_token(json!({})))),
        403,
        "no claim: false"
    );
    let config =
        api_with(json!([{"not": {"key": "request.auth.claims[groups]", "values": ["banned"]}}]));
    assert_eq!(
        status(&run(&config, &call("/").with_token(json!({})))),
        200,
        "Istio's notValues"
    );
}

#[test]
fn scopes_are_split_on_spaces_and_a_missing_one_is_named_in_the_challenge() {
    let config = api_with(json!([{"scopes": ["orders:write", "orders:read"]}]));
    for scopes in [
        json!({"scope": "orders:read orders:write profile"}),
        json!({"scp": ["orders:write", "orders:read"]}),
        json!({"scope": "orders:read", "scp": "orders:write"}),
    ] {
        assert_eq!(
            status(&run(&config, &call("/").with_token(scopes.clone()))),
            200,
            "{scopes}"
        );
    }
    let decision = run(
        &config,
        &call("/").with_token(json!({"scope": "orders:read orders:writer"})),
    );
    assert_eq!(status(&decision), 403);
    assert_eq!(
        challenge(&decision).as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="orders:write orders:read""#)
    );
    let record = record(&decision);
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["condition"], "rules[0].when[0]: scopes");
    assert_eq!(record["principal"], "https://idp.test/alice");
}

#[test]
fn space_delimited_claims_are_configurable_per_provider() {
    let config = api_with(json!([{"key": "request.auth.claims[permission]", "values": ["write"]}]));
    assert_eq!(
        status(&run(
            &config,
            &call("/").with_token(json!({"permission": "read write"}))
        )),
        200
    );
    let config = api_with(json!([{"key": "request.auth.claims[roles]", "values": ["write"]}]));
    assert_eq!(
        status(&run(
            &config,
            &call("/").with_token(json!({"roles": "read write"}))
        )),
        403,
        "roles is not space-delimited"
    );
}

#[test]
fn without_a_token_a_token_condition_asks_for_one_and_a_bad_token_is_still_401() {
    let config = api_with(json!([{"key": "request.auth.principal", "values": ["*"]}]));
    let decision = run(&config, &call("/"));
    assert_eq!(status(&decision), 401);
    assert_eq!(
        challenge(&decision).as_deref(),
        Some(r#"Bearer realm="api""#)
    );
    let mut bad = call("/");
    bad.token = Some("a.b.c".into());
    assert_eq!(status(&run(&config, &bad)), 401);
    assert_eq!(status(&run(&config, &call("/").with_token(json!({})))), 200);
    // A peer condition fails with a plain 403: a token would not help.
    let config = api_with(json!([{"key": "source.namespace", "values": ["billing"]}]));
    let decision = run(&config, &call("/"));
    assert_eq!(status(&decision), 403);
    assert_eq!(challenge(&decision), None);
}

#[test]
fn request_principal_audiences_presenter_and_lifetime() {
    let config = api_with(json!([
        {"key": "request.auth.principal", "values": ["https://idp.test/*"]},
        {"key": "request.auth.audiences", "values": ["orders"]},
        {"key": "request.auth.presenter", "values": ["web"]},
        {"max_lifetime": "1h"}
    ]));
    let good = json!({"aud": ["billing", "orders"], "azp": "web"});
    assert_eq!(status(&run(&config, &call("/").with_token(good))), 200);
    let long = json!({"aud": "orders", "azp": "web", "exp": NOW_S + 7200});
    assert_eq!(status(&run(&config, &call("/").with_token(long))), 403);
    let no_iat = json!({"aud": "orders", "azp": "web", "iat": null});
    assert_eq!(status(&run(&config, &call("/").with_token(no_iat))), 403);
    let other_azp = json!({"aud": "orders", "azp": "cli"});
    assert_eq!(status(&run(&config, &call("/").with_token(other_azp))), 403);
}

#[test]
fn mesh_identities_from_the_peer_certificate() {
    let config = config(
        json!([{"name": "internal", "allow_unauthenticated": true, "when": [
            {"key": "source.namespace", "values": ["billing"]},
            {"key": "source.service_account", "values": ["billing/api", "billing/worker"]},
            {"key": "source.trust_domain", "values": ["cluster.local"]},
            {"key": "source.principal", "values": ["cluster.local/ns/billing/*"]}
        ]}]),
        json!({}),
    );
    let with_peer = |uri: Option<&'static str>| {
        let mut c = call("/internal/x");
        c.peer = uri;
        status(&run(&config, &c))
    };
    assert_eq!(
        with_peer(Some("spiffe://cluster.local/ns/billing/sa/api")),
        200
    );
    assert_eq!(
        with_peer(Some("spiffe://cluster.local/ns/billing/sa/other")),
        403
    );
    assert_eq!(with_peer(Some("spiffe://other.td/ns/billing/sa/api")), 403);
    assert_eq!(
        with_peer(Some("spiffe://cluster.local/ns/shop/sa/api")),
        403
    );
    assert_eq!(with_peer(None), 403);
}

#[test]
fn ip_blocks_on_the_direct_peer_and_the_derived_client() {
    let config = config(
        json!([
            {"name": "no-office", "action": "deny", "when": [{"key": "remote.ip", "values": ["203.0.113.0/24", "2001:db8::/32"]}]},
            {"name": "all", "allow_unauthenticated": true, "when": [{"key": "source.ip", "values": ["10.0.0.0/8"], "not_values": ["10.9.0.0/16"]}]}
        ]),
        json!({}),
    );
    let from = |direct: &'static str, remote: &'static str| {
        let mut c = call("/");
        c.direct_ip = Some(direct);
        c.remote_ip = Some(remote);
        status(&run(&config, &c))
    };
    assert_eq!(from("10.1.2.3", "198.51.100.7"), 200);
    assert_eq!(from("10.1.2.3", "203.0.113.9"), 403);
    assert_eq!(from("10.1.2.3", "2001:db8::1"), 403);
    assert_eq!(from("10.9.2.3", "198.51.100.7"), 403);
    assert_eq!(from("192.168.1.1", "198.51.100.7"), 403);
    let mut unknown = call("/");
    unknown.direct_ip = None;
    assert_eq!(
        status(&run(&config, &unknown)),
        403,
        "no address: the condition is false"
    );
}

#[test]
fn deny_rules_win_whatever_their_order_and_name_the_rule() {
    let config = config(
        json!([
            {"name": "api", "match": {"prefix": "/"}, "requires": "corp", "allow_missing": true},
            {"name": "no-admin", "action": "deny", "match": {"paths": ["/admin", "/admin/*"]},
             "when": [{"not": {"key": "request.auth.claims[groups]", "values": ["admin"]}}]}
        ]),
        json!({}),
    );
    let decision = run(
        &config,
        &call("/admin/users").with_token(json!({"groups": ["dev"]})),
    );
    assert_eq!(status(&decision), 403);
    match &decision {
        Decision::Deny { reply, .. } => assert!(reply.body.contains("no-admin"), "{}", reply.body),
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{decision:?}").contains("dev\""),
        "no claim value in the reply or record"
    );
    assert_eq!(record(&decision)["rule"], "no-admin");
    assert_eq!(
        status(&run(
            &config,
            &call("/admin").with_token(json!({"groups": ["admin"]}))
        )),
        200
    );
    assert_eq!(
        status(&run(&config, &call("/admin"))),
        403,
        "no token: not an admin"
    );
    assert_eq!(status(&run(&config, &call("/other"))), 200);
}

#[test]
fn audit_rules_mark_the_record_and_change_nothing() {
    let config = config(
        json!([
            {"name": "trace-post", "action": "audit", "match": {"methods": ["POST"]}},
            {"name": "open", "allow_unauthenticated": true}
        ]),
        json!({}),
    );
    let mut post = call("/x");
    post.method = "POST";
    let decision = run(&config, &post);
    assert_eq!(status(&decision), 200);
    assert_eq!(
        record(&decision),
        json!({"decision": "audited", "audit": ["trace-post"]})
    );
    assert_eq!(record(&run(&config, &call("/x"))), Value::Null);
}

#[test]
fn a_dry_run_rule_records_its_refusal_and_lets_the_request_through() {
    let config = config(
        json!([
            {"name": "new-deny", "action": "deny", "dry_run": true,
             "when": [{"key": "request.headers[x-tenant]", "values": ["legacy"]}]},
            {"name": "api", "requires": "corp", "allow_missing": true, "dry_run": true,
             "when": [{"scopes": ["api"]}]}
        ]),
        json!({}),
    );
    let mut legacy = call("/").with_token(json!({"scope": "other"}));
    legacy.headers.push(("x-tenant", "legacy"));
    let decision = run(&config, &legacy);
    assert_eq!(status(&decision), 200);
    assert_eq!(
        record(&decision),
        json!({"decision": "dry_run_denied", "rule": "new-deny", "principal": "https://idp.test/alice",
               "dry_run_denied": ["new-deny", "api"]})
    );
    let decision = run(&config, &call("/").with_token(json!({"scope": "api"})));
    assert_eq!(record(&decision), Value::Null);
}

#[test]
fn a_dry_run_condition_is_enforced_as_if_it_let_the_request_through() {
    // In an allow rule it counts as holding; under `not` it counts as not holding; in a deny
    // rule it never makes the rule refuse.
    let config = config(
        json!([
            {"name": "deny-x", "action": "deny", "when": [
                {"key": "request.headers[x-a]", "values": ["1"]},
                {"key": "request.headers[x-b]", "values": ["1"], "dry_run": true}]},
            {"name": "api", "requires": "corp", "allow_missing": true, "when": [
                {"key": "request.auth.claims[groups]", "values": ["staff"]},
                {"not": {"key": "request.auth.claims[groups]", "values": ["contractor"], "dry_run": true}}]}
        ]),
        json!({}),
    );
    let staff = json!({"groups": ["staff"]});
    let contractor = json!({"groups": ["staff", "contractor"]});
    let decision = run(&config, &call("/").with_token(contractor.clone()));
    assert_eq!(status(&decision), 200);
    assert_eq!(record(&decision)["decision"], "dry_run_denied");
    assert_eq!(record(&decision)["rule"], "api");
    assert_eq!(record(&decision)["condition"], "rules[1].when[1]: not");
    assert_eq!(
        status(&run(
            &config,
            &call("/").with_token(json!({"groups": ["dev"]}))
        )),
        403
    );

    let mut both = call("/").with_token(staff.clone());
    both.headers = vec![("x-a", "1"), ("x-b", "1")];
    let decision = run(&config, &both);
    assert_eq!(
        status(&decision),
        200,
        "the dry-run part of a deny rule never refuses"
    );
    assert_eq!(record(&decision)["dry_run_denied"], json!(["deny-x"]));
    let mut only_a = call("/").with_token(staff);
    only_a.headers = vec![("x-a", "1")];
    assert_eq!(record(&run(&config, &only_a)), Value::Null);
}

#[test]
fn operation_keys_and_richer_matches() {
    let config = config(
        json!([
            {"name": "files", "match": {"paths": ["/files/{*}/raw", "/dl/{**}"], "not_methods": ["DELETE"],
              "hosts": ["*.example.com"], "ports": [8443]}, "allow_unauthenticated": true},
            {"name": "ops", "allow_unauthenticated": true, "when": [
                {"key": "request.host", "values": ["ops.internal"]},
                {"key": "destination.port", "values": ["9000"]},
                {"key": "request.method", "values": ["GET"]},
                {"key": "request.path", "values": ["/metrics", "/debug/{**}"]}]}
        ]),
        json!({}),
    );
    let at = |method: &'static str, path: &'static str, authority: &'static str, port: u16| {
        let mut c = call(path);
        c.method = method;
        c.authority = authority;
        c.port = Some(port);
        let decision = run(&config, &c);
        (
            status(&decision),
            match &decision {
                Decision::Allow(a) => a.rule,
                _ => None,
            },
        )
    };
    assert_eq!(
        at("GET", "/files/a/raw?x=1", "cdn.example.com:8443", 8443),
        (200, Some(0))
    );
    assert_eq!(
        at("GET", "/dl/a/b/c", "CDN.Example.com", 8443),
        (200, Some(0))
    );
    assert_eq!(at("DELETE", "/dl/a", "cdn.example.com", 8443).1, None);
    assert_eq!(at("GET", "/dl/a", "cdn.example.com", 80).1, None);
    assert_eq!(at("GET", "/files/a/b/raw", "cdn.example.com", 8443).1, None);
    assert_eq!(at("GET", "/metrics", "OPS.internal", 9000), (200, Some(1)));
    assert_eq!(at("GET", "/debug/pprof/heap", "ops.internal", 9000).0, 200);
    assert_eq!(
        at("GET", "/metrics", "ops.internal:9000", 9000).0,
        403,
        "Istio's host match keeps the port"
    );
    assert_eq!(at("POST", "/metrics", "ops.internal", 9000).0, 403);
    assert_eq!(at("GET", "/metrics", "ops.internal", 9001).0, 403);
}

#[test]
fn a_cors_preflight_passes_without_a_token_when_bypass_is_set() {
    let rules = json!([
        {"name": "no-evil", "action": "deny", "when": [{"key": "remote.ip", "values": ["203.0.113.0/24"]}]},
        {"name": "api", "requires": "corp", "when": [{"scopes": ["api"]}]}
    ]);
    let preflight = |remote: &'static str| {
        let mut c = call("/orders");
        c.method = "OPTIONS";
        c.headers = vec![
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ];
        c.remote_ip = Some(remote);
        c
    };
    let bypass = config(rules.clone(), json!({"bypass_cors_preflight": true}));
    assert_eq!(status(&run(&bypass, &preflight("198.51.100.1"))), 200);
    assert_eq!(
        status(&run(&bypass, &preflight("203.0.113.5"))),
        403,
        "deny rules still judge"
    );
    let mut no_origin = preflight("198.51.100.1");
    no_origin.headers.remove(0);
    assert_eq!(status(&run(&bypass, &no_origin)), 401, "not a preflight");
    let strict = config(rules, json!({}));
    assert_eq!(status(&run(&strict, &preflight("198.51.100.1"))), 401);
}

#[test]
fn unmatched_allow_still_meets_deny_rules() {
    let config = config(
        json!([{"name": "block", "action": "deny", "match": {"prefix": "/private"}}]),
        json!({"unmatched": "allow"}),
    );
    assert_eq!(status(&run(&config, &call("/private/x"))), 403);
    assert_eq!(status(&run(&config, &call("/public"))), 200);
}

#[test]
fn a_repeated_header_never_helps_the_client() {
    let config = config(
        json!([
            {"name": "blocked", "action": "deny", "when": [{"key": "request.headers[x-tenant]", "values": ["blocked-*"]}]},
            {"name": "acme-only", "allow_unauthenticated": true, "when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}]}
        ]),
        json!({}),
    );
    let with = |lines: Vec<(&'static str, &'static str)>| {
        let mut c = call("/");
        c.headers = lines;
        status(&run(&config, &c))
    };
    assert_eq!(with(vec![("x-tenant", "acme")]), 200);
    assert_eq!(with(vec![("x-tenant", "acme"), ("x-tenant", "acme")]), 200);
    // rbac would allow this (one line is acme); an allow rule needs every line to hold.
    assert_eq!(
        with(vec![("x-tenant", "initech"), ("x-tenant", "acme")]),
        403
    );
    // A deny rule holds on any line, as rbac's does.
    assert_eq!(
        with(vec![("x-tenant", "acme"), ("x-tenant", "blocked-1")]),
        403
    );
    assert_eq!(with(vec![]), 403);
}
