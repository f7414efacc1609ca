//! `RequestAuthentication.jwtRules[]` → meshguard providers, as istiod builds Envoy's jwt_authn
//! providers (pilot/pkg/security/authn/policy_applier.go, `convertToEnvoyJwtConfig`).

use std::collections::BTreeMap;

use super::istio::JwtRule;
use super::output::{ClaimToHeader, HeaderLocation, LocalJwks, Provider, RemoteJwks};

/// istiod's remote JWKS fetch timeout when `jwtRules[].timeout` is unset (policy_applier.go).
const ISTIO_JWKS_TIMEOUT: &str = "5s";
/// istiod's `RemoteJwks.cache_duration` (policy_applier.go: `Seconds: 5 * 60`).
const ISTIO_JWKS_CACHE_DURATION: &str = "5m";
/// Claims Envoy splits on spaces for every Istio provider, whatever `spaceDelimitedClaims` says
/// (policy_applier.go, `buildSpaceDelimitedClaims`). meshguard splits `scope` (and `scp`) itself.
const ISTIO_SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];
/// Claims meshguard always splits, so listing them again would say nothing.
const MESHGUARD_SPACE_DELIMITED: [&str; 2] = ["scope", "scp"];

/// One jwtRule as a meshguard provider. `Err` is (path below the rule, reason).
pub fn provider(
    rule: &JwtRule,
    clusters: &BTreeMap<String, String>,
) -> Result<Provider, (String, String)> {
    if rule.issuer.is_empty() {
        // istiod accepts an empty issuer with a jwksUri (any issuer then passes); meshguard
        // checks `iss` against the provider's issuer, so it cannot say "any issuer".
        return Err((
            "issuer".into(),
            "is empty: meshguard providers accept one issuer, name it".into(),
        ));
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            return Err((format!("audiences[{i}]"), "is empty".into()));
        }
    }
    let (local_jwks, remote_jwks) = match (rule.jwks.is_empty(), rule.jwks_uri.is_empty()) {
        (false, true) => (
            Some(LocalJwks {
                inline: rule.jwks.clone(),
            }),
            None,
        ),
        (true, false) => (None, Some(remote_jwks(rule, clusters)?)),
        (false, false) => {
            // Which one istiod uses depends on PILOT_JWT_ENABLE_REMOTE_JWKS (policy_applier.go).
            return Err((
                "jwks".into(),
                "and jwksUri are both set; which one Istio uses depends on istiod's \
                 PILOT_JWT_ENABLE_REMOTE_JWKS: keep one"
                    .into(),
            ));
        }
        (true, true) => {
            // istiod would discover the keys from `<issuer>/.well-known/openid-configuration`.
            return Err((
                "jwksUri".into(),
                "is not set (istiod would discover it through the issuer's OpenID \
                 configuration): set jwksUri or jwks"
                    .into(),
            ));
        }
    };
    let from_headers = rule
        .from_headers
        .iter()
        .enumerate()
        .map(|(i, header)| {
            if header.name.is_empty() {
                return Err((format!("fromHeaders[{i}].name"), "is empty".to_string()));
            }
            Ok(HeaderLocation {
                name: header.name.clone(),
                value_prefix: header.prefix.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut space_delimited: Vec<String> = ISTIO_SPACE_DELIMITED
        .iter()
        .map(|s| s.to_string())
        .chain(rule.space_delimited_claims.iter().flatten().cloned())
        .filter(|claim| !MESHGUARD_SPACE_DELIMITED.contains(&claim.as_str()))
        .collect();
    space_delimited.sort();
    space_delimited.dedup();
    Ok(Provider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        local_jwks,
        remote_jwks,
        from_headers,
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: Some(rule.output_payload_to_header.clone())
            .filter(|h| !h.is_empty()),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader {
                claim_name: c.claim.clone(),
                header_name: c.header.clone(),
            })
            .collect(),
        space_delimited_claims: space_delimited,
    })
}

fn remote_jwks(
    rule: &JwtRule,
    clusters: &BTreeMap<String, String>,
) -> Result<RemoteJwks, (String, String)> {
    let (host, port) = jwks_host_port(&rule.jwks_uri).map_err(|e| ("jwksUri".to_string(), e))?;
    // istiod names the cluster of the ServiceEntry for the JWKS host
    // `model.BuildSubsetKey(outbound, "", host, port)` = `outbound|<port>||<host>`.
    let cluster = clusters
        .get(&host)
        .cloned()
        .unwrap_or_else(|| format!("outbound|{port}||{host}"));
    let timeout = match &rule.timeout {
        None => ISTIO_JWKS_TIMEOUT.to_string(),
        Some(text) => proto_duration(text).map_err(|e| ("timeout".to_string(), e))?,
    };
    Ok(RemoteJwks {
        cluster,
        uri: rule.jwks_uri.clone(),
        timeout,
        cache_duration: ISTIO_JWKS_CACHE_DURATION.into(),
    })
}

/// Host and port of a JWKS URI as istiod's `security.ParseJwksURI` reads them
/// (pkg/config/security/security.go): `http` or `https` only; the URI's port, else 80 / 443.
pub fn jwks_host_port(uri: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} is not an http:// or https:// URI"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => {
            return Err(format!(
                "URI scheme {other:?} is not supported (http or https)"
            ))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8443`.
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{uri:?} has an unclosed IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{uri:?} names no host"));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| format!("{uri:?} has an invalid port {port:?}"))?,
    };
    Ok((host.to_string(), port))
}

/// A protobuf JSON duration (`"5s"`, `"0.5s"`, `"1.250s"`) in meshguard's form (`"5s"`,
/// `"500ms"`). Finer than a millisecond cannot be written, so it is refused.
pub fn proto_duration(text: &str) -> Result<String, String> {
    let invalid = || format!("{text:?} is not a duration like \"5s\" or \"0.5s\"");
    let seconds = text.strip_suffix('s').ok_or_else(invalid)?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
    {
        return Err(invalid());
    }
    let whole: u64 = whole.parse().map_err(|_| invalid())?;
    let nanos: u64 = format!("{fraction:0<9}").parse().map_err(|_| invalid())?;
    const NANOS_PER_MILLI: u64 = 1_000_000;
    if nanos == 0 {
        Ok(format!("{whole}s"))
    } else if nanos.is_multiple_of(NANOS_PER_MILLI) {
        let millis = whole
            .checked_mul(1_000)
            .and_then(|ms| ms.checked_add(nanos / NANOS_PER_MILLI))
            .ok_or_else(invalid)?;
        Ok(format!("{millis}ms"))
    } else {
        Err(format!(
            "{text:?} is finer than a millisecond, which meshguard cannot write"
        ))
    }
}

/// A readable provider name from the issuer: its host for a URL (`https://idp.example.com/x` →
/// `idp.example.com`), else the issuer with every character outside `[a-z0-9.-]` made `-`.
pub fn base_name(issuer: &str) -> String {
    let host = issuer
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#', ':']).next().unwrap_or_default())
        .filter(|host| !host.is_empty())
        .unwrap_or(issuer);
    let name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "jwt".to_string()
    } else {
        name.to_string()
    }
}
