//! `meshguard import`: Istio `RequestAuthentication` and `AuthorizationPolicy` objects, taken as
//! the policies of one workload, → the meshguard pluginConfig that decides the same way
//! (/work/authz-spec.md, "Mapping Istio onto this"). Where Istio's documentation and istiod
//! differ, istiod's compiled output is followed; each decision names the istiod file it copies.
//!
//! Whatever would change an allow/deny answer and has no meshguard form is refused, with the
//! file, the document and the field's path. Objects of other API groups are skipped with a note.

mod istio;
mod output;
mod providers;
mod rules;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use istio::{AuthorizationPolicySpec, Manifest, RequestAuthenticationSpec, Selector};
pub use output::PluginConfig;
use output::{never, Cond, Rule};

/// The rule that authenticates every request and carries the ALLOW policies.
const ALLOW_RULE: &str = "istio";
/// The dry-run deny rule that records what the dry-run ALLOW policies would refuse.
const DRY_RUN_ALLOW_RULE: &str = "istio-dry-run-allow";
/// istio.io/dry-run (istio/api annotation; builder.go `isDryRun`).
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// For objects without `metadata.namespace` (as `kubectl apply -n` would place them).
    pub namespace: Option<String>,
    /// JWKS host → Envoy cluster, instead of istiod's `outbound|<port>||<host>`.
    pub jwks_clusters: BTreeMap<String, String>,
}

/// One input: its name for messages (`policies.yaml`, `<stdin>`) and its bytes.
pub struct InputFile<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

/// The translation, with what the user should read on stderr.
#[derive(Debug)]
pub struct Imported {
    pub config: PluginConfig,
    pub notes: Vec<String>,
    /// The namespace every object (or `--namespace`) names, for a WasmPlugin.
    pub namespace: Option<String>,
    /// The workload selector every object names, for a WasmPlugin.
    pub selector: Option<BTreeMap<String, String>>,
}

/// Translates every Istio security object in `files`; `Err` holds every refusal, each a line.
pub fn import(files: &[InputFile], options: &Options) -> Result<Imported, Vec<String>> {
    let mut state = State {
        options,
        errors: Vec::new(),
        notes: Vec::new(),
        seen: 0,
        providers: BTreeMap::new(),
        provider_order: Vec::new(),
        policies: Vec::new(),
        namespaces: Vec::new(),
        selectors: Vec::new(),
        targeted: false,
    };
    for file in files {
        match documents(file.bytes) {
            Ok(documents) => {
                for (label, document) in documents {
                    state.object(file.name, &label, &document);
                }
            }
            Err(reason) => state.errors.push(format!("{}: {reason}", file.name)),
        }
    }
    if state.errors.is_empty() && state.seen == 0 {
        state
            .errors
            .push("found no RequestAuthentication or AuthorizationPolicy to import".into());
    }
    if !state.errors.is_empty() {
        return Err(state.errors);
    }
    Ok(state.finish())
}

/// The documents of one file: JSON (one object) or YAML (`---`-separated); a `List`'s items
/// stand for themselves. Each comes with its label for messages.
fn documents(bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    if let Ok(document) = serde_json::from_slice::<Value>(bytes) {
        push_document(&mut out, "document 1".into(), document);
        return Ok(out);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    for (index, yaml) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", index + 1);
        // The parser cannot resynchronise after a syntax error: stop at the first.
        let document = Value::deserialize(yaml).map_err(|e| format!("{label}: not YAML: {e}"))?;
        push_document(&mut out, label, document);
    }
    Ok(out)
}

fn push_document(out: &mut Vec<(String, Value)>, label: String, document: Value) {
    let is_list = document
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind.ends_with("List"));
    match document.get("items").and_then(Value::as_array) {
        Some(items) if is_list => {
            for (i, item) in items.iter().enumerate() {
                out.push((format!("{label}, items[{i}]"), item.clone()));
            }
        }
        _ if document.is_null() => {} // an empty document, as after a trailing `---`
        _ => out.push((label, document)),
    }
}

struct State<'a> {
    options: &'a Options,
    errors: Vec<String>,
    notes: Vec<String>,
    /// Istio security objects read (refused ones included).
    seen: usize,
    providers: BTreeMap<String, output::Provider>,
    /// Provider names in the order their jwtRules came.
    provider_order: Vec<String>,
    policies: Vec<Policy>,
    namespaces: Vec<Option<String>>,
    /// The selectors objects name (one without a selector covers the whole namespace).
    selectors: Vec<Selector>,
    targeted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

