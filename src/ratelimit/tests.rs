//! The rate-limit step through the whole pipeline, with buckets in memory.

use crate::names::Names;
use serde_json::json;

use super::*;
use crate::auth::cache::TokenCache;
use crate::auth::remote::KeyStore;
use crate::auth::testkeys::hs256_token;
use crate::auth::verify::PortableVerifier;
use crate::auth::AuthEnv;
use crate::config;
use crate::pipeline::{decide, Decision};
use crate::ratelimit::rls;
use crate::request::Request;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config() -> Config {
    let jwks =
        json!({"keys": [{"kty": "oct", "kid": "k", "k": crate::auth::testkeys::b64e(SECRET)}]})
            .to_string();
    config::parse(
        json!({
            "providers": {"corp": {"issuer": "i", "local_jwks": {"inline": jwks}}},
            "rate_limits": {
                "per_ip": {"key": "client_ip", "token_bucket": {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "1s"}},
                "per_user": {"key": ["claim:sub"], "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "1s"}},
                "per_key": {"key": ["header:x-api-key"], "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}},
                "trial": {"key": ["const:all"], "shadow": true, "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1m"}},
                "global": {"key": ["header:x-api-key", "const:v1"], "service": {"cluster": "rls", "domain": "mg", "timeout": "100ms"}},
                "strict_global": {"key": ["header:x-api-key"], "service": {"cluster": "rls", "domain": "mg", "failure_mode_deny": true}},
                "smooth": {"key": ["rule"], "mode": "delay", "max_delay": "1500ms",
                           "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "500ms"}}
            },
            "rules": [
                {"name": "open", "match": {"prefix": "/open"}, "allow_unauthenticated": true, "rate_limits": ["per_ip"]},
                {"name": "keyed", "match": {"prefix": "/keyed"}, "allow_unauthenticated": true, "rate_limits": ["per_key"]},
                {"name": "shadowed", "match": {"prefix": "/shadowed"}, "allow_unauthenticated": true, "rate_limits": ["trial"]},
                {"name": "smooth", "match": {"prefix": "/smooth"}, "allow_unauthenticated": true, "rate_limits": ["smooth"]},
                {"name": "both", "match": {"prefix": "/both"}, "requires": "corp", "rate_limits": ["per_ip", "per_user"]},
                {"name": "global", "match": {"prefix": "/global"}, "allow_unauthenticated": true, "rate_limits": ["per_ip", "global"]},
                {"name": "strict", "match": {"prefix": "/strict"}, "allow_unauthenticated": true, "rate_limits": ["strict_global"]}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

struct Harness {
    config: Config,
    keys: KeyStore,
    cache: TokenCache,
    buckets: MemoryBuckets,
}

impl Harness {
    fn new() -> Harness {
        let config = config();
        Harness {
            keys: KeyStore::new(&config),
            config,
            cache: TokenCache::default(),
            buckets: MemoryBuckets::default(),
        }
    }

    fn send(&mut self, path: &str, ip: &str, headers: &[(&str, &str)], now_ms: u64) -> Decision {
        let mut request = Request::get(path, headers);
        request.client_ip = Some(ip.to_string());
        let names = Names::of(&self.config);
        let env = AuthEnv {
            config: &self.config,
            names: &names,
            keys: &self.keys,
            verifier: &PortableVerifier,
            now_ms,
        };
        decide(&env, &mut self.cache, &mut self.buckets, &request)
    }

    fn status(&mut self, path: &str, ip: &str, headers: &[(&str, &str)], now_ms: u64) -> u32 {
        match self.send(path, ip, headers, now_ms) {
            Decision::Allow(_) => 200,
            Decision::Delay { .. } => 1,
            Decision::CheckGlobal(_) => 2,
            Decision::Deny { reply, .. } => reply.status,
            Decision::AwaitKeys(_) => 0,
        }
    }
}

fn token(sub: &str) -> String {
    format!(
        "Bearer {}",
        hs256_token(
            r#"{"alg":"HS256","kid":"k"}"#,
            &json!({"iss": "i", "sub": sub}).to_string(),
            SECRET
        )
    )
}

#[test]
fn exactly_max_tokens_pass_then_429_with_headers() {
    let mut h = Harness::new();
    let statuses: Vec<u32> = (0..5)
        .map(|_| h.status("/open", "10.0.0.1", &[], 1_000))
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let Decision::Deny { reply, .. } = h.send("/open", "10.0.0.1", &[], 1_200) else {
        panic!()
    };
    let header = |name: &str| reply.header(name).map(str::to_owned);
    assert_eq!(
        header("ratelimit-policy").as_deref(),
        Some("\"per_ip\";q=3;w=1")
    );
    assert_eq!(header("ratelimit").as_deref(), Some("\"per_ip\";r=0;t=1"));
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert!(reply.body.contains("rate_limited"));
}

#[test]
fn buckets_refill_and_keys_are_isolated() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.status("/open", "10.0.0.1", &[], 0);
    }
    assert_eq!(h.status("/open", "10.0.0.1", &[], 10), 429);
    assert_eq!(
        h.status("/open", "10.0.0.2", &[], 10),
        200,
        "another client has its own bucket"
    );
    assert_eq!(
        h.status("/open", "10.0.0.1", &[], 1_000),
        200,
        "refilled after fill_interval"
    );
}

#[test]
fn a_missing_key_part_is_its_own_bucket_not_a_bypass() {
    let mut h = Harness::new();
    assert_eq!(h.status("/keyed", "ip", &[], 0), 200);
    assert_eq!(
        h.status("/keyed", "ip", &[], 0),
        429,
        "requests without the header share one bucket"
    );
    assert_eq!(h.status("/keyed", "ip", &[("x-api-key", "a")], 0), 200);
    assert_eq!(h.status("/keyed", "ip", &[("x-api-key", "a")], 0), 429);
}

#[test]
fn claim_keys_limit_per_user_and_a_refusal_costs_no_other_policy_tokens() {
    let mut h = Harness::new();
    let alice = token("alice");
    let bob = token("bob");
    let auth = |t: &str| vec![("authorization", t.to_string())];
    let send = |h: &mut Harness, who: &str, ip: &str| {
        let headers = auth(who);
        let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        h.status("/both", ip, &refs, 0)
    };
    assert_eq!(send(&mut h, &alice, "10.0.0.9"), 200);
    assert_eq!(send(&mut h, &alice, "10.0.0.9"), 200);
    // alice is out (per_user); per_ip had 1 left and must keep it: the refusal is refunded.
    assert_eq!(send(&mut h, &alice, "10.0.0.9"), 429);
    assert_eq!(send(&mut h, &bob, "10.0.0.9"), 200);
    assert_eq!(send(&mut h, &bob, "10.0.0.9"), 429, "now per_ip is out");
}

#[test]
fn shadow_policies_decide_but_never_refuse() {
    let mut h = Harness::new();
    let first = h.send("/shadowed", "ip", &[], 0);
    let second = h.send("/shadowed", "ip", &[], 0);
    let Decision::Allow(first) = first else {
        panic!()
    };
    let Decision::Allow(second) = second else {
        panic!("{second:?}")
    };
    assert!(matches!(first.limits[0].take, Take::Allowed { .. }));
    assert!(matches!(second.limits[0].take, Take::Refused { .. }));
    assert!(second.limits[0].shadow);
}

#[test]
fn delay_mode_holds_requests_in_turn_then_refuses_past_max_delay() {
    let mut h = Harness::new();
    let waits: Vec<Option<u64>> = (0..5)
        .map(|_| match h.send("/smooth", "ip", &[], 0) {
            Decision::Allow(_) => Some(0),
            Decision::Delay { wait_ms, .. } => Some(wait_ms),
            _ => None,
        })
        .collect();
    assert_eq!(
        waits,
        vec![Some(0), Some(500), Some(1_000), Some(1_500), None]
    );
}

#[test]
fn a_cancelled_delayed_request_gives_its_token_back() {
    let mut h = Harness::new();
    h.send("/smooth", "ip", &[], 0);
    let Decision::Delay { allowed, .. } = h.send("/smooth", "ip", &[], 0) else {
        panic!()
    };
    let config = config();
    release(&config, &allowed.limits, &mut h.buckets);
    // The next request takes the released place: it waits 500 ms, not 1000.
    assert!(matches!(
        h.send("/smooth", "ip", &[], 0),
        Decision::Delay { wait_ms: 500, .. }
    ));
}

fn pending(decision: Decision) -> crate::pipeline::PendingGlobal {
    match decision {
        Decision::CheckGlobal(pending) => *pending,
        other => panic!("expected a global check, got {other:?}"),
    }
}

fn over(remaining: u64, over_limit: bool) -> GlobalAnswer {
    GlobalAnswer::Answered(rls::RlsAnswer {
        over_limit,
        limit: Some((10, 60)),
        remaining,
        reset_s: 30,
    })
}

#[test]
fn service_policies_ask_the_rate_limit_service_with_one_descriptor() {
    let mut h = Harness::new();
    let pending = pending(h.send("/global", "10.0.0.1", &[("x-api-key", "k1")], 0));
    assert_eq!(pending.checks.len(), 1);
    let check = &pending.checks[0];
    assert_eq!(check.cluster, "rls");
    assert_eq!(check.timeout, std::time::Duration::from_millis(100));
    let expected = rls::encode_request(
        "mg",
        &[
            ("x-api-key".into(), "k1".into()),
            ("generic_key".into(), "v1".into()),
        ],
        1,
    );
    assert_eq!(check.message, expected);
}

#[test]
fn over_limit_from_the_service_is_429_with_its_numbers_and_refunds_local_tokens() {
    let mut h = Harness::new();
    for _ in 0..2 {
        let pending = pending(h.send("/global", "10.0.0.1", &[("x-api-key", "k")], 0));
        let decision =
            crate::pipeline::after_global(&h.config, pending, &[over(0, true)], &mut h.buckets);
        let crate::pipeline::Settled::Deny { reply, .. } = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(reply.status, 429);
        let header = |name: &str| reply.header(name).map(str::to_owned);
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("10"));
        assert_eq!(header("retry-after").as_deref(), Some("30"));
        assert!(header("ratelimit").unwrap().contains("\"global\";r=0;t=30"));
    }
    // per_ip (3 tokens) was refunded both times, so three local passes remain.
    for _ in 0..3 {
        let pending = pending(h.send("/global", "10.0.0.1", &[("x-api-key", "k")], 0));
        let decision =
            crate::pipeline::after_global(&h.config, pending, &[over(5, false)], &mut h.buckets);
        assert!(
            matches!(decision, crate::pipeline::Settled::Allow(_)),
            "{decision:?}"
        );
    }
    assert_eq!(
        h.status("/global", "10.0.0.1", &[("x-api-key", "k")], 0),
        429
    );
}

#[test]
fn an_unanswered_service_allows_unless_failure_mode_deny() {
    let mut h = Harness::new();
    let lenient = pending(h.send("/global", "10.0.0.2", &[], 0));
    let decision =
        crate::pipeline::after_global(&h.config, lenient, &[GlobalAnswer::Failed], &mut h.buckets);
    assert!(matches!(decision, crate::pipeline::Settled::Allow(_)));
    let strict = pending(h.send("/strict", "10.0.0.2", &[], 0));
    let decision =
        crate::pipeline::after_global(&h.config, strict, &[GlobalAnswer::Failed], &mut h.buckets);
    let crate::pipeline::Settled::Deny { reply, .. } = decision else {
        panic!()
    };
    assert_eq!(reply.status, 503);
}
