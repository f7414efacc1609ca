//! Authentication decided end to end in the core: real tokens, real keys, the pipeline's
//! verdicts. (Integration tests repeat the important ones inside real Envoy.)

use crate::names::Names;
use crate::request::WrittenSent;
use std::cell::Cell;
use std::rc::Rc;

use serde_json::json;

use super::testkeys::*;
use super::*;
use crate::auth::alg::{Algorithm, Curve, KeyFamily};
use crate::auth::jwks::Jwk;
use crate::auth::jws::Jws;
use crate::auth::portable;
use crate::auth::verify::{PortableVerifier, SignatureError};
use crate::config;
use crate::pipeline::{decide, Decision};
use crate::ratelimit::MemoryBuckets;

const NOW_MS: u64 = 1_700_000_000_000;
const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config_with(extra_provider_fields: serde_json::Value, rules: serde_json::Value) -> Config {
    let jwks = jwks_json(&[
        rsa_jwk("rsa1"),
        ec_jwk("ec1"),
        ed_jwk("ed1"),
        oct_jwk("hs1", HMAC_SECRET),
    ]);
    let mut corp = json!({
        "issuer": "https://idp.test",
        "audiences": ["orders"],
        "local_jwks": {"inline": jwks},
        "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}, {"claim_name": "roles", "header_name": "x-roles"}],
        "forward_payload_header": "x-jwt-payload"
    });
    if let (Some(base), Some(extra)) = (corp.as_object_mut(), extra_provider_fields.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    let partner_jwks = jwks_json(&[oct_jwk("p1", b"partner-secret-partner-secret-32b")]);
    let document = json!({
        "providers": {
            "corp": corp,
            "partner": {"issuer": "https://partner.test", "local_jwks": {"inline": partner_jwks},
                         "from_headers": [{"name": "x-partner-token"}]}
        },
        "rules": rules,
    });
    config::parse(document.to_string().as_bytes()).unwrap()
}

fn default_rules() -> serde_json::Value {
    json!([
        {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true},
        {"name": "either", "match": {"prefix": "/either"}, "requires": {"any": ["corp", "partner"]}},
        {"name": "both", "match": {"prefix": "/both"}, "requires": {"all": ["corp", "partner"]}},
        {"name": "optional", "match": {"prefix": "/optional"}, "requires": {"any": ["corp"], "allow_missing": true}},
        {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"}
    ])
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<'static> {
    Request::get(path, headers)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn run(config: &Config, req: &Request) -> Decision {
    let keys = KeyStore::new(config);
    let names = Names::of(config);
    let env = AuthEnv {
        config,
        names: &names,
        keys: &keys,
        verifier: &PortableVerifier,
        now_ms: NOW_MS,
    };
    decide(
        &env,
        &mut TokenCache::default(),
        &mut MemoryBuckets::default(),
        req,
    )
}

fn valid_claims() -> jwt_simple::prelude::JWTClaims<serde_json::Value> {
    let mut claims = claims(json!({"roles": ["read", "write"]}), 3600);
    let now = jwt_simple::prelude::Duration::from_secs(NOW_MS / 1000);
    claims.issued_at = Some(now);
    claims.invalid_before = Some(now);
    claims.expires_at = Some(now + jwt_simple::prelude::Duration::from_secs(3600));
    claims
}

fn hs_token(payload: serde_json::Value) -> String {
    hs256_token(
        r#"{"alg":"HS256","kid":"hs1","typ":"JWT"}"#,
        &payload.to_string(),
        HMAC_SECRET,
    )
}

fn base_payload() -> serde_json::Value {
    json!({"iss": "https://idp.test", "sub": "alice", "aud": "orders", "exp": NOW_MS / 1000 + 600})
}

fn status(decision: &Decision) -> u32 {
    match decision {
        Decision::Allow(_) => 200,
        Decision::Deny { reply, .. } => reply.status,
        Decision::Delay { .. } => 1,
        Decision::CheckGlobal(_) => 2,
        Decision::AwaitKeys(_) => 0,
    }
}

fn reason(decision: &Decision) -> String {
    match decision {
        Decision::Deny { reply, .. } => reply
            .headers
            .iter()
            .find(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

#[test]
fn valid_tokens_of_every_asymmetric_algorithm_are_allowed() {
    let config = config_with(json!({}), default_rules());
    let mut tokens = vec![
        rs256_token("rsa1", valid_claims()),
        eddsa_token("ed1", valid_claims()),
        hs_token(base_payload()),
    ];
    if portable::ECDSA_IN_WASM {
        tokens.push(es256_token("ec1", valid_claims()));
    }
    for token in tokens {
        let decision = run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&token))]),
        );
        assert_eq!(status(&decision), 200, "{}", reason(&decision));
    }
}

#[test]
fn allowed_requests_get_claim_headers_and_lose_the_token() {
    let config = config_with(json!({}), default_rules());
    let token = eddsa_token("ed1", valid_claims());
    let decision = run(
        &config,
        &request(
            "/api/x",
            &[("authorization", &bearer(&token)), ("x-user", "mallory")],
        ),
    );
    let Decision::Allow(allowed) = decision else {
        panic!("{decision:?}")
    };
    assert!(allowed.mutations.remove.contains(&"authorization".into()));
    // x-user is replaced (set), which drops the spoofed value without a separate removal.
    assert!(!allowed.mutations.remove.contains(&"x-user".into()));
    assert!(allowed
        .mutations
        .set
        .contains(&("x-user".into(), "alice".into())));
    assert!(allowed
        .mutations
        .set
        .contains(&("x-roles".into(), "read,write".into())));
    let payload = token.split('.').nth(1).unwrap();
    assert!(allowed
        .mutations
        .set
        .contains(&("x-jwt-payload".into(), payload.into())));
    assert_eq!(allowed.identities[0].subject.as_deref(), Some("alice"));
}

#[test]
fn forward_true_keeps_the_token() {
    let config = config_with(json!({"forward": true}), default_rules());
    let token = eddsa_token("ed1", valid_claims());
    let Decision::Allow(allowed) = run(
        &config,
        &request("/api/x", &[("authorization", &bearer(&token))]),
    ) else {
        panic!()
    };
    assert!(!allowed.mutations.remove.contains(&"authorization".into()));
}

#[test]
fn underscore_twins_of_written_headers_are_removed_too() {
    let config = config_with(json!({}), default_rules());
    let mut spoofed = request("/healthz", &[]);
    spoofed.underscore_twins = vec!["x_user".into(), "x_jwt-payload".into()];
    let Decision::Allow(allowed) = run(&config, &spoofed) else {
        panic!()
    };
    for header in ["x-user", "x_user", "x_jwt-payload"] {
        assert!(
            allowed.mutations.remove.contains(&header.into()),
            "{header}"
        );
    }
}

fn names_of(list: &[Rc<str>]) -> Vec<&str> {
    list.iter().map(|name| &**name).collect()
}

fn set_names(list: &[(Rc<str>, Rc<str>)]) -> Vec<&str> {
    list.iter().map(|(name, _)| &**name).collect()
}

#[test]
fn written_headers_the_client_did_not_send_are_added_not_removed_and_replaced() {
    let config = config_with(json!({}), default_rules());
    let token = eddsa_token("ed1", valid_claims());
    let mut clean = request("/api/x", &[("authorization", &bearer(&token))]);
    clean.written_sent = WrittenSent::Known(Vec::new());
    let Decision::Allow(allowed) = run(&config, &clean) else {
        panic!()
    };
    assert_eq!(names_of(&allowed.mutations.remove), ["authorization"]);
    assert!(allowed.mutations.set.is_empty());
    assert_eq!(
        set_names(&allowed.mutations.add),
        ["x-user", "x-roles", "x-jwt-payload"]
    );
    assert!(allowed
        .mutations
        .add
        .contains(&("x-user".into(), "alice".into())));
}

#[test]
fn written_headers_the_client_sent_are_replaced_or_removed() {
    let config = config_with(json!({}), default_rules());
    let mut claims = valid_claims();
    claims.custom = json!({}); // no roles: x-roles is not set, so the client's is removed
    let token = eddsa_token("ed1", claims);
    let mut spoofed = request(
        "/api/x",
        &[("authorization", &bearer(&token)), ("x-user", "root")],
    );
    spoofed.written_sent = WrittenSent::Known(vec!["x-user".into(), "x-roles".into()]);
    let Decision::Allow(allowed) = run(&config, &spoofed) else {
        panic!()
    };
    assert_eq!(
        names_of(&allowed.mutations.remove),
        ["x-roles", "authorization"]
    );
    assert_eq!(set_names(&allowed.mutations.set), ["x-user"]);
    assert_eq!(set_names(&allowed.mutations.add), ["x-jwt-payload"]);

    let mut open = request("/healthz", &[]);
    open.written_sent = WrittenSent::Known(vec!["x-jwt-payload".into()]);
    let Decision::Allow(allowed) = run(&config, &open) else {
        panic!()
    };
    assert_eq!(names_of(&allowed.mutations.remove), ["x-jwt-payload"]);
}

#[test]
fn the_last_value_set_under_a_name_wins_once() {
    let shared = json!({"claim_to_headers": [
        {"claim_name": "sub", "header_name": "x-user"},
        {"claim_name": "roles", "header_name": "x-user"}
    ]});
    let config = config_with(shared, default_rules());
    let token = eddsa_token("ed1", valid_claims());
    for sent in [WrittenSent::Unknown, WrittenSent::Known(Vec::new())] {
        let mut req = request("/api/x", &[("authorization", &bearer(&token))]);
        req.written_sent = sent.clone();
        let Decision::Allow(allowed) = run(&config, &req) else {
            panic!()
        };
        let all: Vec<_> = allowed
            .mutations
            .set
            .iter()
            .chain(&allowed.mutations.add)
            .filter(|(name, _)| &**name == "x-user")
            .collect();
        assert_eq!(all, [&("x-user".into(), "read,write".into())], "{sent:?}");
    }
}

#[test]
fn spoofed_output_headers_are_removed_even_on_unauthenticated_rules() {
    let config = config_with(json!({}), default_rules());
    let Decision::Allow(allowed) = run(
        &config,
        &request("/healthz", &[("x-user", "admin"), ("x-jwt-payload", "e30")]),
    ) else {
        panic!()
    };
    assert_eq!(
        allowed
            .mutations
            .remove
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
        config.output_headers
    );
    for header in ["x-user", "x-roles", "x-jwt-payload"] {
        assert!(
            allowed.mutations.remove.contains(&header.into()),
            "{header}"
        );
    }
}

#[test]
fn token_in_a_query_parameter_is_removed_from_the_path() {
    let config = config_with(json!({}), default_rules());
    let token = hs_token(base_payload());
    let Decision::Allow(allowed) = run(
        &config,
        &request(&format!("/api/x?a=1&access_token={token}"), &[]),
    ) else {
        panic!()
    };
    assert_eq!(allowed.mutations.path.as_deref(), Some("/api/x?a=1"));
}

#[test]
fn missing_token_gets_401_with_the_rule_as_realm() {
    let config = config_with(json!({}), default_rules());
    let decision = run(&config, &request("/api/x", &[]));
    assert_eq!(status(&decision), 401);
    assert_eq!(reason(&decision), r#"Bearer realm="api""#);
}

#[test]
fn unmatched_requests_get_403_by_default() {
    let config = config_with(json!({}), default_rules());
    assert_eq!(status(&run(&config, &request("/elsewhere", &[]))), 403);
}

#[test]
fn refused_tokens_get_401_invalid_token_with_the_reason() {
    let config = config_with(json!({}), default_rules());
    let now = NOW_MS / 1000;
    let cases = [
        (
            hs_token(json!({"iss": "https://idp.test", "aud": "orders", "exp": now - 61})),
            "token is expired",
        ),
        (
            hs_token(
                json!({"iss": "https://idp.test", "aud": "orders", "exp": now + 600, "nbf": now + 61}),
            ),
            "token is not yet valid",
        ),
        (
            hs_token(json!({"iss": "https://evil.test", "aud": "orders", "exp": now + 600})),
            "token issuer is not accepted",
        ),
        (
            hs_token(json!({"aud": "orders", "exp": now + 600})),
            "token issuer is not accepted",
        ),
        (
            hs256_token(
                r#"{"alg":"HS256","kid":"nope"}"#,
                &base_payload().to_string(),
                HMAC_SECRET,
            ),
            "token key id is not known",
        ),
        (
            hs256_token(
                r#"{"alg":"HS256","kid":"hs1"}"#,
                &base_payload().to_string(),
                b"wrong-secret-wrong-secret-wrong-s",
            ),
            "token signature does not verify",
        ),
        (
            raw_token(r#"{"alg":"none"}"#, &base_payload().to_string(), b"x"),
            "token algorithm is not allowed",
        ),
        ("not-a-jwt".to_string(), "token is malformed"),
    ];
    for (token, expected) in cases {
        let decision = run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&token))]),
        );
        assert_eq!(status(&decision), 401, "{expected}");
        assert_eq!(
            reason(&decision),
            format!(r#"Bearer error="invalid_token", error_description="{expected}""#)
        );
    }
}

