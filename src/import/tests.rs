//! The import on the shapes of Istio's own documentation (istio/api `authorization_policy.proto`
//! and `request_authentication.proto` examples, istio.io tasks), checked against the JSON the
//! contract (/work/authz-spec.md) names.

use serde_json::{json, Value};

use super::*;

fn run_with(text: &str, options: &Options) -> Result<(Value, Vec<String>), Vec<String>> {
    let input = InputFile {
        name: "policies.yaml",
        bytes: text.as_bytes(),
    };
    import(&[input], options).map(|imported| {
        let config = serde_json::to_value(&imported.config).unwrap();
        // Whatever the import writes, the filter takes: every test here checks the round trip.
        if let Err(error) = crate::config::parse(config.to_string().as_bytes()) {
            panic!("the filter refuses the imported config: {error}\n{config:#}");
        }
        (config, imported.notes)
    })
}

fn config(text: &str) -> Value {
    match run_with(text, &Options::default()) {
        Ok((config, _)) => config,
        Err(errors) => panic!("refused: {errors:?}"),
    }
}

fn refusal(text: &str) -> String {
    match run_with(text, &Options::default()) {
        Ok((config, _)) => panic!("imported: {config}"),
        Err(errors) => errors.join("\n"),
    }
}

fn rule<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {config}"))
}

fn rule_names(config: &Value) -> Vec<&str> {
    config["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

const REQUEST_AUTHENTICATION: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: issuer-foo
    jwksUri: https://example.com/.well-known/jwks.json
"#;

fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo}}\nspec:\n{spec}\n")
}

/// The ALLOW example of Istio's AuthorizationPolicy reference.
const HTTPBIN_ALLOW: &str = r#"  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    - source: {namespaces: ["test"]}
    to:
    - operation: {methods: ["GET"], paths: ["/info*"]}
    - operation: {methods: ["POST"], paths: ["/data"]}
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]"#;

