//! One `AuthorizationPolicy` rule → one meshguard condition, as istiod compiles it to Envoy RBAC
//! (pilot/pkg/security/authz/model/model.go `New`, generator.go): `from` entries OR'ed, `to`
//! entries OR'ed, `when` entries AND'ed, the three AND'ed; in a source or operation the fields
//! AND'ed, each field's values OR'ed and its `not` values a NOT of their OR. A rule `{}` holds.
//!
//! istiod's admission checks (pkg/config/validation/validation.go `ValidateAuthorizationPolicy`,
//! pkg/config/security/security.go) are repeated here: what the cluster would not accept is
//! refused with its path rather than translated into something istiod never runs.

use std::net::IpAddr;

use super::istio::{Condition, Operation, Rule, Source};
use super::output::Cond;

/// A refusal: the path below the rule (`from[0].source.namespaces[1]`) and the reason.
pub type Refusal = (String, String);

pub struct Context<'a> {
    /// The policy's namespace, for `serviceAccounts` values without one.
    pub namespace: Option<&'a str>,
}

pub fn rule_condition(rule: &Rule, cx: &mut Context) -> Result<Cond, Refusal> {
    let from = match &rule.from {
        None => Cond::True,
        Some(list) if list.is_empty() => {
            return Err((
                "from".into(),
                "must not be empty (istiod refuses it)".into(),
            ))
        }
        Some(list) => {
            let mut any = Vec::new();
            for (i, from) in list.iter().enumerate() {
                let path = format!("from[{i}].source");
                let source = from
                    .source
                    .as_ref()
                    .ok_or_else(|| (path.clone(), "must be set (istiod refuses it)".to_string()))?;
                any.push(source_condition(source, cx).map_err(|(p, e)| (join(&path, &p), e))?);
            }
            Cond::any(any)
        }
    };
    let to = match &rule.to {
        None => Cond::True,
        Some(list) if list.is_empty() => {
            return Err(("to".into(), "must not be empty (istiod refuses it)".into()))
        }
        Some(list) => {
            let mut any = Vec::new();
            for (i, to) in list.iter().enumerate() {
                let path = format!("to[{i}].operation");
                let operation = to
                    .operation
                    .as_ref()
                    .ok_or_else(|| (path.clone(), "must be set (istiod refuses it)".to_string()))?;
                any.push(
                    operation_condition(operation, cx).map_err(|(p, e)| (join(&path, &p), e))?,
                );
            }
            Cond::any(any)
        }
    };
    let mut all = vec![from, to];
    for (i, condition) in rule.when.iter().flatten().enumerate() {
        let path = format!("when[{i}]");
        all.push(when_condition(condition, cx).map_err(|(p, e)| (join(&path, &p), e))?);
    }
    Ok(Cond::all(all))
}

fn join(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// How a field's values are checked before they are written as a meshguard key condition.
#[derive(Clone, Copy)]
enum Form {
    /// Istio's string match (matcher/string.go `StringMatcherWithPrefix`, header.go): `*` any,
    /// `x*` prefix, `*x` suffix, else exact — meshguard's forms, except that both ends starred.
    Text,
    /// `namespaces`: istiod turns every `*` into `.*` of a regex (generator.go
    /// `srcNamespaceGenerator`), so only a leading or trailing `*` has a meshguard form.
    Namespace,
    /// `serviceAccounts`: `sa` or `ns/sa`, no wildcards, at most 16 (security.go
    /// `CheckServiceAccount`); istiod fills the policy's namespace in for `sa`
    /// (generator.go `serviceAccountRegex`), so the import writes `ns/sa`.
    ServiceAccount,
    /// An address or CIDR (security.go `ValidateIPs`).
    Ip,
    /// 0–65535 as a string (security.go `ValidatePorts`).
    Port,
    /// `paths`: the string forms, or `{*}`/`{**}` templates (security.go `CheckValidPathTemplate`).
    Path,
    /// `hosts`: the string forms matched without case on `:authority` *with its port*
    /// (matcher/header.go `HostMatcher`).
    Host,
}

fn field(
    cx: &mut Context,
    name: &str,
    key: &str,
    form: Form,
    values: &[String],
    not_values: &[String],
) -> Result<Cond, Refusal> {
    let values = checked(cx, name, form, values)?;
    let not_values = checked(cx, &not_name(name), form, not_values)?;
    Ok(Cond::values_and_not(key, values, not_values))
}

/// `principals` → `notPrincipals`.
fn not_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => format!("not{}{}", first.to_ascii_uppercase(), chars.as_str()),
        None => "not".into(),
    }
}