#[test]
fn a_token_header_that_is_not_utf8_is_a_malformed_token() {
    let config = config_with(json!({}), default_rules());
    let valid = hs_token(base_payload());
    for raw in [
        b"Bearer \xff\xfe".to_vec(),
        [b"Bearer ".as_slice(), valid.as_bytes(), b"\xe9"].concat(),
    ] {
        // As the host adapter reads it (`request::text_of`).
        let header = crate::request::text_of(&raw);
        let decision = run(&config, &request("/api/x", &[("authorization", &header)]));
        assert_eq!(status(&decision), 401, "{raw:?}");
        assert_eq!(
            reason(&decision),
            r#"Bearer error="invalid_token", error_description="token is malformed""#
        );
    }
}

#[test]
fn clock_skew_is_honoured_at_both_ends() {
    let config = config_with(json!({"clock_skew": "60s"}), default_rules());
    let now = NOW_MS / 1000;
    let just_expired =
        hs_token(json!({"iss": "https://idp.test", "aud": "orders", "exp": now - 59}));
    let almost_valid = hs_token(
        json!({"iss": "https://idp.test", "aud": "orders", "exp": now + 600, "nbf": now + 59}),
    );
    for token in [just_expired, almost_valid] {
        assert_eq!(
            status(&run(
                &config,
                &request("/api/x", &[("authorization", &bearer(&token))])
            )),
            200
        );
    }
}

