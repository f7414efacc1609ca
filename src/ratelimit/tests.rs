//! The rate-limit step through the whole pipeline, with buckets in memory.

use serde_json::json;

use super::*;
use crate::auth::cache::TokenCache;
use crate::auth::remote::KeyStore;
use crate::auth::testkeys::hs256_token;
use crate::auth::verify::PortableVerifier;
use crate::auth::AuthEnv;
use crate::config;
use crate::pipeline::{decide, Decision};
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
                "smooth": {"key": ["rule"], "mode": "delay", "max_delay": "1500ms",
                           "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "500ms"}}
            },
            "rules": [
                {"name": "open", "match": {"prefix": "/open"}, "allow_unauthenticated": true, "rate_limits": ["per_ip"]},
                {"name": "keyed", "match": {"prefix": "/keyed"}, "allow_unauthenticated": true, "rate_limits": ["per_key"]},
                {"name": "shadowed", "match": {"prefix": "/shadowed"}, "allow_unauthenticated": true, "rate_limits": ["trial"]},
                {"name": "smooth", "match": {"prefix": "/smooth"}, "allow_unauthenticated": true, "rate_limits": ["smooth"]},
                {"name": "both", "match": {"prefix": "/both"}, "requires": "corp", "rate_limits": ["per_ip", "per_user"]}
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
        let mut request = Request::new(
            "GET",
            path,
            "svc",
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
        request.client_ip = Some(ip.to_string());
        let env = AuthEnv {
            config: &self.config,
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
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
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