#[test]
fn the_documented_allow_policy_becomes_the_allow_rules_when() {
    let config = config(&policy("httpbin", HTTPBIN_ALLOW));
    // Alone, the claim condition can never hold (no RequestAuthentication verifies a token):
    // the policy allows nothing, as istiod's payload matcher never matches.
    assert_eq!(rule(&config, "istio")["allow_unauthenticated"], true);
    assert_eq!(
        rule(&config, "istio")["when"],
        json!([{"not": {"key": "request.method", "values": ["*"]}}])
    );
    let config = super::tests::config(&format!(
        "{REQUEST_AUTHENTICATION}---\n{}",
        policy("httpbin", HTTPBIN_ALLOW)
    ));
    assert_eq!(rule_names(&config), ["istio"]);
    let istio = rule(&config, "istio");
    assert_eq!(
        istio["when"],
        json!([
            {"any": [
                {"key": "source.principal", "values": ["cluster.local/ns/default/sa/sleep"]},
                {"key": "source.namespace", "values": ["test"]}]},
            {"any": [
                {"all": [{"key": "request.method", "values": ["GET"]},
                         {"key": "request.path", "values": ["/info*"]}]},
                {"all": [{"key": "request.method", "values": ["POST"]},
                         {"key": "request.path", "values": ["/data"]}]}]},
            {"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}
        ])
    );
}

#[test]
fn the_documented_deny_and_audit_policies_become_deny_and_audit_rules() {
    let text = [
        policy(
            "httpbin",
            "  action: DENY\n  rules:\n  - from: [{source: {namespaces: [dev]}}]\n    to: [{operation: {methods: [POST]}}]",
        ),
        policy(
            "anyname",
            "  selector: {matchLabels: {app: myapi}}\n  action: AUDIT\n  rules:\n  - to: [{operation: {methods: [GET], paths: [\"/user/profile/*\"]}}]",
        ),
    ]
    .join("---\n");
    let config = config(&text);
    assert_eq!(rule_names(&config), ["foo.httpbin", "foo.anyname", "istio"]);
    assert_eq!(
        rule(&config, "foo.httpbin"),
        &json!({"name": "foo.httpbin", "action": "deny", "match": {},
                "when": [{"key": "source.namespace", "values": ["dev"]},
                         {"key": "request.method", "values": ["POST"]}]})
    );
    assert_eq!(rule(&config, "foo.anyname")["action"], "audit");
    // No ALLOW policy: the allow rule lets everything the deny rules leave through.
    assert!(rule(&config, "istio").get("when").is_none());
}

#[test]
fn an_allow_policy_with_empty_spec_denies_everything() {
    let config = config(&policy("allow-nothing", "  {}"));
    assert_eq!(rule(&config, "istio")["when"], json!([never()]));
    // No spec at all reads the same.
    let bare = config_without_spec();
    assert_eq!(rule(&bare, "istio")["when"], json!([never()]));
}

fn config_without_spec() -> Value {
    config("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: none}\n")
}

#[test]
fn a_rule_that_is_empty_allows_everything_even_next_to_allow_nothing() {
    let text = [
        policy("allow-nothing", "  {}"),
        policy("allow-all", "  rules:\n  - {}"),
    ]
    .join("---\n");
    let config = config(&text);
    assert!(rule(&config, "istio").get("when").is_none(), "{config}");
}

#[test]
fn a_deny_rule_that_is_empty_denies_every_request() {
    let config = config(&policy("deny-all", "  action: DENY\n  rules: [{}]"));
    let deny = rule(&config, "foo.deny-all");
    assert_eq!(deny["action"], "deny");
    assert!(deny.get("when").is_none(), "{deny}");
}

#[test]
fn a_deny_policy_without_rules_is_refused_as_istiod_refuses_it() {
    let error = refusal(&policy("deny", "  action: DENY"));
    assert!(error.contains("policies.yaml: document 1 (AuthorizationPolicy foo/deny): spec.rules: a DENY policy without rules"), "{error}");
}

#[test]
fn not_values_and_not_fields_become_not_so_an_absent_attribute_matches() {
    let config = config(&policy(
        "require-jwt",
        r#"  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"], principals: [a/b], notPrincipals: [c/d]}}]
    when:
    - {key: "request.auth.claims[groups]", values: [admin], notValues: ["ops-*"]}"#,
    ));
    assert_eq!(
        rule(&config, "foo.require-jwt")["when"],
        json!([
            {"key": "source.principal", "values": ["a/b"]},
            {"not": {"key": "source.principal", "values": ["c/d"]}},
            {"not": {"key": "request.auth.principal", "values": ["*"]}},
            {"key": "request.auth.claims[groups]", "values": ["admin"]},
            {"not": {"key": "request.auth.claims[groups]", "values": ["ops-*"]}}
        ])
    );
}

#[test]
fn a_custom_policy_is_refused_with_its_location() {
    let text = [
        REQUEST_AUTHENTICATION.to_string(),
        policy(
            "ext-authz",
            "  action: CUSTOM\n  provider: {name: my-custom-authz}\n  rules:\n  - to: [{operation: {paths: [\"/admin/*\"]}}]",
        ),
    ]
    .join("---\n");
    let error = refusal(&text);
    assert_eq!(
        error,
        "policies.yaml: document 2 (AuthorizationPolicy foo/ext-authz): spec.action: CUSTOM hands the decision to the external authorizer \"my-custom-authz\", which meshguard cannot call"
    );
}

#[test]
fn an_unknown_field_is_refused_with_its_path() {
    let error = refusal(&policy(
        "deny-admin",
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin], foo: bar}}]",
    ));
    assert!(
        error.starts_with("policies.yaml: document 1 (AuthorizationPolicy foo/deny-admin): spec.rules[0].to[0].operation.foo: unknown field `foo`"),
        "{error}"
    );
}

#[test]
fn when_keys_meshguard_cannot_read_are_refused() {
    for key in [
        "connection.sni",
        "destination.ip",
        "experimental.envoy.filters.a.b[c]",
        "request.auth.claims[a]x",
        "colour",
    ] {
        let error = refusal(&policy(
            "p",
            &format!("  action: DENY\n  rules:\n  - when: [{{key: \"{key}\", values: [x]}}]"),
        ));
        assert!(
            error.contains("spec.rules[0].when[0].key:"),
            "{key}: {error}"
        );
    }
}