fn checked(
    cx: &mut Context,
    name: &str,
    form: Form,
    values: &[String],
) -> Result<Vec<String>, Refusal> {
    if matches!(form, Form::ServiceAccount) && values.len() > 16 {
        return Err((
            name.into(),
            "may not have more than 16 values (istiod refuses it)".into(),
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let path = format!("{name}[{i}]");
        if value.is_empty() {
            return Err((path, "is empty (istiod refuses it)".into()));
        }
        let written = match form {
            Form::Text => text(value).map_err(|e| (path, e))?,
            Form::Namespace => namespace(value).map_err(|e| (path, e))?,
            Form::ServiceAccount => service_account(value, cx.namespace).map_err(|e| (path, e))?,
            Form::Ip => ip(value).map_err(|e| (path, e))?,
            Form::Port => port(value).map_err(|e| (path, e))?,
            Form::Path => path_value(value).map_err(|e| (path, e))?,
            // meshguard's `request.host` is istiod's HostMatcher: the authority as sent, port
            // included, case ignored (`example.com:*` is how both say "any port").
            Form::Host => text(value).map_err(|e| (path, e))?,
        };
        out.push(written);
    }
    Ok(out)
}

fn text(value: &str) -> Result<String, String> {
    if value.len() > 1 && value.starts_with('*') && value.ends_with('*') {
        // istiod reads `*x*` as "ends with `x*`" (the first `*` wins); meshguard has no form
        // that says that.
        return Err(format!(
            "{value:?} has a `*` at both ends, which istiod reads as a suffix match on {:?}: meshguard cannot write that",
            value.get(1..).unwrap_or_default()
        ));
    }
    Ok(value.to_string())
}

fn namespace(value: &str) -> Result<String, String> {
    let inner = value.strip_prefix('*').unwrap_or(value);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if value != "*" && (inner.contains('*') || (value.starts_with('*') && value.ends_with('*'))) {
        return Err(format!(
            "{value:?}: istiod turns each `*` of a namespace into a regex `.*`; meshguard matches `*`, `prefix*` and `*suffix` only"
        ));
    }
    Ok(value.to_string())
}

fn service_account(value: &str, namespace: Option<&str>) -> Result<String, String> {
    if value.contains('*') {
        return Err("wildcards are not allowed in serviceAccounts (istiod refuses them)".into());
    }
    match value.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok(value.to_string())
        }
        Some(_) => Err(format!(
            "{value:?} is not `serviceAccount` or `namespace/serviceAccount` (istiod refuses it)"
        )),
        None => match namespace {
            Some(ns) => Ok(format!("{ns}/{value}")),
            None => Err(format!(
                "{value:?} names no namespace and the policy has none: istiod uses the policy's namespace; set metadata.namespace or --namespace"
            )),
        },
    }
}

fn ip(value: &str) -> Result<String, String> {
    let valid = match value.split_once('/') {
        Some((address, bits)) => match (address.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(bits)) => bits <= 32,
            (Ok(IpAddr::V6(_)), Ok(bits)) => bits <= 128,
            _ => false,
        },
        None => value.parse::<IpAddr>().is_ok(),
    };
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not an IP address or CIDR (istiod refuses it)"
        ))
    }
}