struct Policy {
    name: String,
    action: Action,
    dry_run: bool,
    condition: Cond,
}

/// Where a message points: `file: document 2 (AuthorizationPolicy ns/name)`.
struct Place {
    prefix: String,
}

impl Place {
    fn at(&self, path: &str, reason: &str) -> String {
        if path.is_empty() {
            format!("{}: {reason}", self.prefix)
        } else {
            format!("{}: {path}: {reason}", self.prefix)
        }
    }
}

impl State<'_> {
    fn object(&mut self, file: &str, label: &str, document: &Value) {
        let api_version = document.get("apiVersion").and_then(Value::as_str);
        let kind = document.get("kind").and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            self.errors.push(format!(
                "{file}: {label}: not a Kubernetes object (it needs apiVersion and kind)"
            ));
            return;
        };
        let name = document
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let namespace = document
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .or(self.options.namespace.as_deref());
        let qualified = namespace.map_or(name.to_string(), |ns| format!("{ns}/{name}"));
        let place = Place {
            prefix: format!("{file}: {label} ({kind} {qualified})"),
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        if group != "security.istio.io" {
            self.notes.push(format!(
                "{file}: {label}: skipped {kind} {qualified}: not an Istio security policy"
            ));
            return;
        }
        self.seen += 1;
        if version != "v1" && version != "v1beta1" {
            self.errors.push(place.at(
                "apiVersion",
                &format!("{api_version:?} is not security.istio.io/v1 or v1beta1"),
            ));
            return;
        }
        match kind {
            "AuthorizationPolicy" => {
                if let Some(manifest) = self.typed::<AuthorizationPolicySpec>(&place, document) {
                    self.authorization_policy(&place, manifest);
                }
            }
            "RequestAuthentication" => {
                if let Some(manifest) = self.typed::<RequestAuthenticationSpec>(&place, document) {
                    self.request_authentication(&place, manifest);
                }
            }
            // PeerAuthentication (mTLS modes) and anything newer decide who may connect at all;
            // meshguard runs inside the connection and cannot take that over.
            other => self.errors.push(place.at(
                "kind",
                &format!("{other} cannot be imported: meshguard import reads RequestAuthentication and AuthorizationPolicy"),
            )),
        }
    }

    fn typed<S: DeserializeOwned>(
        &mut self,
        place: &Place,
        document: &Value,
    ) -> Option<Manifest<S>> {
        match serde_path_to_error::deserialize::<_, Manifest<S>>(document.clone()) {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                // The path names an unknown field itself (`spec.rules[0].foo`).
                let path = error.path().to_string();
                let reason = error.inner().to_string();
                let path = if path == "." { String::new() } else { path };
                self.errors.push(place.at(&path, &reason));
                None
            }
        }
    }

    fn scope(
        &mut self,
        metadata: &istio::Metadata,
        selector: Option<&Selector>,
        targeted: bool,
    ) -> Option<String> {
        let namespace = metadata
            .namespace
            .clone()
            .or(self.options.namespace.clone());
        self.namespaces.push(namespace.clone());
        self.selectors.extend(selector.cloned());
        self.targeted |= targeted;
        namespace
    }

    fn request_authentication(
        &mut self,
        place: &Place,
        manifest: Manifest<RequestAuthenticationSpec>,
    ) {
        let spec = manifest.spec.unwrap_or_default();
        let targeted = spec.target_ref.is_some() || spec.target_refs.is_some();
        self.scope(&manifest.metadata, spec.selector.as_ref(), targeted);
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            let path = format!("spec.jwtRules[{i}]");
            let provider = match providers::provider(rule, &self.options.jwks_clusters) {
                Ok(provider) => provider,
                Err((field, reason)) => {
                    self.errors
                        .push(place.at(&format!("{path}.{field}"), &reason));
                    continue;
                }
            };
            // istiod does not merge jwtRules with the same issuer (policy_applier.go, TODO for
            // istio/istio#19245): each is a provider and a token passes if any accepts it. Two
            // identical rules decide as one; different ones stay two providers, as in Istio.
            if let Some((existing, _)) = self.providers.iter().find(|(_, p)| **p == provider) {
                self.notes
                    .push(place.at(&path, &format!("the same as provider {existing:?}: merged")));
                continue;
            }
            if let Some((existing, _)) = self
                .providers
                .iter()
                .find(|(_, p)| p.issuer == provider.issuer)
            {
                self.notes.push(place.at(
                    &path,
                    &format!("same issuer as provider {existing:?} but other settings: kept as a second provider, as istiod does (a token passes if either accepts it)"),
                ));
            }
            let base = providers::base_name(&provider.issuer);
            let name = (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|candidate| !self.providers.contains_key(candidate))
                .unwrap_or(base);
            self.provider_order.push(name.clone());
            self.providers.insert(name, provider);
        }
    }

    fn authorization_policy(&mut self, place: &Place, manifest: Manifest<AuthorizationPolicySpec>) {
        let metadata = manifest.metadata;
        let spec = manifest.spec.unwrap_or_default();
        let targeted = spec.target_ref.is_some() || spec.target_refs.is_some();
        let namespace = self.scope(&metadata, spec.selector.as_ref(), targeted);
        let action = match spec.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => {
                let provider = spec.provider.as_ref().map_or("", |p| p.name.as_str());
                self.errors.push(place.at(
                    "spec.action",
                    &format!("CUSTOM hands the decision to the external authorizer {provider:?}, which meshguard cannot call"),
                ));
                return;
            }
            other => {
                self.errors.push(place.at(
                    "spec.action",
                    &format!("{other:?} is not ALLOW, DENY, AUDIT or CUSTOM"),
                ));
                return;
            }
        };
        if spec.provider.is_some() {
            self.errors.push(place.at(
                "spec.provider",
                "is only for the CUSTOM action (istiod refuses it)",
            ));
            return;
        }
        let dry_run = match metadata.annotations.get(DRY_RUN_ANNOTATION) {
            None => false,
            Some(value) => match go_parse_bool(value) {
                Some(dry_run) => dry_run,
                None => {
                    // istiod logs the error and enforces the policy: say so rather than guess.
                    self.errors.push(place.at(
                        &format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                        &format!("{value:?} is not a boolean (istiod would enforce the policy): write \"true\" or \"false\""),
                    ));
                    return;
                }
            },
        };
        let rules = spec.rules.unwrap_or_default();
        if matches!(action, Action::Deny) && rules.is_empty() {
            self.errors.push(place.at(
                "spec.rules",
                "a DENY policy without rules is refused by istiod (it would never match): add a rule {} to deny every request",
            ));
            return;
        }
        let mut cx = rules::Context {
            namespace: namespace.as_deref(),
        };
        let mut any = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match rules::rule_condition(rule, &mut cx) {
                Ok(condition) => any.push(condition),
                Err((path, reason)) => {
                    let path = if path.is_empty() {
                        format!("spec.rules[{i}]")
                    } else if path.starts_with('[') {
                        format!("spec.rules[{i}]{path}")
                    } else {
                        format!("spec.rules[{i}].{path}")
                    };
                    self.errors.push(place.at(&path, &reason));
                    return;
                }
            }
        }
        let name = match &namespace {
            Some(ns) => format!("{ns}.{}", metadata.name.as_deref().unwrap_or("unnamed")),
            None => metadata.name.clone().unwrap_or_else(|| "unnamed".into()),
        };
        if self.policies.iter().any(|p| p.name == name)
            || name == ALLOW_RULE
            || name == DRY_RUN_ALLOW_RULE
        {
            self.errors.push(place.at(
                "metadata.name",
                &format!("{name:?} is the name of another policy or of a rule the import writes"),
            ));
            return;
        }
        if matches!(action, Action::Audit) && dry_run {
            // builder.go puts it in the LOG filter's shadow rules: it marks nothing for audit.
            self.notes.push(place.at(
                "",
                "skipped: a dry-run AUDIT policy audits nothing in Istio",
            ));
            return;
        }
        // builder.go: a policy without rules gets `rbacPolicyMatchNever`.
        let condition = Cond::any(any);
        self.policies.push(Policy {
            name,
            action,
            dry_run,
            condition,
        });
    }

    fn of(&self, action: Action, dry_run: bool) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.action == action && p.dry_run == dry_run)
            .collect()
    }

    fn finish(self) -> Imported {
        let mut rules = Vec::new();
        // The DENY filter evaluates its shadow (dry-run) rules before enforcing (Envoy RBAC).
        for dry_run in [true, false] {
            rules.extend(
                self.of(Action::Deny, dry_run)
                    .into_iter()
                    .filter_map(|p| Rule::judging(p.name.clone(), "deny", &p.condition, dry_run)),
            );
        }
        // builder.go: dry-run ALLOW policies form one shadow ALLOW engine, which "denies" when
        // none of their rules matches: one dry-run deny rule for all of them.
        let shadow = self.of(Action::Allow, true);
        if !shadow.is_empty() {
            let allowed = Cond::any(shadow.iter().map(|p| p.condition.clone()).collect());
            rules.extend(Rule::judging(
                DRY_RUN_ALLOW_RULE.into(),
                "deny",
                &Cond::not(allowed),
                true,
            ));
        }
        rules.extend(
            self.of(Action::Audit, false)
                .into_iter()
                .filter_map(|p| Rule::judging(p.name.clone(), "audit", &p.condition, false)),
        );
        // No enforced ALLOW policy: every request passes the ALLOW step (builder.go builds no
        // enforcing ALLOW rules; RBAC without rules allows).
        let enforced = self.of(Action::Allow, false);
        let authenticated = !self.provider_order.is_empty();
        let when = if enforced.is_empty() {
            Vec::new()
        } else {
            let any = Cond::any(enforced.iter().map(|p| p.condition.clone()).collect());
            // Without a RequestAuthentication no token is ever verified: istiod's matchers on
            // the JWT payload never match. meshguard refuses a token condition on a rule that
            // authenticates nothing, so write what it would come to.
            let any = if authenticated {
                any
            } else {
                any.without_token()
            };
            match any {
                Cond::False => vec![never()],
                condition => condition.when_list(),
            }
        };
        // Istio's jwt_authn: `requires_any` of every provider and `allow_missing`
        // (policy_applier.go): no token passes, a bad one is 401, the policies judge the rest.
        // `bypass_cors_preflight` (which istiod also sets) is left out: it only reaches
        // jwt_authn in Istio, while meshguard's would skip the ALLOW policies for preflights.
        rules.push(Rule {
            name: ALLOW_RULE.into(),
            action: None,
            matcher: json!({}),
            requires: authenticated.then(|| json!({"any": self.provider_order})),
            allow_missing: authenticated,
            allow_unauthenticated: !authenticated,
            when,
            dry_run: false,
        });
        let mut notes = self.notes;
        let namespace = common(&self.namespaces).flatten();
        let selector = common(&self.selectors).map(|s| s.match_labels);
        if selector.is_none() && !self.selectors.is_empty() {
            notes.push("the objects select different workloads: they were imported as the policies of one workload".into());
        }
        if self.targeted {
            notes.push("targetRef/targetRefs were ignored: the output applies to whichever workload runs it".into());
        }
        Imported {
            config: PluginConfig {
                providers: self.providers,
                rules,
            },
            notes,
            namespace,
            selector,
        }
    }
}

