//! Raw structs -> checked `Config`. Every refusal names the JSON path.

use std::time::Duration;

use serde_json::Value;

use super::conditions;
use super::raw::*;
use super::read;
use super::*;
use crate::auth::jwks::{parse_jwks, KeySet, SymmetricKeys};
use crate::authz::pattern::{PathPattern, TextPattern};
use crate::authz::{Authorization, ConditionReads, PolicyRule};

const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_JWKS_CACHE_DURATION: Duration = Duration::from_secs(600);
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
const DEFAULT_RLS_TIMEOUT: Duration = Duration::from_millis(100);

pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    let raw = read::raw_config(json)?;
    Builder::default().build(raw)
}

/// Header names meshguard may read or write: RFC 9110 token characters, stored lower-case.
fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty() && name.bytes().all(is_token_byte);
    if !valid {
        return Err(ConfigError::new(
            path,
            format!("{name:?} is not a valid header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn non_empty(path: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(())
}

fn positive(
    path: &str,
    value: Option<ConfigDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let duration = value.map_or(default, |d| d.0);
    if duration.is_zero() {
        return Err(ConfigError::new(path, "must be more than zero"));
    }
    Ok(duration)
}

#[derive(Default)]
struct Builder {
    provider_names: Vec<String>,
    policy_names: Vec<String>,
}

impl Builder {
    fn build(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        self.provider_names = raw.providers.keys().cloned().collect();
        self.policy_names = raw.rate_limits.keys().cloned().collect();

        let providers = raw
            .providers
            .iter()
            .map(|(name, provider)| build_provider(name, provider))
            .collect::<Result<Vec<_>, _>>()?;
        let rate_limits = raw
            .rate_limits
            .iter()
            .map(|(name, policy)| build_rate_limit(name, policy))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        let mut authz = Authorization {
            bypass_cors_preflight: raw.bypass_cors_preflight,
            ..Authorization::default()
        };
        for (index, rule) in raw.rules.iter().enumerate() {
            if let Some(earlier) = raw
                .rules
                .iter()
                .take(index)
                .position(|r| r.name == rule.name)
            {
                return Err(ConfigError::new(
                    format!("rules[{index}].name"),
                    format!("{:?} is already the name of rules[{earlier}]", rule.name),
                ));
            }
            match self.build_rule(&format!("rules[{index}]"), rule)? {
                Built::Allow(rule) => rules.push(rule),
                Built::Deny(rule) => authz.deny.push(rule),
                Built::Audit(rule) => authz.audit.push(rule),
            }
        }
        let unmatched = match raw.unmatched.as_deref() {
            None | Some("deny") => Unmatched::Deny,
            Some("allow") => Unmatched::Allow,
            Some(other) => {
                return Err(ConfigError::new(
                    "unmatched",
                    format!("{other:?} is not \"deny\" or \"allow\""),
                ))
            }
        };
        let mut access_log = build_access_log(raw.access_log.as_ref())?;
        // Credentials are never logged, whatever `request_headers` lists: the fixed credential
        // headers, and every header a provider reads a token from or writes its payload to.
        access_log.request_headers.retain(|name| {
            !crate::accesslog::is_secret(name)
                && !providers.iter().any(|provider| {
                    provider.locations.headers.iter().any(|h| h.name == *name)
                        || provider.forward_payload_header.as_deref() == Some(name.as_str())
                })
        });

        let mut output_headers: Vec<String> = Vec::new();
        for provider in &providers {
            let written = provider
                .claim_to_headers
                .iter()
                .map(|c| &c.header_name)
                .chain(provider.forward_payload_header.as_ref());
            for header in written {
                if !output_headers.contains(header) {
                    output_headers.push(header.clone());
                }
            }
        }
        let direct_peer_header = raw
            .direct_peer_header
            .as_deref()
            .map(|name| header_name("direct_peer_header", name))
            .transpose()?;
        let mut reads = request_reads(&providers, &rules, &authz, &rate_limits);
        if let (true, Some(name)) = (reads.direct_ip, &direct_peer_header) {
            if !reads.headers.contains(name) {
                reads.headers.push(name.clone());
            }
        }
        Ok(Config {
            providers,
            rate_limits,
            rules,
            authz,
            direct_peer_header,
            unmatched,
            access_log,
            output_headers,
            reads,
        })
    }

    fn build_rule(&self, path: &str, raw: &RawRule) -> Result<Built, ConfigError> {
        non_empty(&format!("{path}.name"), &raw.name)?;
        let matcher = build_match(&format!("{path}.match"), &raw.matcher)?;
        let when = conditions::build_when(&format!("{path}.when"), raw.when.as_deref())?;
        let action = raw.action.as_deref().unwrap_or("allow");
        if !matches!(action, "allow" | "deny" | "audit") {
            return Err(ConfigError::new(
                format!("{path}.action"),
                format!("{action:?} is not \"allow\", \"deny\" or \"audit\""),
            ));
        }
        if action != "allow" {
            // Deny and audit rules judge; they never choose authentication or rate limits.
            let set = [
                ("requires", raw.requires.is_some()),
                ("allow_unauthenticated", raw.allow_unauthenticated),
                ("allow_missing", raw.allow_missing),
                ("rate_limits", !raw.rate_limits.is_empty()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("only an allow rule has {field}; a {action} rule judges requests another rule authenticates"),
                ));
            }
            let rule = PolicyRule {
                name: raw.name.clone(),
                matcher,
                when,
                dry_run: raw.dry_run,
            };
            return match action {
                "deny" => Ok(Built::Deny(rule)),
                "audit" if raw.dry_run => Err(ConfigError::new(
                    format!("{path}.dry_run"),
                    "an audit rule never refuses, so it has no dry run",
                )),
                _ => Ok(Built::Audit(rule)),
            };
        }
        let access = match (&raw.requires, raw.allow_unauthenticated) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    path,
                    "set either requires or allow_unauthenticated, not both",
                ))
            }
            (None, false) => {
                return Err(ConfigError::new(
                    path,
                    "set requires (a provider, {\"any\": [...]} or {\"all\": [...]}) or \"allow_unauthenticated\": true",
                ))
            }
            (None, true) => {
                if raw.allow_missing {
                    return Err(ConfigError::new(
                        format!("{path}.allow_missing"),
                        "only applies to a rule with requires",
                    ));
                }
                // Such a rule verifies no token, so a condition on one could never hold.
                if let Some(condition) = first_reading_token(&when) {
                    return Err(ConfigError::new(
                        condition.label.split(':').next().unwrap_or(path),
                        "reads the token, but the rule is allow_unauthenticated: use requires with allow_missing to read a token when there is one",
                    ));
                }
                Access::AllowUnauthenticated
            }
            (Some(requires), false) => {
                let mut requirement = self.build_requirement(&format!("{path}.requires"), requires)?;
                requirement.allow_missing |= raw.allow_missing;
                Access::Requires(requirement)
            }
        };
        let rate_limits = raw
            .rate_limits
            .iter()
            .enumerate()
            .map(|(i, name)| {
                self.policy_names
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{path}.rate_limits[{i}]"),
                            format!("rate limit {name:?} is not defined in rate_limits"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Built::Allow(Rule {
            name: raw.name.clone(),
            matcher,
            access,
            rate_limits,
            when,
            dry_run: raw.dry_run,
        }))
    }

    fn build_requirement(&self, path: &str, raw: &Value) -> Result<Requirement, ConfigError> {
        match raw {
            Value::String(name) => {
                let index = self
                    .provider_names
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| {
                        ConfigError::new(
                            path,
                            format!("provider {name:?} is not defined in providers"),
                        )
                    })?;
                Ok(Requirement {
                    kind: RequirementKind::Provider(index),
                    allow_missing: false,
                })
            }
            Value::Object(members) => {
                let mut kind = None;
                let mut allow_missing = false;
                for (member, value) in members {
                    let member_path = format!("{path}.{member}");
                    match member.as_str() {
                        "any" | "all" => {
                            if kind.is_some() {
                                return Err(ConfigError::new(
                                    path,
                                    "set either any or all, not both",
                                ));
                            }
                            let items = value.as_array().ok_or_else(|| {
                                ConfigError::new(&member_path, "must be a list of requirements")
                            })?;
                            if items.is_empty() {
                                return Err(ConfigError::new(&member_path, "must not be empty"));
                            }
                            let children = items
                                .iter()
                                .enumerate()
                                .map(|(i, item)| {
                                    self.build_requirement(&format!("{member_path}[{i}]"), item)
                                })
                                .collect::<Result<Vec<_>, _>>()?;
                            kind = Some(if member == "any" {
                                RequirementKind::Any(children)
                            } else {
                                RequirementKind::All(children)
                            });
                        }
                        "allow_missing" => {
                            allow_missing = value.as_bool().ok_or_else(|| {
                                ConfigError::new(&member_path, "must be true or false")
                            })?;
                        }
                        other => {
                            return Err(ConfigError::new(
                                &member_path,
                                format!(
                                "unknown field `{other}`, expected `any`, `all` or `allow_missing`"
                            ),
                            ))
                        }
                    }
                }
                let kind = kind.ok_or_else(|| ConfigError::new(path, "needs any or all"))?;
                Ok(Requirement {
                    kind,
                    allow_missing,
                })
            }
            _ => Err(ConfigError::new(
                path,
                "must be a provider name, {\"any\": [...]} or {\"all\": [...]}",
            )),
        }
    }
}