#[test]
fn when_keys_keep_istios_names_but_service_account_and_headers() {
    let config = config(&policy(
        "p",
        r#"  action: DENY
  rules:
  - when:
    - {key: "request.auth.claims[https://example.com/roles][team]", values: [a]}
    - {key: source.serviceAccount, values: [sleep, other/bot]}
    - {key: "request.headers[X-Tenant]", values: [acme]}
    - {key: remote.ip, values: [10.0.0.0/8]}
    - {key: destination.port, values: ["8443"]}"#,
    ));
    assert_eq!(
        rule(&config, "foo.p")["when"],
        json!([
            {"key": "request.auth.claims[https://example.com/roles][team]", "values": ["a"]},
            {"key": "source.service_account", "values": ["foo/sleep", "other/bot"]},
            {"key": "request.headers[x-tenant]", "values": ["acme"]},
            {"key": "remote.ip", "values": ["10.0.0.0/8"]},
            {"key": "destination.port", "values": ["8443"]}
        ])
    );
}

#[test]
fn a_service_account_without_any_namespace_is_refused() {
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from: [{source: {serviceAccounts: [sleep]}}]\n";
    let error = refusal(text);
    assert!(
        error.contains("spec.rules[0].from[0].source.serviceAccounts[0]"),
        "{error}"
    );
    let options = Options {
        namespace: Some("bar".into()),
        ..Options::default()
    };
    let (config, _) = run_with(text, &options).unwrap();
    assert_eq!(
        rule(&config, "istio")["when"],
        json!([{"key": "source.service_account", "values": ["bar/sleep"]}])
    );
}

#[test]
fn values_istiod_refuses_or_meshguard_cannot_write_are_refused() {
    for (operation, path) in [
        (
            "{source: {ipBlocks: [10.0.0.300]}}",
            "from[0].source.ipBlocks[0]",
        ),
        (
            "{source: {namespaces: [\"a*b\"]}}",
            "from[0].source.namespaces[0]",
        ),
        (
            "{source: {principals: [\"*x*\"]}}",
            "from[0].source.principals[0]",
        ),
        (
            "{source: {serviceAccounts: [\"ns/*\"]}}",
            "from[0].source.serviceAccounts[0]",
        ),
        ("{source: {}}", "from[0].source"),
    ] {
        let error = refusal(&policy("p", &format!("  rules:\n  - from: [{operation}]")));
        assert!(
            error.contains(&format!("spec.rules[0].{path}:")),
            "{operation}: {error}"
        );
    }
    for (operation, path) in [
        ("{ports: [\"70000\"]}", "to[0].operation.ports[0]"),
        ("{paths: [\"/a/{**}/b/{*}\"]}", "to[0].operation.paths[0]"),
        ("{paths: [\"/a/{x}\"]}", "to[0].operation.paths[0]"),
        ("{methods: [\"\"]}", "to[0].operation.methods[0]"),
    ] {
        let error = refusal(&policy(
            "p",
            &format!("  rules:\n  - to: [{{operation: {operation}}}]"),
        ));
        assert!(
            error.contains(&format!("spec.rules[0].{path}:")),
            "{operation}: {error}"
        );
    }
}

#[test]
fn hosts_pass_through_as_istiod_matches_them_port_and_all() {
    let text = policy(
        "p",
        "  rules:\n  - to: [{operation: {hosts: [\"example.com\", \"example.com:*\"], paths: [\"/api/{*}/items/{**}\"]}}]",
    );
    let (config, notes) = run_with(&text, &Options::default()).unwrap();
    assert_eq!(
        rule(&config, "istio")["when"],
        json!([{"key": "request.host", "values": ["example.com", "example.com:*"]},
               {"key": "request.path", "values": ["/api/{*}/items/{**}"]}])
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn dry_run_deny_is_a_dry_run_rule_and_dry_run_allow_policies_are_judged_together() {
    let dry = |name: &str, spec: &str| {
        policy(name, spec).replace(
            "namespace: foo}",
            "namespace: foo, annotations: {\"istio.io/dry-run\": \"true\"}}",
        )
    };
    let text = [
        policy(
            "enforced-deny",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]",
        ),
        dry(
            "dry-deny",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/headers]}}]}]",
        ),
        dry("dry-a", "  rules: [{to: [{operation: {paths: [/a]}}]}]"),
        dry("dry-b", "  rules: [{to: [{operation: {paths: [/b]}}]}]"),
    ]
    .join("---\n");
    let config = config(&text);
    assert_eq!(
        rule_names(&config),
        [
            "foo.dry-deny",
            "foo.enforced-deny",
            "istio-dry-run-allow",
            "istio"
        ]
    );
    assert_eq!(rule(&config, "foo.dry-deny")["dry_run"], true);
    assert!(rule(&config, "foo.enforced-deny").get("dry_run").is_none());
    assert_eq!(
        rule(&config, "istio-dry-run-allow"),
        &json!({"name": "istio-dry-run-allow", "action": "deny", "match": {}, "dry_run": true,
                "when": [{"not": {"any": [{"key": "request.path", "values": ["/a"]},
                                          {"key": "request.path", "values": ["/b"]}]}}]})
    );
    // Only dry-run ALLOW policies: nothing is enforced, as istiod builds no enforcing rules.
    assert!(rule(&config, "istio").get("when").is_none());
}