#[test]
fn require_expiration_refuses_tokens_without_exp() {
    let token = hs_token(json!({"iss": "https://idp.test", "aud": "orders"}));
    let lenient = config_with(json!({}), default_rules());
    assert_eq!(
        status(&run(
            &lenient,
            &request("/api/x", &[("authorization", &bearer(&token))])
        )),
        200
    );
    let strict = config_with(json!({"require_expiration": true}), default_rules());
    let decision = run(
        &strict,
        &request("/api/x", &[("authorization", &bearer(&token))]),
    );
    assert!(reason(&decision).contains("token has no expiration"));
}

#[test]
fn wrong_audience_gets_403_insufficient_scope() {
    let config = config_with(json!({}), default_rules());
    for aud in [
        Some(json!("billing")),
        Some(json!(["billing", "x"])),
        Some(json!([])),
        None,
    ] {
        let mut payload = base_payload();
        match aud {
            Some(aud) => payload["aud"] = aud,
            None => drop(payload.as_object_mut().unwrap().remove("aud")),
        }
        let decision = run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&hs_token(payload)))]),
        );
        assert_eq!(status(&decision), 403);
        assert_eq!(reason(&decision), r#"Bearer error="insufficient_scope""#);
    }
    let mut listed = base_payload();
    listed["aud"] = json!(["billing", "orders"]);
    assert_eq!(
        status(&run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&hs_token(listed)))])
        )),
        200
    );
}