/// The value every element holds, if there are elements and they all hold the same one.
fn common<T: Clone + PartialEq>(items: &[T]) -> Option<T> {
    let first = items.first()?;
    items
        .iter()
        .all(|item| item == first)
        .then(|| first.clone())
}

/// Go's `strconv.ParseBool`, which istiod reads the dry-run annotation with (builder.go).
fn go_parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The pluginConfig as pretty JSON.
pub fn to_json(imported: &Imported) -> Result<String, String> {
    serde_json::to_string_pretty(&imported.config).map_err(|e| e.to_string())
}

/// A whole Istio `WasmPlugin`, in the shape of the shipped istio/auth.yaml.
pub fn to_wasm_plugin(imported: &Imported, name: &str) -> Result<String, String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct WasmPlugin<'a> {
        api_version: &'static str,
        kind: &'static str,
        metadata: Metadata<'a>,
        spec: Spec<'a>,
    }
    #[derive(Serialize)]
    struct Metadata<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        selector: Option<WorkloadSelector<'a>>,
        url: &'static str,
        fail_strategy: &'static str,
        phase: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
        plugin_config: &'a PluginConfig,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct WorkloadSelector<'a> {
        match_labels: &'a BTreeMap<String, String>,
    }
    let plugin = WasmPlugin {
        api_version: "extensions.istio.io/v1alpha1",
        kind: "WasmPlugin",
        metadata: Metadata {
            name,
            namespace: imported.namespace.as_deref(),
        },
        spec: Spec {
            selector: imported
                .selector
                .as_ref()
                .filter(|labels| !labels.is_empty())
                .map(|match_labels| WorkloadSelector { match_labels }),
            url: "oci://registry.example.com/platform/meshguard:0.1.0",
            // Authorization fails closed: a filter that cannot start must not open the workload.
            fail_strategy: "FAIL_CLOSE",
            phase: "AUTHN",
            kind: "HTTP",
            plugin_config: &imported.config,
        },
    };
    let yaml = serde_yaml_ng::to_string(&plugin).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by `meshguard import`. Before applying: point url at your image (and pin its sha256),\n\
         # and check the selector names the workload the Istio policies applied to.\n{yaml}"
    ))
}
