//! A whole request through the decision: `:path` with its query, `cookie` and `authorization`
//! headers and a rate-limit key header, taken from the input (split at 0xFF bytes), against a
//! configuration that looks for tokens in a header, a query parameter and a cookie. Also the
//! rewrites meshguard applies to the query and the cookie header.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshguard::auth::cache::TokenCache;
use meshguard::auth::extract::{cookie_header_without, cookie_pairs, path_without_params, query_pairs};
use meshguard::auth::remote::KeyStore;
use meshguard::auth::verify::PortableVerifier;
use meshguard::auth::AuthEnv;
use meshguard::names::Names;
use meshguard::config::{self, Config};
use meshguard::pipeline;
use meshguard::ratelimit::MemoryBuckets;
use meshguard::request::Request;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let json = serde_json::json!({
            "providers": {"corp": {
                "issuer": "https://idp.test", "audiences": ["orders"],
                "local_jwks": {"inline": r#"{"keys":[{"kty":"oct","kid":"k","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"], "from_cookies": ["session"],
                "algorithms": ["HS256"],
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
            "rate_limits": {"per_key": {"key": ["header:x-api-key", "claim:sub", "path"],
                "token_bucket": {"max_tokens": 5, "tokens_per_fill": 1, "fill_interval": "1s"}}},
            "rules": [
                {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true},
                {"name": "api", "match": {"prefix": "/api/"}, "requires": {"any": ["corp"], "allow_missing": true},
                 "rate_limits": ["per_key"]}],
            "unmatched": "deny"
        });
        config::parse(json.to_string().as_bytes()).expect("the fuzz configuration is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0xFF).map(|f| String::from_utf8_lossy(f).into_owned());
    let path = fields.next().unwrap_or_default();
    let mut headers = Vec::new();
    for name in ["cookie", "authorization", "x-api-key"] {
        if let Some(value) = fields.next() {
            headers.push((name.into(), value.into()));
        }
    }
    let request = Request::new("GET", &path, "api.test", headers);
    let config = config();
    let keys = KeyStore::new(config);
    let names = Names::of(config);
    let env = AuthEnv { config, names: &names, keys: &keys, verifier: &PortableVerifier, now_ms: 1_800_000_000_000 };
    let decision = pipeline::decide(&env, &mut TokenCache::default(), &mut MemoryBuckets::default(), &request);
    let _ = pipeline::summarize(&names, &decision);

    let query = path.split_once('?').map(|(_, q)| q);
    let _ = query_pairs(query).count();
    let _ = path_without_params(&path, &["access_token".to_owned()]);
    let cookies: Vec<&str> = request.header_values("cookie").collect();
    for value in &cookies {
        let _ = cookie_pairs(value).count();
    }
    let _ = cookie_header_without(&cookies, &["session".to_owned()]);
});