#[test]
fn algorithm_allow_list_is_enforced() {
    let config = config_with(json!({"algorithms": ["EdDSA"]}), default_rules());
    let rsa = rs256_token("rsa1", valid_claims());
    let decision = run(
        &config,
        &request("/api/x", &[("authorization", &bearer(&rsa))]),
    );
    assert!(reason(&decision).contains("algorithm is not allowed"));
    let ed = eddsa_token("ed1", valid_claims());
    assert_eq!(
        status(&run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&ed))])
        )),
        200
    );
}

#[test]
fn hmac_signed_with_the_rsa_public_key_is_refused() {
    // RS256/HS256 confusion: the attacker MACs with the public key bytes.
    let config = config_with(json!({}), default_rules());
    let public_der = keys().rsa.public_key().to_der().unwrap();
    for kid in ["rsa1", "hs1"] {
        let token = hs256_token(
            &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            &base_payload().to_string(),
            &public_der,
        );
        let decision = run(
            &config,
            &request("/api/x", &[("authorization", &bearer(&token))]),
        );
        assert_eq!(status(&decision), 401, "{kid}");
    }
}

#[test]
fn a_signature_moved_to_another_payload_does_not_verify() {
    let config = config_with(json!({}), default_rules());
    let good = eddsa_token("ed1", valid_claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut forged = base_payload();
    forged["sub"] = json!("admin");
    let forged_b64 = b64e(forged.to_string().as_bytes());
    parts[1] = &forged_b64;
    let decision = run(
        &config,
        &request("/api/x", &[("authorization", &bearer(&parts.join(".")))]),
    );
    assert!(
        reason(&decision).contains("signature does not verify"),
        "{}",
        reason(&decision)
    );
}

#[test]
fn any_accepts_either_provider_and_all_needs_both() {
    let config = config_with(json!({}), default_rules());
    let corp = hs_token(base_payload());
    let partner = hs256_token(
        r#"{"alg":"HS256"}"#,
        &json!({"iss": "https://partner.test"}).to_string(),
        b"partner-secret-partner-secret-32b",
    );
    let corp_h = bearer(&corp);
    assert_eq!(
        status(&run(
            &config,
            &request("/either", &[("authorization", &corp_h)])
        )),
        200
    );
    assert_eq!(
        status(&run(
            &config,
            &request("/either", &[("x-partner-token", &partner)])
        )),
        200
    );
    assert_eq!(status(&run(&config, &request("/either", &[]))), 401);
    assert_eq!(
        status(&run(
            &config,
            &request("/both", &[("authorization", &corp_h)])
        )),
        401
    );
    assert_eq!(
        status(&run(
            &config,
            &request(
                "/both",
                &[("authorization", &corp_h), ("x-partner-token", &partner)]
            )
        )),
        200
    );
}

#[test]
fn allow_missing_admits_no_token_but_never_a_bad_one() {
    let config = config_with(json!({}), default_rules());
    assert_eq!(status(&run(&config, &request("/optional", &[]))), 200);
    let wrong_issuer = hs_token(json!({"iss": "https://evil.test", "aud": "orders"}));
    let decision = run(
        &config,
        &request("/optional", &[("authorization", &bearer(&wrong_issuer))]),
    );
    assert_eq!(status(&decision), 401);
}

#[test]
fn two_different_tokens_are_refused() {
    let config = config_with(json!({}), default_rules());
    let a = bearer(&hs_token(base_payload()));
    let b = bearer(&eddsa_token("ed1", valid_claims()));
    let decision = run(
        &config,
        &request("/api/x", &[("authorization", &a), ("authorization", &b)]),
    );
    assert!(reason(&decision).contains("more than one token"));
}

struct CountingVerifier {
    calls: Cell<u32>,
}

impl SignatureVerifier for CountingVerifier {
    fn verify(&self, jws: &Jws, key: &Jwk) -> Result<(), SignatureError> {
        self.calls.set(self.calls.get() + 1);
        PortableVerifier.verify(jws, key)
    }
}

#[test]
fn verified_and_refused_tokens_are_checked_once_then_served_from_cache() {
    let config = config_with(json!({}), default_rules());
    let keys = KeyStore::new(&config);
    let verifier = CountingVerifier {
        calls: Cell::new(0),
    };
    let names = Names::of(&config);
    let env = AuthEnv {
        config: &config,
        names: &names,
        keys: &keys,
        verifier: &verifier,
        now_ms: NOW_MS,
    };
    let mut cache = TokenCache::default();
    let good = bearer(&eddsa_token("ed1", valid_claims()));
    let bad = bearer(&hs256_token(
        r#"{"alg":"HS256","kid":"hs1"}"#,
        &base_payload().to_string(),
        b"wrong-secret-wrong-secret-wrong-s",
    ));
    for _ in 0..5 {
        assert_eq!(
            status(&decide(
                &env,
                &mut cache,
                &mut MemoryBuckets::default(),
                &request("/api/x", &[("authorization", &good)])
            )),
            200
        );
        assert_eq!(
            status(&decide(
                &env,
                &mut cache,
                &mut MemoryBuckets::default(),
                &request("/api/x", &[("authorization", &bad)])
            )),
            401
        );
    }
    assert_eq!(verifier.calls.get(), 2);
    assert_eq!(cache.hits, 8);
}

#[test]
fn a_cached_token_still_expires_on_time() {
    let config = config_with(json!({"clock_skew": "0s"}), default_rules());
    let keys = KeyStore::new(&config);
    let mut cache = TokenCache::default();
    let now = NOW_MS / 1000;
    let token = bearer(&hs_token(
        json!({"iss": "https://idp.test", "aud": "orders", "exp": now + 10}),
    ));
    let names = Names::of(&config);
    let at = |now_ms| AuthEnv {
        config: &config,
        names: &names,
        keys: &keys,
        verifier: &PortableVerifier,
        now_ms,
    };
    assert_eq!(
        status(&decide(
            &at(NOW_MS),
            &mut cache,
            &mut MemoryBuckets::default(),
            &request("/api/x", &[("authorization", &token)])
        )),
        200
    );
    let later = decide(
        &at(NOW_MS + 11_000),
        &mut cache,
        &mut MemoryBuckets::default(),
        &request("/api/x", &[("authorization", &token)]),
    );
    assert!(reason(&later).contains("expired"));
}

fn remote_config() -> Config {
    let document = json!({
        "providers": {"corp": {"issuer": "https://idp.test",
            "remote_jwks": {"cluster": "idp", "uri": "http://idp.test/jwks.json", "cache_duration": "5m"}}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}]
    });
    config::parse(document.to_string().as_bytes()).unwrap()
}