fn first_reading_token(conditions: &[crate::authz::Condition]) -> Option<&crate::authz::Condition> {
    conditions.iter().find(|c| c.reads_token)
}

/// What `build_rule` made of a rule, by action.
enum Built {
    Allow(Rule),
    Deny(PolicyRule),
    Audit(PolicyRule),
}

/// RFC 9110 token characters (header names).
pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn request_reads(
    providers: &[Provider],
    rules: &[Rule],
    authz: &Authorization,
    rate_limits: &[RateLimitPolicy],
) -> RequestReads {
    let mut headers: Vec<String> = Vec::new();
    let mut conditions = ConditionReads::default();
    let matchers = rules.iter().map(|r| (&r.matcher, r.when.as_slice())).chain(
        authz
            .deny
            .iter()
            .chain(&authz.audit)
            .map(|r| (&r.matcher, r.when.as_slice())),
    );
    for (matcher, when) in matchers {
        crate::authz::collect_reads(when, &mut conditions, &mut headers);
        conditions.method |= !matcher.methods.is_empty() || !matcher.not_methods.is_empty();
        conditions.authority |= !matcher.hosts.is_empty() || !matcher.not_hosts.is_empty();
        conditions.port |= !matcher.ports.is_empty() || !matcher.not_ports.is_empty();
        conditions.path |= matcher.path.is_some()
            || matcher.prefix.is_some()
            || !matcher.paths.is_empty()
            || !matcher.not_paths.is_empty();
        for (name, _) in &matcher.headers {
            if !headers.contains(name) {
                headers.push(name.clone());
            }
        }
    }
    if authz.bypass_cors_preflight {
        conditions.method = true;
        for name in ["origin", "access-control-request-method"] {
            if !headers.iter().any(|h| h == name) {
                headers.push(name.to_owned());
            }
        }
    }
    let mut add = |name: &str| {
        if !headers.iter().any(|h| h == name) {
            headers.push(name.to_owned());
        }
    };
    for provider in providers {
        provider.locations.headers.iter().for_each(|h| add(&h.name));
        if !provider.locations.cookies.is_empty() {
            add("cookie");
        }
    }
    let mut client_ip = false;
    let mut key_path = false;
    for part in rate_limits.iter().flat_map(|p| &p.key) {
        match part {
            KeyPart::Header(name) => add(name),
            KeyPart::ClientIp => client_ip = true,
            KeyPart::Path => key_path = true,
            _ => {}
        }
    }
    RequestReads {
        method: conditions.method,
        authority: conditions.authority,
        client_ip,
        remote_ip: conditions.remote_ip,
        direct_ip: conditions.source_ip,
        port: conditions.port,
        peer: conditions.peer,
        path: conditions.path || key_path || !providers.is_empty(),
        headers,
    }
}