fn port(value: &str) -> Result<String, String> {
    match value.parse::<u32>() {
        Ok(port) if port <= 65535 && value.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(value.to_string())
        }
        _ => Err(format!(
            "{value:?} is not a port 0-65535 (istiod refuses it)"
        )),
    }
}

/// Path templates as istiod checks them (security.go `CheckValidPathTemplate`): `{**}` only
/// last, no other braces, and in a template every other segment a plain RFC 3986 `pchar` run.
fn path_value(value: &str) -> Result<String, String> {
    let template = value.contains("{*}") || value.contains("{**}");
    let mut seen_any = false;
    for glob in value.trim_matches('/').split('/') {
        match glob {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "{value:?}: {{**}} is not the last operator (istiod refuses it)"
                ))
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if glob.contains(['{', '}']) {
            return Err(format!(
                "{value:?} has `{{` or `}}` beyond a {{*}} or {{**}} segment (istiod refuses it)"
            ));
        }
        let literal = !glob.is_empty()
            && glob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
        if template && !literal {
            return Err(format!(
                "{value:?} has segment {glob:?}, not a plain literal (istiod refuses it in a template)"
            ));
        }
    }
    if template {
        Ok(value.to_string())
    } else {
        text(value)
    }
}

fn source_condition(source: &Source, cx: &mut Context) -> Result<Cond, Refusal> {
    let s = source;
    let lists = [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    ];
    if lists.iter().all(|l| l.is_empty()) {
        return Err((
            String::new(),
            "must not be empty (istiod refuses it)".into(),
        ));
    }
    let peer =
        s.principals.len() + s.not_principals.len() + s.namespaces.len() + s.not_namespaces.len();
    if peer > 0 && s.service_accounts.len() + s.not_service_accounts.len() > 0 {
        return Err((
            "serviceAccounts".into(),
            "cannot be set with namespaces or principals (istiod refuses it)".into(),
        ));
    }
    Ok(Cond::all(vec![
        // generator.go `srcPrincipalGenerator`: `spiffe://` + the value, `*` = any peer identity.
        field(
            cx,
            "principals",
            "source.principal",
            Form::Text,
            &s.principals,
            &s.not_principals,
        )?,
        // generator.go `requestPrincipalGenerator`: split at the *last* `/` into iss and sub,
        // matched separately; meshguard matches `iss/sub` as one string (see the report).
        field(
            cx,
            "requestPrincipals",
            "request.auth.principal",
            Form::Text,
            &s.request_principals,
            &s.not_request_principals,
        )?,
        field(
            cx,
            "namespaces",
            "source.namespace",
            Form::Namespace,
            &s.namespaces,
            &s.not_namespaces,
        )?,
        field(
            cx,
            "serviceAccounts",
            "source.service_account",
            Form::ServiceAccount,
            &s.service_accounts,
            &s.not_service_accounts,
        )?,
        // generator.go: ipBlocks → RBAC `direct_remote_ip`, remoteIpBlocks → `remote_ip`.
        field(
            cx,
            "ipBlocks",
            "source.ip",
            Form::Ip,
            &s.ip_blocks,
            &s.not_ip_blocks,
        )?,
        field(
            cx,
            "remoteIpBlocks",
            "remote.ip",
            Form::Ip,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        )?,
    ]))
}