#[test]
fn remote_keys_pending_pause_and_failure_without_keys_is_503() {
    let config = remote_config();
    let mut keys = KeyStore::new(&config);
    let token = bearer(&eddsa_token("ed1", valid_claims()));
    let req = request("/x", &[("authorization", &token)]);
    let names = Names::of(&config);
    let decide_now = |keys: &KeyStore, now_ms| {
        let env = AuthEnv {
            config: &config,
            names: &names,
            keys,
            verifier: &PortableVerifier,
            now_ms,
        };
        decide(
            &env,
            &mut TokenCache::default(),
            &mut MemoryBuckets::default(),
            &req,
        )
    };
    assert_eq!(
        decide_now(&keys, NOW_MS),
        Decision::AwaitKeys(vec![(0, FetchReason::FirstKeys)])
    );

    let remote = keys.remote_mut(0).unwrap();
    remote.lease = remote.lease.finished(false, NOW_MS);
    let down = decide_now(&keys, NOW_MS + 10);
    assert_eq!(status(&down), 503);
    let Decision::Deny { reply, .. } = down else {
        panic!()
    };
    assert!(reply.headers.contains(&("retry-after".into(), "1".into())));

    keys.remote_mut(0)
        .unwrap()
        .adopt(NOW_MS, jwks_json(&[ed_jwk("ed1")]).as_bytes())
        .unwrap();
    assert_eq!(status(&decide_now(&keys, NOW_MS + 20)), 200);
}

