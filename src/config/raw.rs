//! The pluginConfig JSON exactly as users write it; `validate.rs` turns these into the checked
//! types the filter runs on. The filter reads them with `read.rs` (by hand, over a JSON tree);
//! serde's derive, which says the same, is for the tests that hold `read.rs` to it and for the
//! CLI's schema, and is left out of the .wasm (it was ~66 KB there). A field added here goes in
//! `read.rs`'s table too; the tests say where the two disagree.

use std::collections::BTreeMap;

#[cfg(any(test, feature = "cli"))]
use serde::Deserialize;

use super::duration::ConfigDuration;

#[derive(Debug, Default)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "Config"))]
pub struct RawConfig {
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub providers: BTreeMap<String, RawProvider>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub rules: Vec<RawRule>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::unmatched"))]
    pub unmatched: Option<String>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub access_log: Option<RawAccessLog>,
    /// As Envoy's jwt_authn: a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) needs no token.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub bypass_cors_preflight: bool,
    /// A header Envoy writes with the direct peer's address before any filter runs
    /// (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`, overwriting a client's copy), for
    /// `source.ip` where the connection manager trusts X-Forwarded-For hops.
    pub direct_peer_header: Option<String>,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "Provider"))]
pub struct RawProvider {
    pub issuer: String,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub audiences: Vec<String>,
    pub remote_jwks: Option<RawRemoteJwks>,
    pub local_jwks: Option<RawLocalJwks>,
    pub from_headers: Option<Vec<RawHeaderLocation>>,
    pub from_params: Option<Vec<String>>,
    pub from_cookies: Option<Vec<String>>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub claim_to_headers: Vec<RawClaimToHeader>,
    pub clock_skew: Option<ConfigDuration>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::algorithms"))]
    pub algorithms: Option<Vec<String>>,
    /// As Envoy's `require_expiration`: refuse tokens without `exp`.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub require_expiration: bool,
    /// Claims read as space-delimited lists by conditions, besides `scope` and `scp`.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "RemoteJwks"))]
pub struct RawRemoteJwks {
    pub cluster: String,
    pub uri: String,
    pub timeout: Option<ConfigDuration>,
    pub cache_duration: Option<ConfigDuration>,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "LocalJwks"))]
pub struct RawLocalJwks {
    pub inline: String,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "HeaderLocation"))]
pub struct RawHeaderLocation {
    pub name: String,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub value_prefix: String,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "ClaimToHeader"))]
pub struct RawClaimToHeader {
    pub claim_name: String,
    pub header_name: String,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "RateLimit"))]
pub struct RawRateLimit {
    // Parsed from a Value in `validate.rs`, for errors clearer than serde's.
    /// The bucket key: one part (`"client_ip"`) or a list of parts.
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::key"))]
    pub key: serde_json::Value,
    pub token_bucket: Option<RawTokenBucket>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::mode"))]
    pub mode: Option<String>,
    pub max_delay: Option<ConfigDuration>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub shadow: bool,
    pub service: Option<RawRateLimitService>,
    /// Also put the rate-limit headers on allowed responses (limited ones always carry them).
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub enable_ratelimit_headers: bool,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "TokenBucket"))]
pub struct RawTokenBucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: ConfigDuration,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "RateLimitService"))]
pub struct RawRateLimitService {
    pub cluster: String,
    pub domain: String,
    pub timeout: Option<ConfigDuration>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub failure_mode_deny: bool,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "Rule"))]
pub struct RawRule {
    pub name: String,
    /// `allow` (the default), `deny` or `audit`.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::action"))]
    pub action: Option<String>,
    #[cfg_attr(any(test, feature = "cli"), serde(rename = "match", default))]
    pub matcher: RawMatch,
    // Parsed from Values in `validate.rs`: conditions nest (all / any / not).
    /// Conditions that must all hold.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::when"))]
    pub when: Option<Vec<serde_json::Value>>,
    /// Decide and record, never refuse.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub dry_run: bool,
    // Parsed from a Value in `validate.rs`, for errors clearer than serde's.
    /// The providers a request must satisfy: `"corp"`, `{"any": [...]}` or `{"all": [...]}`.
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::requires"))]
    pub requires: Option<serde_json::Value>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub allow_missing: bool,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub allow_unauthenticated: bool,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub rate_limits: Vec<String>,
}

#[derive(Debug, Default)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "Match"))]
pub struct RawMatch {
    pub path: Option<String>,
    pub prefix: Option<String>,
    /// Istio's forms: exact, `prefix*`, `*suffix`, `*`, and `{*}` / `{**}` templates.
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    /// The port the connection arrived on.
    pub ports: Option<Vec<u16>>,
    pub not_ports: Option<Vec<u16>>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug)]
#[cfg_attr(any(test, feature = "cli"), derive(Deserialize))]
#[cfg_attr(any(test, feature = "cli"), serde(deny_unknown_fields))]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", schemars(rename = "AccessLog"))]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    /// Whether the decision goes to Envoy's filter state (`wasm.meshguard`) for Envoy's own
    /// access loggers; default true.
    pub filter_state: Option<bool>,
    /// Whether a record carries `request_bytes` and `response_bytes`; default true.
    pub byte_counts: Option<bool>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    #[cfg_attr(feature = "cli", schemars(schema_with = "super::schema::sample_rate"))]
    pub sample_rate: Option<f64>,
    #[cfg_attr(any(test, feature = "cli"), serde(default))]
    pub request_headers: Vec<String>,
}