fn operation_condition(operation: &Operation, cx: &mut Context) -> Result<Cond, Refusal> {
    let o = operation;
    let lists = [
        &o.hosts,
        &o.not_hosts,
        &o.ports,
        &o.not_ports,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    if lists.iter().all(|l| l.is_empty()) {
        return Err((
            String::new(),
            "must not be empty (istiod refuses it)".into(),
        ));
    }
    Ok(Cond::all(vec![
        field(
            cx,
            "hosts",
            "request.host",
            Form::Host,
            &o.hosts,
            &o.not_hosts,
        )?,
        // generator.go `destPortGenerator`: RBAC `destination_port`.
        field(
            cx,
            "ports",
            "destination.port",
            Form::Port,
            &o.ports,
            &o.not_ports,
        )?,
        // generator.go `methodGenerator`: an exact, case-sensitive `:method` header match.
        field(
            cx,
            "methods",
            "request.method",
            Form::Text,
            &o.methods,
            &o.not_methods,
        )?,
        // generator.go `pathGenerator`: Envoy's path matcher (no query), or a URI template.
        field(
            cx,
            "paths",
            "request.path",
            Form::Path,
            &o.paths,
            &o.not_paths,
        )?,
    ]))
}

/// `when` keys as istiod's model.go `New` dispatches them and security.go `ValidateAttribute`
/// admits them.
fn when_condition(condition: &Condition, cx: &mut Context) -> Result<Cond, Refusal> {
    let key = condition.key.as_str();
    if key.is_empty() {
        return Err(("key".into(), "must not be empty (istiod refuses it)".into()));
    }
    if condition.values.is_empty() && condition.not_values.is_empty() {
        return Err((
            String::new(),
            format!(
                "at least one of values or notValues must be set for {key} (istiod refuses it)"
            ),
        ));
    }
    let unsupported =
        |what: &str| -> Result<Cond, Refusal> { Err(("key".into(), format!("{key:?}: {what}"))) };
    let (written_key, form) = match key {
        "source.ip" | "remote.ip" => (key.to_string(), Form::Ip),
        "source.namespace" => (key.to_string(), Form::Namespace),
        // Istio's key is camelCase; the contract's is snake_case.
        "source.serviceAccount" => ("source.service_account".to_string(), Form::ServiceAccount),
        "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter" => (key.to_string(), Form::Text),
        "destination.port" => (key.to_string(), Form::Port),
        "destination.ip" => return unsupported("meshguard does not read the destination address"),
        "connection.sni" => return unsupported("meshguard does not read the TLS server name"),
        "destination.namespace" | "destination.name" | "destination.user" => {
            return unsupported(
                "istiod refuses it (replaced by the policy's namespace and selector)",
            )
        }
        _ if key.starts_with("destination.labels") => {
            return unsupported("istiod refuses it (replaced by the workload selector)")
        }
        _ if key.starts_with("experimental.envoy.filters.") => {
            return unsupported("meshguard cannot read other filters' Envoy metadata")
        }
        _ if key.starts_with("request.experimental.inline.headers") => {
            return unsupported("meshguard has no match on one element of a comma-separated header")
        }
        _ if key.starts_with("request.headers") => {
            // generator.go `requestHeaderGenerator`: `request.headers[<name>]`, exactly.
            match key
                .strip_prefix("request.headers[")
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|name| !name.is_empty() && !name.contains(['[', ']']))
            {
                Some(name) => (
                    format!("request.headers[{}]", name.to_ascii_lowercase()),
                    Form::Text,
                ),
                None => return unsupported("is not request.headers[<name>] (istiod refuses it)"),
            }
        }
        _ if key.starts_with("request.auth.claims") => {
            // util.go `extractNameInNestedBrackets`: `[a][b]` is the path a → b; a name holding
            // brackets falls back to a reading no one means, so only plain names are taken.
            let path = key.strip_prefix("request.auth.claims").unwrap_or_default();
            if claim_path(path).is_none() {
                return unsupported(
                    "is not request.auth.claims[<claim>] or request.auth.claims[<a>][<b>]...",
                );
            }
            (key.to_string(), Form::Text)
        }
        _ => return unsupported("unknown attribute (istiod refuses it)"),
    };
    let values = checked(cx, "values", form, &condition.values)?;
    let not_values = checked(cx, "notValues", form, &condition.not_values)?;
    Ok(Cond::values_and_not(&written_key, values, not_values))
}

/// `[a][b]` → `["a", "b"]`; `None` unless the text is one or more bracketed, non-empty names.
fn claim_path(text: &str) -> Option<Vec<&str>> {
    let mut names = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = inner.get(..end)?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name);
        rest = inner.get(end + 1..)?;
    }
    (!names.is_empty()).then_some(names)
}