fn build_match(path: &str, raw: &RawMatch) -> Result<RuleMatch, ConfigError> {
    if raw.path.is_some() && raw.prefix.is_some() {
        return Err(ConfigError::new(
            path,
            "set either path or prefix, not both",
        ));
    }
    for (field, value) in [("path", &raw.path), ("prefix", &raw.prefix)] {
        if let Some(value) = value {
            if !value.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("{value:?} must start with /"),
                ));
            }
        }
    }
    let paths = |field: &str, list: &Option<Vec<String>>| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("{path}.{field}[{i}]");
                non_empty(&at, p)?;
                PathPattern::parse(p).map_err(|reason| ConfigError::new(at, reason))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let methods = |field: &str, list: &Option<Vec<String>>| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, m)| {
                non_empty(&format!("{path}.{field}[{i}]"), m)?;
                Ok(m.to_ascii_uppercase())
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let hosts = |field: &str, list: &Option<Vec<String>>| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, h)| {
                non_empty(&format!("{path}.{field}[{i}]"), h)?;
                // Matched as Envoy names hosts: no case, no port, no trailing dot
                // (`rules::host_matches`).
                let host = h.to_ascii_lowercase();
                Ok(TextPattern::parse(host.strip_suffix('.').unwrap_or(&host)))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let headers = raw
        .headers
        .iter()
        .flatten()
        .map(|(name, value)| {
            Ok((
                header_name(&format!("{path}.headers.{name}"), name)?,
                value.clone(),
            ))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(RuleMatch {
        path: raw.path.clone(),
        prefix: raw.prefix.clone(),
        paths: paths("paths", &raw.paths)?,
        not_paths: paths("not_paths", &raw.not_paths)?,
        methods: methods("methods", &raw.methods)?,
        not_methods: methods("not_methods", &raw.not_methods)?,
        hosts: hosts("hosts", &raw.hosts)?,
        not_hosts: hosts("not_hosts", &raw.not_hosts)?,
        ports: raw.ports.clone().unwrap_or_default(),
        not_ports: raw.not_ports.clone().unwrap_or_default(),
        headers,
    })
}

fn build_provider(name: &str, raw: &RawProvider) -> Result<Provider, ConfigError> {
    let path = format!("providers.{name}");
    non_empty(&format!("{path}.issuer"), &raw.issuer)?;
    for (i, audience) in raw.audiences.iter().enumerate() {
        non_empty(&format!("{path}.audiences[{i}]"), audience)?;
    }
    let keys = match (&raw.local_jwks, &raw.remote_jwks) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                &path,
                "set either local_jwks or remote_jwks, not both",
            ))
        }
        (None, None) => return Err(ConfigError::new(&path, "needs local_jwks or remote_jwks")),
        (Some(local), None) => {
            let parsed =
                parse_jwks(local.inline.as_bytes(), SymmetricKeys::Allowed).map_err(|err| {
                    ConfigError::new(format!("{path}.local_jwks.inline"), err.to_string())
                })?;
            KeySource::Local(parsed.keys)
        }
        (None, Some(remote)) => {
            KeySource::Remote(build_remote_jwks(&format!("{path}.remote_jwks"), remote)?)
        }
    };
    let algorithms = match &raw.algorithms {
        None => Algorithm::ALL.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new(format!("{path}.algorithms"), "must not be empty"))
        }
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Algorithm::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.algorithms[{i}]"),
                        format!("{name:?} is not a supported algorithm (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if let KeySource::Local(set) = &keys {
        check_local_keys_fit(&path, set, &algorithms, raw.algorithms.is_some())?;
    }
    if raw.algorithms.is_some() {
        if let KeySource::Remote(_) = keys {
            if let Some(i) = algorithms
                .iter()
                .position(|a| a.key_family() == crate::auth::alg::KeyFamily::Oct)
            {
                return Err(ConfigError::new(
                    format!("{path}.algorithms[{i}]"),
                    "HMAC algorithms need an oct key in local_jwks; remote sets never supply one",
                ));
            }
        }
    }

    let explicit =
        raw.from_headers.is_some() || raw.from_params.is_some() || raw.from_cookies.is_some();
    let locations = if explicit {
        let headers = raw
            .from_headers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, h)| {
                Ok(HeaderLocation {
                    name: header_name(&format!("{path}.from_headers[{i}].name"), &h.name)?,
                    value_prefix: h.value_prefix.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let params = named_list(&format!("{path}.from_params"), raw.from_params.as_deref())?;
        let cookies = named_list(&format!("{path}.from_cookies"), raw.from_cookies.as_deref())?;
        if headers.is_empty() && params.is_empty() && cookies.is_empty() {
            return Err(ConfigError::new(&path, "from_headers, from_params and from_cookies are all empty: no token could ever be found"));
        }
        TokenLocations {
            headers,
            params,
            cookies,
        }
    } else {
        // Envoy jwt_authn's defaults.
        TokenLocations {
            headers: vec![HeaderLocation {
                name: "authorization".into(),
                value_prefix: "Bearer ".into(),
            }],
            params: vec!["access_token".into()],
            cookies: Vec::new(),
        }
    };

    let claim_to_headers = raw
        .claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            non_empty(
                &format!("{path}.claim_to_headers[{i}].claim_name"),
                &c.claim_name,
            )?;
            Ok(ClaimToHeader {
                claim_name: c.claim_name.clone(),
                header_name: header_name(
                    &format!("{path}.claim_to_headers[{i}].header_name"),
                    &c.header_name,
                )?,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let forward_payload_header = raw
        .forward_payload_header
        .as_deref()
        .map(|h| header_name(&format!("{path}.forward_payload_header"), h))
        .transpose()?;
    let clock_skew = raw.clock_skew.map_or(DEFAULT_CLOCK_SKEW, |d| d.0);

    Ok(Provider {
        name: name.to_owned(),
        issuer: raw.issuer.clone(),
        audiences: raw.audiences.clone(),
        keys,
        locations,
        forward: raw.forward,
        forward_payload_header,
        claim_to_headers,
        clock_skew,
        algorithms,
        require_expiration: raw.require_expiration,
        space_delimited_claims: named_list(
            &format!("{path}.space_delimited_claims"),
            Some(&raw.space_delimited_claims),
        )?,
    })
}

fn check_local_keys_fit(
    path: &str,
    set: &KeySet,
    algorithms: &[Algorithm],
    explicit: bool,
) -> Result<(), ConfigError> {
    if !set
        .keys
        .iter()
        .any(|key| algorithms.iter().any(|alg| key.fits(*alg)))
    {
        let what = if explicit {
            "the algorithms listed"
        } else {
            "any supported algorithm"
        };
        return Err(ConfigError::new(
            format!("{path}.local_jwks.inline"),
            format!("no key fits {what} (HMAC keys must be at least as long as the hash)"),
        ));
    }
    Ok(())
}

fn named_list(path: &str, names: Option<&[String]>) -> Result<Vec<String>, ConfigError> {
    names
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            non_empty(&format!("{path}[{i}]"), name)?;
            Ok(name.clone())
        })
        .collect()
}

fn build_remote_jwks(path: &str, raw: &RawRemoteJwks) -> Result<RemoteJwks, ConfigError> {
    non_empty(&format!("{path}.cluster"), &raw.cluster)?;
    let uri_path = format!("{path}.uri");
    let rest = raw
        .uri
        .strip_prefix("https://")
        .or_else(|| raw.uri.strip_prefix("http://"))
        .ok_or_else(|| {
            ConfigError::new(
                &uri_path,
                format!("{:?} must start with http:// or https://", raw.uri),
            )
        })?;
    let (authority, request_path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(ConfigError::new(
            &uri_path,
            format!("{:?} has no valid host", raw.uri),
        ));
    }
    Ok(RemoteJwks {
        cluster: raw.cluster.clone(),
        uri: raw.uri.clone(),
        authority: authority.to_owned(),
        path: request_path.to_owned(),
        timeout: positive(
            &format!("{path}.timeout"),
            raw.timeout,
            DEFAULT_JWKS_TIMEOUT,
        )?,
        cache_duration: positive(
            &format!("{path}.cache_duration"),
            raw.cache_duration,
            DEFAULT_JWKS_CACHE_DURATION,
        )?,
    })
}

fn build_rate_limit(name: &str, raw: &RawRateLimit) -> Result<RateLimitPolicy, ConfigError> {
    let path = format!("rate_limits.{name}");
    let key_path = format!("{path}.key");
    let parts: Vec<(String, &str)> = match &raw.key {
        Value::String(one) => vec![(key_path.clone(), one.as_str())],
        Value::Array(many) if !many.is_empty() => many
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let part_path = format!("{key_path}[{i}]");
                part.as_str()
                    .map(|text| (part_path.clone(), text))
                    .ok_or_else(|| ConfigError::new(part_path, "must be a string"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Array(_) => return Err(ConfigError::new(key_path, "must not be empty")),
        _ => {
            return Err(ConfigError::new(
                key_path,
                "must be a key part or a list of key parts",
            ))
        }
    };
    let key = parts
        .iter()
        .map(|(part_path, text)| key_part(part_path, text))
        .collect::<Result<Vec<_>, _>>()?;

    let limit = match (&raw.token_bucket, &raw.service) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                &path,
                "set either token_bucket or service, not both",
            ))
        }
        (None, None) => return Err(ConfigError::new(&path, "needs token_bucket or service")),
        (Some(bucket), None) => {
            let bucket_path = format!("{path}.token_bucket");
            if bucket.max_tokens == 0 {
                return Err(ConfigError::new(
                    format!("{bucket_path}.max_tokens"),
                    "must be at least 1",
                ));
            }
            if bucket.tokens_per_fill == 0 {
                return Err(ConfigError::new(
                    format!("{bucket_path}.tokens_per_fill"),
                    "must be at least 1",
                ));
            }
            Limit::Local(TokenBucket {
                max_tokens: bucket.max_tokens,
                tokens_per_fill: bucket.tokens_per_fill,
                fill_interval: positive(
                    &format!("{bucket_path}.fill_interval"),
                    Some(bucket.fill_interval),
                    Duration::ZERO,
                )?,
            })
        }
        (None, Some(service)) => {
            let service_path = format!("{path}.service");
            non_empty(&format!("{service_path}.cluster"), &service.cluster)?;
            non_empty(&format!("{service_path}.domain"), &service.domain)?;
            Limit::Service(RateLimitService {
                cluster: service.cluster.clone(),
                domain: service.domain.clone(),
                timeout: positive(
                    &format!("{service_path}.timeout"),
                    service.timeout,
                    DEFAULT_RLS_TIMEOUT,
                )?,
                failure_mode_deny: service.failure_mode_deny,
            })
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("reject") => {
            if raw.max_delay.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.max_delay"),
                    "only applies to mode \"delay\"",
                ));
            }
            LimitMode::Reject
        }
        Some("delay") => {
            if matches!(limit, Limit::Service(_)) {
                return Err(ConfigError::new(
                    format!("{path}.mode"),
                    "\"delay\" needs a local token_bucket, not a service",
                ));
            }
            let max_delay = raw
                .max_delay
                .ok_or_else(|| ConfigError::new(&path, "mode \"delay\" needs max_delay"))?;
            LimitMode::Delay {
                max_delay: positive(
                    &format!("{path}.max_delay"),
                    Some(max_delay),
                    Duration::ZERO,
                )?,
            }
        }
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.mode"),
                format!("{other:?} is not \"reject\" or \"delay\""),
            ))
        }
    };
    Ok(RateLimitPolicy {
        name: name.to_owned(),
        key,
        limit,
        mode,
        shadow: raw.shadow,
        headers_on_allowed: raw.enable_ratelimit_headers,
    })
}

