//! The pluginConfig contract (`../shared/design.md`): parsed from JSON, checked once, and held
//! in types that cannot represent a bad value. Errors name the JSON path and the reason.

mod conditions;
mod duration;
mod json_path;
mod raw;
mod read;
#[cfg(feature = "cli")]
pub mod schema;
mod tree;
mod validate;

use std::fmt;
use std::time::Duration;

pub use conditions::parse_key;
pub use duration::{as_debug, parse_duration, ConfigDuration};
use validate::is_token_byte;

use crate::auth::alg::Algorithm;
use crate::auth::jwks::KeySet;
use crate::authz::pattern::{PathPattern, TextPattern};
use crate::authz::{Authorization, Condition};

/// A configuration error: where in the JSON, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Parses and validates a pluginConfig document.
pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    validate::parse(json)
}

#[derive(Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rate_limits: Vec<RateLimitPolicy>,
    /// The allow rules, in order: the first whose `match` holds is the request's rule.
    pub rules: Vec<Rule>,
    /// Deny and audit rules, and `bypass_cors_preflight`.
    pub authz: Authorization,
    pub unmatched: Unmatched,
    pub access_log: AccessLog,
    /// Where Envoy put the direct peer's address, when `source.address` is not it.
    pub direct_peer_header: Option<String>,
    /// Every header meshguard writes upstream; client-sent copies are removed on every request.
    pub output_headers: Vec<String>,
    /// What the pipeline reads from a request, so the host fetches only that.
    pub reads: RequestReads,
}

/// The parts of a request the configured rules and providers look at. Fetching a few named
/// headers costs less than copying the whole header map into the VM on every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestReads {
    pub method: bool,
    pub authority: bool,
    /// The downstream address (a `client_ip` rate-limit key).
    pub client_ip: bool,
    /// The address Envoy derived for the client (`remote.ip` conditions).
    pub remote_ip: bool,
    /// The direct peer's address (`source.ip` conditions).
    pub direct_ip: bool,
    /// The port the connection arrived on.
    pub port: bool,
    /// The mTLS peer certificate's URI SAN (`source.principal` and its kin).
    pub peer: bool,
    /// The request's path: false only when nothing reads it (no path in any match, condition or
    /// key, and no provider, whose query-parameter tokens are in it), so that a filter with
    /// nothing to decide on makes no call for it.
    pub path: bool,
    /// Lower-case names of ordinary headers.
    pub headers: Vec<String>,
}

impl Config {
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub locations: TokenLocations,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub clock_skew: Duration,
    pub algorithms: Vec<Algorithm>,
    pub require_expiration: bool,
    /// Claims conditions split on spaces, besides `scope` and `scp`.
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug)]
pub enum KeySource {
    Local(KeySet),
    Remote(RemoteJwks),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub uri: String,
    /// Host part of `uri`, sent as `:authority`.
    pub authority: String,
    /// Path (and query) part of `uri`.
    pub path: String,
    pub timeout: Duration,
    pub cache_duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenLocations {
    pub headers: Vec<HeaderLocation>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLocation {
    /// Lower-case header name.
    pub name: String,
    pub value_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub claim_name: String,
    /// Lower-case header name.
    pub header_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matcher: RuleMatch,
    pub access: Access,
    /// Indexes into `Config::rate_limits`.
    pub rate_limits: Vec<usize>,
    /// Conditions that must all hold once the request is authenticated.
    pub when: Vec<Condition>,
    /// Its conditions decide and record but never refuse.
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleMatch {
    pub path: Option<String>,
    pub prefix: Option<String>,
    /// Istio's path forms and templates; empty matches any.
    pub paths: Vec<PathPattern>,
    pub not_paths: Vec<PathPattern>,
    /// Upper-case methods; empty matches any.
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    /// Lower-case host forms, matched without port or trailing dot; empty matches any.
    pub hosts: Vec<TextPattern>,
    pub not_hosts: Vec<TextPattern>,
    /// The port the connection arrived on; empty matches any.
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    /// Lower-case names and exact values.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    AllowUnauthenticated,
    Requires(Requirement),
}

/// Envoy jwt_authn's verifier tree: a provider, any of, or all of; `allow_missing` lets a
/// request with no token at all through, never one with a bad token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub kind: RequirementKind,
    pub allow_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementKind {
    /// Index into `Config::providers`.
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    Allow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub enabled: bool,
    /// Put the decision in Envoy's filter state (`wasm.meshguard`): one serialisation and one
    /// host call per request, worth paying only where an Envoy access logger reads it.
    pub filter_state: bool,
    /// `request_bytes` and `response_bytes` in the record: two calls into Envoy per record.
    pub byte_counts: bool,
    pub sample_rate: f64,
    /// Lower-case names; secrets are never logged whatever this lists.
    pub request_headers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub name: String,
    pub key: Vec<KeyPart>,
    pub limit: Limit,
    pub mode: LimitMode,
    pub shadow: bool,
    /// Add the rate-limit headers to allowed responses too.
    pub headers_on_allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Header(String),
    Claim(String),
    Rule,
    Path,
    Const(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Local(TokenBucket),
    Service(RateLimitService),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
    pub failure_mode_deny: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    Reject,
    Delay { max_delay: Duration },
}

#[cfg(test)]
mod tests;