#[test]
fn unknown_kid_asks_for_one_early_refetch_then_401() {
    let config = remote_config();
    let mut keys = KeyStore::new(&config);
    keys.remote_mut(0)
        .unwrap()
        .adopt(NOW_MS, jwks_json(&[ed_jwk("old")]).as_bytes())
        .unwrap();
    let token = bearer(&eddsa_token("rotated", valid_claims()));
    let req = request("/x", &[("authorization", &token)]);
    let names = Names::of(&config);
    let decide_now = |keys: &KeyStore, now_ms| {
        let env = AuthEnv {
            config: &config,
            names: &names,
            keys,
            verifier: &PortableVerifier,
            now_ms,
        };
        decide(
            &env,
            &mut TokenCache::default(),
            &mut MemoryBuckets::default(),
            &req,
        )
    };
    assert_eq!(
        decide_now(&keys, NOW_MS),
        Decision::AwaitKeys(vec![(0, FetchReason::UnknownKid)])
    );
    // While that refetch is under way, the request waits for it (it may bring the kid)...
    let remote = keys.remote_mut(0).unwrap();
    let started = remote
        .lease
        .try_start(NOW_MS, 1_000, FetchReason::UnknownKid)
        .unwrap();
    remote.lease = started;
    assert_eq!(
        decide_now(&keys, NOW_MS + 3),
        Decision::AwaitKeys(vec![(0, FetchReason::UnknownKid)])
    );
    // ... and once it came back still without the kid: refuse rather than fetch again.
    keys.remote_mut(0).unwrap().lease = started.finished(true, NOW_MS + 5);
    assert!(reason(&decide_now(&keys, NOW_MS + 10)).contains("key id is not known"));
    // After rotation the new key is there.
    keys.remote_mut(0)
        .unwrap()
        .adopt(NOW_MS + 20, jwks_json(&[ed_jwk("rotated")]).as_bytes())
        .unwrap();
    assert_eq!(status(&decide_now(&keys, NOW_MS + 30)), 200);
}

