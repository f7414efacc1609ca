//! What the micro-benchmarks share: the configuration and request `make bench` measures on the
//! cached hot path (one provider with local keys, `claim_to_headers`, one local rate limit keyed
//! by `claim:sub`, a rule for `/api/`).

use meshguard::accesslog::{Exchange, Verdict};
use meshguard::auth::cache::TokenCache;
use meshguard::auth::remote::{FetchReason, KeyStore};
use meshguard::auth::testkeys::{ec_jwk, ed_jwk, jwks_json, rsa_jwk};
use meshguard::auth::verify::PortableVerifier;
use meshguard::auth::AuthEnv;
use meshguard::config::Config;
use meshguard::flow::{self, FetchEnd, Lease};
use meshguard::names::Names;
use meshguard::pipeline::{self, Decision, PendingGlobal, Settled};
use meshguard::ratelimit::{self, GlobalAnswer, MemoryBuckets, PolicyOutcome};
use meshguard::request::Request;
use serde_json::json;

/// The benchmarks' clock: any fixed instant, so tokens and buckets behave the same every run.
pub const NOW_MS: u64 = 1_800_000_000_000;

pub fn config_json() -> String {
    let keys = jwks_json(&[rsa_jwk("rsa"), ec_jwk("ec"), ed_jwk("ed")]);
    json!({
        "providers": {"corp": {"issuer": "https://idp.test", "audiences": ["orders"],
            "local_jwks": {"inline": keys},
            "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
        "rate_limits": {"per_user": {"key": "claim:sub",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"}}},
        "rules": [{"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "rate_limits": ["per_user"]}]
    })
    .to_string()
}

pub fn request(token: &str) -> Request<'static> {
    Request::new(
        "GET",
        "/api/orders?page=2",
        "api.example.com",
        vec![("authorization".into(), format!("Bearer {token}").into())],
    )
}

/// What authentication reads, at the benchmarks' clock, with the pure-Rust verifier.
pub fn env<'a>(config: &'a Config, names: &'a Names, keys: &'a KeyStore) -> AuthEnv<'a> {
    AuthEnv {
        config,
        names,
        keys,
        verifier: &PortableVerifier,
        now_ms: NOW_MS,
    }
}

/// The request's side of an access-log record as the host gathers it, 3 ms long, answered 200.
pub fn exchange() -> Exchange {
    Exchange {
        start_ms: NOW_MS,
        end_ms: NOW_MS + 3,
        request_id: Some("8d4a6b2c-1f0e-4c1a-9d57-0b3f2e6a7c91".into()),
        method: "GET".into(),
        path: "/api/orders?page=2".into(),
        authority: "api.example.com".into(),
        status: Some(200),
        client_address: Some("10.0.0.7:51234".into()),
        headers: vec![("user-agent".into(), "curl/8.5.0".into())],
        ..Exchange::default()
    }
}

/// The flow's VM as the host's, with buckets in memory and no metrics or shared data.
pub struct BenchVm<'a> {
    pub env: AuthEnv<'a>,
    pub cache: TokenCache,
    pub buckets: MemoryBuckets,
}

impl flow::Vm for BenchVm<'_> {
    fn decide(&mut self, request: &Request, _now_ms: u64) -> Decision {
        pipeline::decide(&self.env, &mut self.cache, &mut self.buckets, request)
    }
    fn decide_with_answers(&mut self, pending: PendingGlobal, answers: &[GlobalAnswer]) -> Settled {
        pipeline::after_global(self.env.config, pending, answers, &mut self.buckets)
    }
    fn record(&mut self, settled: &Settled) -> Verdict {
        pipeline::verdict(self.env.names, settled)
    }
    fn release(&mut self, reservations: &[PolicyOutcome]) {
        ratelimit::release(self.env.config, reservations, &mut self.buckets);
    }
    fn adopt_shared_keys(&mut self, _provider: usize) -> bool {
        false
    }
    fn take_fetch_lease(&mut self, _: usize, _: FetchReason, _: u64) -> Option<Lease> {
        None
    }
    fn give_back_fetch_lease(&mut self, _: usize, _: Lease, _: FetchEnd, _: u64) {}
    fn shared_fetch_under_way(&self, _provider: usize, _now_ms: u64) -> bool {
        false
    }
    fn fetch_timeout_ms(&self, _provider: usize) -> u64 {
        1_000
    }
}