fn key_part(path: &str, text: &str) -> Result<KeyPart, ConfigError> {
    let named = |prefix: &str| -> Option<Result<String, ConfigError>> {
        text.strip_prefix(prefix).map(|rest| {
            if rest.is_empty() {
                Err(ConfigError::new(
                    path,
                    format!("{text:?} needs a name after {prefix:?}"),
                ))
            } else {
                Ok(rest.to_owned())
            }
        })
    };
    match text {
        "client_ip" => return Ok(KeyPart::ClientIp),
        "rule" => return Ok(KeyPart::Rule),
        "path" => return Ok(KeyPart::Path),
        _ => {}
    }
    if let Some(name) = named("header:") {
        return Ok(KeyPart::Header(header_name(path, &name?)?));
    }
    if let Some(name) = named("claim:") {
        return Ok(KeyPart::Claim(name?));
    }
    if let Some(literal) = named("const:") {
        return Ok(KeyPart::Const(literal?));
    }
    Err(ConfigError::new(
        path,
        format!("{text:?} is not a key part (client_ip, header:<name>, claim:<name>, rule, path, const:<text>)"),
    ))
}

fn build_access_log(raw: Option<&RawAccessLog>) -> Result<AccessLog, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AccessLog {
            enabled: true,
            filter_state: true,
            byte_counts: true,
            sample_rate: 1.0,
            request_headers: Vec::new(),
        });
    };
    let sample_rate = raw.sample_rate.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(ConfigError::new(
            "access_log.sample_rate",
            format!("{sample_rate} is not between 0 and 1"),
        ));
    }
    let request_headers = raw
        .request_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_name(&format!("access_log.request_headers[{i}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AccessLog {
        enabled: raw.enabled.unwrap_or(true),
        filter_state: raw.filter_state.unwrap_or(true),
        byte_counts: raw.byte_counts.unwrap_or(true),
        sample_rate,
        request_headers,
    })
}
