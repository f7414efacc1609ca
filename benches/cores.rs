//! Micro-benchmarks of meshguard's cores, run natively (`make bench`): what each piece of the
//! per-request work costs before any Wasm or host-call overhead.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meshguard::accesslog;
use meshguard::auth::cache::{TokenCache, VerifiedToken};
use meshguard::auth::jws;
use meshguard::auth::remote::KeyStore;
use meshguard::auth::testkeys::{self, b64e, claims};
use meshguard::auth::verify::{check_signature, PortableVerifier};
use meshguard::authz::peer::PeerIdentity;
use meshguard::authz::{self, AllowSide, Facts};
use meshguard::config::{self, KeySource, TokenBucket};
use meshguard::flow::{Flow, StreamId};
use meshguard::names::Names;
use meshguard::pipeline::{self, Decision};
use meshguard::ratelimit::bucket::{BucketState, TakeMode};
use meshguard::ratelimit::MemoryBuckets;
use meshguard::request::Request;
use meshguard::rules;
use serde_json::{json, Value};

mod support;
use support::{config_json, env, exchange, request, BenchVm, NOW_MS};

fn tokens() -> [(&'static str, String); 4] {
    let valid = || claims(json!({}), 10 * 365 * 86_400);
    [
        ("RS256", testkeys::rs256_token("rsa", valid())),
        ("PS256", testkeys::ps256_token("rsa", valid())),
        ("ES256", testkeys::es256_token("ec", valid())),
        ("EdDSA", testkeys::eddsa_token("ed", valid())),
    ]
}

fn parsing(c: &mut Criterion) {
    let [(_, rs256), ..] = tokens();
    c.bench_function(
        "jws::parse (RS256 token: split, base64url, header and claims JSON)",
        |b| b.iter(|| jws::parse(black_box(&rs256)).is_ok()),
    );
}

fn verification(c: &mut Criterion) {
    let config = config::parse(config_json().as_bytes()).unwrap();
    let Some(KeySource::Local(key_set)) = config.providers.first().map(|p| &p.keys) else {
        unreachable!("the benchmark's provider has local keys")
    };
    let mut group = c.benchmark_group("signature, pure-Rust path");
    for (alg, token) in tokens() {
        let parsed = jws::parse(&token).unwrap();
        group.bench_function(alg, |b| {
            b.iter(|| check_signature(key_set, black_box(&parsed), &PortableVerifier).is_ok())
        });
    }
    group.finish();
}

fn decisions(c: &mut Criterion) {
    let config = config::parse(config_json().as_bytes()).unwrap();
    let keys = KeyStore::new(&config);
    let names = Names::of(&config);
    let [(_, rs256), ..] = tokens();
    let request = request(&rs256);
    let env = env(&config, &names, &keys);
    let mut cache = TokenCache::default();
    let mut buckets = MemoryBuckets::default();
    // The first decision verifies and caches the token; the measured ones hit the cache.
    assert!(matches!(
        pipeline::decide(&env, &mut cache, &mut buckets, &request),
        Decision::Allow(_)
    ));
    c.bench_function("pipeline::decide, cached RS256 token + rate limit", |b| {
        b.iter(|| pipeline::decide(&env, &mut cache, &mut buckets, black_box(&request)))
    });
    c.bench_function("token cache lookup (hit)", |b| {
        b.iter(|| cache.get(0, black_box(&rs256), NOW_MS / 1000, 0).is_some())
    });
}

/// What the flow adds to a request decided at once: its entry, kept until the stream goes.
fn flow(c: &mut Criterion) {
    let config = config::parse(config_json().as_bytes()).unwrap();
    let keys = KeyStore::new(&config);
    let names = Names::of(&config);
    let [(_, rs256), ..] = tokens();
    let request = request(&rs256);
    let mut vm = BenchVm {
        env: support::env(&config, &names, &keys),
        cache: TokenCache::default(),
        buckets: MemoryBuckets::default(),
    };
    let mut flow = Flow::new(NOW_MS);
    // Streams that live on meanwhile (slow upstreams), as a busy worker holds them.
    for id in 0..1_000 {
        flow.request(&mut vm, StreamId(id), request.clone(), NOW_MS);
    }
    let mut id = 1_000;
    c.bench_function(
        "flow: request decided at once, then gone (cached RS256 token + rate limit; 1000 live streams)",
        |b| {
            b.iter_batched(
                || request.clone(),
                |request| {
                    id += 1;
                    let effects = flow.request(&mut vm, StreamId(id), request, NOW_MS);
                    flow.stream_gone(&mut vm, StreamId(id));
                    effects
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn buckets(c: &mut Criterion) {
    let bucket = TokenBucket {
        max_tokens: 100,
        tokens_per_fill: 10,
        fill_interval: Duration::from_secs(1),
    };
    let mut state = BucketState::full(&bucket, NOW_MS);
    let mut now = NOW_MS;
    c.bench_function("token bucket: refill + take", |b| {
        b.iter(|| {
            now += 7;
            let (next, take) = state.take(&bucket, black_box(now), TakeMode::Reject);
            state = next;
            take
        })
    });
}

fn logging(c: &mut Criterion) {
    let config = config::parse(config_json().as_bytes()).unwrap();
    let keys = KeyStore::new(&config);
    let names = Names::of(&config);
    let [(_, rs256), ..] = tokens();
    let env = env(&config, &names, &keys);
    let decision = pipeline::decide(
        &env,
        &mut TokenCache::default(),
        &mut MemoryBuckets::default(),
        &request(&rs256),
    );
    let verdict = pipeline::summarize(&names, &decision).unwrap();
    let exchange = exchange();
    c.bench_function("pipeline::summarize (the verdict of a decision)", |b| {
        b.iter(|| pipeline::summarize(&names, black_box(&decision)))
    });
    c.bench_function("access-log record rendering (JSON line)", |b| {
        b.iter(|| accesslog::render(black_box(&exchange), &verdict))
    });
}

criterion_group!(
    cores,
    parsing,
    verification,
    decisions,
    flow,
    buckets,
    logging,
    authorization
);
criterion_main!(cores);

/// An allow rule whose `when` has ten conditions, one of each kind a policy reaches for, all of
/// which hold for `authz_request()` (so each is evaluated: the full cost); and ten deny rules
/// shaped as `meshguard import` writes Istio DENY policies (no `match`, `when: [{"any": [...]}]`)
/// that do not hold, so each is evaluated to the end too.
fn authz_config_json() -> String {
    let keys = json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64e(b"0123456789abcdef0123456789abcdef")}]});
    let one = |key: &str, values: &[&str]| json!({"key": key, "values": values});
    let deny = |i: usize, rules: Vec<Value>| json!({"name": format!("istio-system.deny-{i}"), "action": "deny", "when": [{"any": rules}]});
    let mut rules = vec![
        deny(
            0,
            vec![json!({"all": [one("remote.ip", &["192.168.0.0/16", "172.16.0.0/12"])]})],
        ),
        deny(
            1,
            vec![json!({"all": [one("source.namespace", &["untrusted", "sandbox-*"])]})],
        ),
        deny(
            2,
            vec![json!({"all": [one("request.auth.claims[groups]", &["banned", "suspended"])]})],
        ),
        deny(
            3,
            vec![json!({"all": [one("request.path", &["/admin", "/admin/*"])]})],
        ),
        deny(
            4,
            vec![json!({"all": [one("request.headers[x-debug]", &["*"])]})],
        ),
        deny(
            5,
            vec![json!({"all": [one("request.auth.principal", &["https://idp.test/mallory"])]})],
        ),
        deny(
            6,
            vec![
                json!({"all": [one("request.method", &["DELETE"]), one("request.path", &["/api/{**}"])]}),
                json!({"all": [one("request.auth.audiences", &["legacy"])]}),
            ],
        ),
        deny(
            7,
            vec![
                json!({"all": [{"not": one("source.principal", &["cluster.local/ns/billing/sa/*"])}, one("request.path", &["/api/orders/{*}/refund"])]}),
            ],
        ),
        deny(
            8,
            vec![json!({"all": [one("request.auth.claims[realm_access][roles]", &["blocked"])]})],
        ),
        deny(
            9,
            vec![json!({"all": [one("source.ip", &["203.0.113.0/24"])]})],
        ),
    ];
    let when = vec![
        one("request.auth.claims[groups]", &["admin", "ops-*"]),
        one(
            "request.auth.claims[realm_access][roles]",
            &["orders-reader"],
        ),
        one("request.auth.claims[tenant]", &["acme"]),
        json!({"scopes": ["orders:read"]}),
        one("request.auth.principal", &["https://idp.test/alice"]),
        one("request.auth.audiences", &["orders"]),
        one("request.headers[x-tenant]", &["acme"]),
        one("request.path", &["/api/orders/{*}"]),
        one("source.namespace", &["billing"]),
        one("remote.ip", &["10.0.0.0/8"]),
    ];
    rules.push(json!({"name": "orders-read", "match": {"prefix": "/api/"}, "requires": "corp", "when": when}));
    json!({
        "providers": {"corp": {"issuer": "https://idp.test", "audiences": ["orders"],
            "local_jwks": {"inline": keys.to_string()}}},
        "rules": rules,
    })
    .to_string()
}

fn authz_request() -> Request<'static> {
    let mut request = Request::new(
        "GET",
        "/api/orders/42?expand=items",
        "api.example.com",
        vec![("x-tenant".into(), "acme".into())],
    );
    request.peer = PeerIdentity::from_uri_san("spiffe://cluster.local/ns/billing/sa/api");
    request.remote_ip = "10.1.2.3".parse().ok();
    request.direct_ip = "10.1.2.1".parse().ok();
    request
}

/// The token as the pipeline keeps it once verified.
fn authz_token() -> Rc<VerifiedToken> {
    let Value::Object(claims) = json!({
        "iss": "https://idp.test", "sub": "alice", "aud": "orders",
        "iat": 1_800_000_000u64, "exp": 1_800_003_600u64,
        "scope": "openid profile orders:read orders:write",
        "groups": ["staff", "ops-emea"],
        "realm_access": {"roles": ["offline_access", "orders-reader"]},
        "tenant": "acme",
    }) else {
        unreachable!("the claims are an object")
    };
    Rc::new(VerifiedToken {
        provider: 0,
        subject: Some("alice".into()),
        principal: Some("https://idp.test/alice".into()),
        claims,
        upstream_headers: Vec::new(),
    })
}

fn authorization(c: &mut Criterion) {
    let config = config::parse(authz_config_json().as_bytes()).unwrap();
    let request = authz_request();
    let tokens = [authz_token()];
    let facts = Facts {
        request: &request,
        tokens: &tokens,
        providers: &config.providers,
    };
    let rule = &config.rules[0];
    let allow = || {
        Some(AllowSide {
            rule: &rule.name,
            when: &rule.when,
            dry_run: rule.dry_run,
        })
    };
    let matches = |matcher: &config::RuleMatch| rules::matches(matcher, &request);
    let only_allow = authz::Authorization::default();
    for authz in [&only_allow, &config.authz] {
        let judgement = authz::judge(authz, allow(), &facts, &matches);
        assert!(!judgement.refuses() && judgement.dry_run_denials.is_empty());
    }
    assert_eq!((rule.when.len(), config.authz.deny.len()), (10, 10));
    let mut group = c.benchmark_group("authz::judge");
    group.bench_function("allow rule with 10 conditions, all hold", |b| {
        b.iter(|| authz::judge(&only_allow, allow(), black_box(&facts), &matches))
    });
    group.bench_function(
        "10 deny rules that do not hold (imported Istio shape) + the allow rule",
        |b| b.iter(|| authz::judge(&config.authz, allow(), black_box(&facts), &matches)),
    );
    group.finish();
}