/// A provider whose local JWKS holds one key of every kind, so a token of any algorithm can be
/// checked; tokens without `kid` are tried against every key that fits.
fn every_algorithm_config() -> Config {
    let jwks = jwks_json(&[
        public_jwk(keys(), KeyFamily::Rsa, "rsa"),
        public_jwk(keys(), KeyFamily::Ec(Curve::P256), "p256"),
        public_jwk(keys(), KeyFamily::Ec(Curve::P384), "p384"),
        public_jwk(keys(), KeyFamily::Ed25519, "ed"),
        public_jwk(keys(), KeyFamily::Oct, "oct"),
    ]);
    let document = json!({
        "providers": {"corp": {"issuer": "https://idp.test", "audiences": ["orders"],
                               "local_jwks": {"inline": jwks}}},
        "rules": [{"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"}],
    });
    config::parse(document.to_string().as_bytes()).unwrap()
}

#[test]
fn every_algorithm_accepts_the_same_odd_but_legal_claims() {
    // meshguard reads none of these, so none may decide a token's fate, whatever its algorithm:
    // `iat` is not checked (as in jwt_authn), `jti` and `nonce` are the application's business,
    // `cty` is left to the application (RFC 7515 §4.1.10), and an embedded `jwk` (§4.1.3) is
    // never used (RFC 8725 §3.10). The `jwk` here is RFC 7515 A.3's example key.
    let embedded_jwk = json!({"kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    let oddities = [
        ("nothing odd", json!({}), json!({})),
        ("iat: \"yesterday\"", json!({}), json!({"iat": "yesterday"})),
        ("jti: 7", json!({}), json!({"jti": 7})),
        ("nonce: 7", json!({}), json!({"nonce": 7})),
        ("header cty: 5", json!({"cty": 5}), json!({})),
        ("header jwk object", json!({"jwk": embedded_jwk}), json!({})),
        (
            "all of them at once",
            json!({"cty": 5, "jwk": embedded_jwk}),
            json!({"iat": "yesterday", "jti": 7, "nonce": 7}),
        ),
    ];
    let config = every_algorithm_config();
    let mut refused = Vec::new();
    // ES256/ES384 in a build without them: 401 whatever the claims (the test below).
    for alg in Algorithm::ALL
        .into_iter()
        .filter(|&alg| portable::verifies_in_wasm(alg))
    {
        for (oddity, header_extra, claims_extra) in &oddities {
            let mut header = json!({"alg": alg.name(), "typ": "JWT"});
            let mut payload = base_payload();
            for (target, extra) in [(&mut header, header_extra), (&mut payload, claims_extra)] {
                for (name, value) in extra.as_object().unwrap() {
                    target[name] = value.clone();
                }
            }
            let token = signed_token(keys(), alg, &header.to_string(), &payload.to_string());
            let decision = run(
                &config,
                &request("/api/x", &[("authorization", &bearer(&token))]),
            );
            if status(&decision) != 200 {
                refused.push(format!(
                    "{alg} with {oddity}: {} {}",
                    status(&decision),
                    reason(&decision)
                ));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "every algorithm must judge these claims alike (valid); refused:\n{}",
        refused.join("\n")
    );
}

/// ES256 and ES384 tokens, valid and tampered, on a host whose `verify_signature` is missing
/// (`PortableVerifier` alone, as `HostVerifier` falls back to it) in a build without
/// `portable-ecdsa`: refused with 401 and the reason, never accepted.
#[cfg(not(feature = "portable-ecdsa"))]
#[test]
fn without_portable_ecdsa_an_ecdsa_token_gets_401_saying_the_host_cannot_verify_it() {
    let config = every_algorithm_config();
    for alg in [Algorithm::ES256, Algorithm::ES384] {
        let header = json!({"alg": alg.name(), "typ": "JWT"}).to_string();
        let valid = signed_token(keys(), alg, &header, &base_payload().to_string());
        let (input, _) = valid.rsplit_once('.').unwrap();
        let tampered = format!("{input}.{}", b64e(&[7; 64]));
        for token in [valid.clone(), tampered] {
            let decision = run(
                &config,
                &request("/api/x", &[("authorization", &bearer(&token))]),
            );
            assert_eq!(status(&decision), 401, "{alg}");
            assert_eq!(
                reason(&decision),
                "Bearer error=\"invalid_token\", error_description=\"token algorithm cannot be \
                 verified on this host\"",
                "{alg}"
            );
            let Decision::Deny { reply, .. } = decision else {
                panic!("{alg}")
            };
            assert!(reply
                .body
                .contains("token algorithm cannot be verified on this host"));
        }
    }
}