#[test]
fn a_dry_run_annotation_that_is_not_a_boolean_is_refused() {
    let text = policy("p", "  rules: [{}]").replace(
        "namespace: foo}",
        "namespace: foo, annotations: {\"istio.io/dry-run\": \"yes\"}}",
    );
    assert!(refusal(&text).contains("metadata.annotations.istio.io/dry-run"));
}

#[test]
fn request_authentication_becomes_providers_required_any_with_allow_missing() {
    let text = [
        REQUEST_AUTHENTICATION.to_string(),
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: google, namespace: foo}
spec:
  jwtRules:
  - issuer: https://accounts.google.com
    jwksUri: http://idp.internal:8080/certs
    audiences: [api]
    fromHeaders: [{name: x-jwt-assertion, prefix: "Bearer "}]
    fromParams: [my_token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-claim-foo, claim: foo}]
    spaceDelimitedClaims: [roles, scope]
    timeout: 1.5s
  - issuer: testing@secure.istio.io
    jwks: '{"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}'
"#
        .to_string(),
    ]
    .join("---\n");
    let config = config(&text);
    assert_eq!(
        config["providers"],
        json!({
            "issuer-foo": {"issuer": "issuer-foo",
                "remote_jwks": {"cluster": "outbound|443||example.com",
                                "uri": "https://example.com/.well-known/jwks.json",
                                "timeout": "5s", "cache_duration": "5m"},
                "space_delimited_claims": ["permission"]},
            "accounts.google.com": {"issuer": "https://accounts.google.com", "audiences": ["api"],
                "remote_jwks": {"cluster": "outbound|8080||idp.internal",
                                "uri": "http://idp.internal:8080/certs",
                                "timeout": "1500ms", "cache_duration": "5m"},
                "from_headers": [{"name": "x-jwt-assertion", "value_prefix": "Bearer "}],
                "from_params": ["my_token"], "from_cookies": ["session"], "forward": true,
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"claim_name": "foo", "header_name": "x-jwt-claim-foo"}],
                "space_delimited_claims": ["permission", "roles"]},
            "testing-secure.istio.io": {"issuer": "testing@secure.istio.io",
                "local_jwks": {"inline": "{\"keys\": [{\"kty\": \"oct\", \"k\": \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}"},
                "space_delimited_claims": ["permission"]}
        })
    );
    let istio = rule(&config, "istio");
    assert_eq!(
        istio["requires"],
        json!({"any": ["issuer-foo", "accounts.google.com", "testing-secure.istio.io"]})
    );
    assert_eq!(istio["allow_missing"], true);
    assert!(istio.get("allow_unauthenticated").is_none());
}

#[test]
fn a_jwks_cluster_override_replaces_istiods_cluster_name() {
    let options = Options {
        jwks_clusters: [("example.com".to_string(), "idp".to_string())].into(),
        ..Options::default()
    };
    let (config, _) = run_with(REQUEST_AUTHENTICATION, &options).unwrap();
    assert_eq!(
        config["providers"]["issuer-foo"]["remote_jwks"]["cluster"],
        "idp"
    );
}

#[test]
fn the_same_issuer_twice_is_merged_when_identical_and_kept_twice_otherwise() {
    let identical = [REQUEST_AUTHENTICATION, REQUEST_AUTHENTICATION].join("---\n");
    let (merged, notes) = run_with(&identical, &Options::default()).unwrap();
    assert_eq!(merged["providers"].as_object().unwrap().len(), 1);
    assert!(notes.iter().any(|n| n.contains("merged")), "{notes:?}");
    let other =
        REQUEST_AUTHENTICATION.replace("example.com/.well-known", "keys.example.com/.well-known");
    let config = config(&[REQUEST_AUTHENTICATION, other.as_str()].join("---\n"));
    assert_eq!(
        rule(&config, "istio")["requires"],
        json!({"any": ["issuer-foo", "issuer-foo-2"]})
    );
}

#[test]
fn jwt_rules_meshguard_cannot_hold_are_refused() {
    for (rule_text, field) in [
        ("{issuer: a, jwks: x, jwksUri: https://a/k}", "jwks"),
        ("{issuer: a}", "jwksUri"),
        ("{jwksUri: https://a/k}", "issuer"),
        ("{issuer: a, jwksUri: ftp://a/k}", "jwksUri"),
        (
            "{issuer: a, jwksUri: https://a/k, timeout: 1.0001s}",
            "timeout",
        ),
    ] {
        let text = format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r}}\nspec:\n  jwtRules: [{rule_text}]\n");
        let error = refusal(&text);
        assert!(
            error.contains(&format!(
                "(RequestAuthentication r): spec.jwtRules[0].{field}:"
            )),
            "{rule_text}: {error}"
        );
    }
}

#[test]
fn a_list_and_json_are_read_like_separate_documents() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "a", "namespace": "foo", "uid": "1", "resourceVersion": "7"},
         "spec": {"action": "DENY", "rules": [{}]}, "status": {}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "b", "namespace": "foo"}, "spec": {"action": "CUSTOM"}}]});
    let error = refusal(&list.to_string());
    assert!(
        error.starts_with(
            "policies.yaml: document 1, items[1] (AuthorizationPolicy foo/b): spec.action:"
        ),
        "{error}"
    );
}

#[test]
fn other_kinds_are_skipped_with_a_note_but_other_istio_security_kinds_are_refused() {
    let text = [
        policy("p", "  rules: [{}]"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n".to_string(),
    ]
    .join("---\n");
    let (_, notes) = run_with(&text, &Options::default()).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("document 2: skipped Deployment web")),
        "{notes:?}"
    );
    let peer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict}\nspec: {mtls: {mode: STRICT}}\n";
    assert!(refusal(peer)
        .contains("(PeerAuthentication strict): kind: PeerAuthentication cannot be imported"));
    assert!(
        refusal("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")
            .contains("found no RequestAuthentication or AuthorizationPolicy")
    );
}

#[test]
fn the_wasm_plugin_carries_the_config_and_the_common_selector() {
    let text = [
        REQUEST_AUTHENTICATION.to_string(),
        policy(
            "p",
            "  selector: {matchLabels: {app: httpbin}}\n  rules: [{}]",
        ),
    ]
    .join("---\n");
    let input = InputFile {
        name: "p.yaml",
        bytes: text.as_bytes(),
    };
    let imported = import(&[input], &Options::default()).unwrap();
    let yaml = to_wasm_plugin(&imported, "meshguard-authz").unwrap();
    let plugin: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(plugin["kind"], "WasmPlugin");
    assert_eq!(
        plugin["metadata"],
        json!({"name": "meshguard-authz", "namespace": "foo"})
    );
    assert_eq!(
        plugin["spec"]["selector"],
        json!({"matchLabels": {"app": "httpbin"}})
    );
    assert_eq!(plugin["spec"]["phase"], "AUTHN");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(
        plugin["spec"]["pluginConfig"],
        serde_json::to_value(&imported.config).unwrap()
    );
}

#[test]
fn protobuf_durations_become_meshguard_durations() {
    assert_eq!(providers::proto_duration("5s").unwrap(), "5s");
    assert_eq!(providers::proto_duration("0.250s").unwrap(), "250ms");
    assert_eq!(providers::proto_duration("2.000000000s").unwrap(), "2s");
    assert!(providers::proto_duration("1m").is_err());
    assert!(providers::proto_duration("0.0000001s").is_err());
}

#[test]
fn jwks_uris_give_istiods_host_and_port() {
    assert_eq!(
        providers::jwks_host_port("https://a.example/k").unwrap(),
        ("a.example".into(), 443)
    );
    assert_eq!(
        providers::jwks_host_port("http://a.example/k").unwrap(),
        ("a.example".into(), 80)
    );
    assert_eq!(
        providers::jwks_host_port("https://[::1]:8443/k").unwrap(),
        ("::1".into(), 8443)
    );
    assert!(providers::jwks_host_port("https:///k").is_err());
}
