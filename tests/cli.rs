//! The `meshguard validate` command, run as a user's CI would run it.

use std::process::Command;

fn validate(json: &str) -> (bool, String, String) {
    let (code, stdout, stderr) = validate_file(&format!("config-{}.json", json.len()), json);
    (code == Some(0), stdout, stderr)
}

/// Writes `text` to a file called `name` and runs `meshguard validate` on it.
fn validate_file(name: &str, text: &str) -> (Option<i32>, String, String) {
    let file = write_temp(name, text);
    meshguard(&["validate", &file.to_string_lossy()])
}

#[test]
fn a_valid_configuration_passes() {
    let (ok, stdout, _) = validate(
        r#"{"rules": [{"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": true}]}"#,
    );
    assert!(ok);
    assert!(
        stdout.contains("ok (0 providers, 0 rate limits, 1 rules)"),
        "{stdout}"
    );
}

#[test]
fn a_bad_configuration_fails_with_the_filters_path_and_reason() {
    let (ok, _, stderr) = validate(
        r#"{"providers": {"corp": {"issuer": "i", "clock_skew": "1 sec", "local_jwks": {"inline": "{}"}}}}"#,
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            r#"configuration refused: providers.corp.clock_skew: invalid duration "1 sec""#
        ),
        "{stderr}"
    );
}

#[test]
fn no_file_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

fn meshguard(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `meshguard` with `input` on its standard input.
fn meshguard_with_stdin(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

const WASM_PLUGIN_YAML: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: edge, namespace: web}
spec:
  url: oci://registry.example.com/meshguard:1
  pluginConfig:
    rate_limits:
      per_ip:
        key: client_ip
        token_bucket: {max_tokens: 10, tokens_per_fill: 10, fill_interval: __FILL__}
    rules:
    - name: api
      match: {prefix: /api/}
      allow_unauthenticated: true
      rate_limits: [per_ip]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: idp}
spec: {hosts: [idp.example.com]}
"#;

#[test]
fn a_wasmplugin_manifest_in_yaml_has_its_plugin_config_checked() {
    let (code, stdout, stderr) =
        validate_file("good.yaml", &WASM_PLUGIN_YAML.replace("__FILL__", "1s"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(
            "WasmPlugin edge spec.pluginConfig: ok (0 providers, 1 rate limits, 1 rules)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("ServiceEntry idp: not a WasmPlugin, not checked"),
        "{stdout}"
    );
}

#[test]
fn a_bad_plugin_config_in_a_wasmplugin_fails_with_the_filters_path_and_reason() {
    let (code, _, stderr) =
        validate_file("bad.yaml", &WASM_PLUGIN_YAML.replace("__FILL__", "1 sec"));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(r#"WasmPlugin edge spec.pluginConfig: configuration refused: rate_limits.per_ip.token_bucket.fill_interval: invalid duration "1 sec""#),
        "{stderr}"
    );
}

#[test]
fn a_bare_plugin_config_in_yaml_is_checked_like_json() {
    let (code, _, stderr) = validate_file("bare.yaml", "rules:\n- name: health\n  match: {path: /healthz}\n  allow_unauthenticated: true\n  colour: blue\n",
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("rules[0]"), "{stderr}");
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
}

#[test]
fn a_wasmplugin_without_plugin_config_is_refused_as_the_filter_refuses_it() {
    let (code, _, stderr) = validate_file("empty.yaml", "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: bare}\nspec: {url: oci://r/m:1}\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("configuration refused: the configuration must be a JSON object"),
        "{stderr}"
    );
}

#[test]
fn yaml_that_does_not_parse_is_reported_not_skipped() {
    let (code, _, stderr) = validate_file("broken.yaml", "rules: [\n  - name: x\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("neither JSON nor YAML"), "{stderr}");
}

#[test]
fn the_committed_schema_is_the_one_the_types_generate() {
    let (code, stdout, _) = meshguard(&["schema"]);
    assert_eq!(code, Some(0));
    let committed = include_str!("../istio/pluginconfig.schema.json");
    assert!(
        stdout == committed,
        "istio/pluginconfig.schema.json is stale: run `make schema`"
    );
}

#[test]
fn a_kubectl_list_read_from_stdin_has_each_wasmplugin_checked() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        WASM_PLUGIN_YAML
            .split("---")
            .next()
            .unwrap()
            .replace("__FILL__", "1 sec")
            .trim()
            .lines()
            .map(|line| if line.starts_with("apiVersion") {
                format!("- {line}")
            } else {
                format!("  {line}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (code, _, stderr) = meshguard_with_stdin(&["validate", "-"], &list);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("<stdin> WasmPlugin edge spec.pluginConfig: configuration refused: rate_limits.per_ip.token_bucket.fill_interval"),
        "{stderr}"
    );
}

/// Istio's documented RequestAuthentication (a JWKS URI) and an ALLOW policy that requires a
/// token, as one file of two documents.
const ISTIO_POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: issuer-foo
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source: {requestPrincipals: ["issuer-foo/*"]}
"#;

fn import_stdout_json(args: &[&str]) -> serde_json::Value {
    let (code, stdout, stderr) = meshguard(args);
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn import_turns_istio_policies_into_the_plugin_config() {
    let file = write_temp("istio-policies.yaml", ISTIO_POLICIES);
    let config = import_stdout_json(&["import", &file.to_string_lossy()]);
    assert_eq!(
        config["providers"]["issuer-foo"]["remote_jwks"]["cluster"],
        "outbound|443||example.com"
    );
    assert_eq!(
        config["rules"],
        serde_json::json!([{"name": "istio", "match": {}, "requires": {"any": ["issuer-foo"]},
            "allow_missing": true,
            "when": [{"key": "request.auth.principal", "values": ["issuer-foo/*"]}]}])
    );
}

#[test]
fn import_takes_a_jwks_cluster_override_and_reads_standard_input() {
    let (code, stdout, stderr) = meshguard_with_stdin(
        &["import", "--jwks-cluster", "example.com=idp", "-"],
        ISTIO_POLICIES,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let config: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        config["providers"]["issuer-foo"]["remote_jwks"]["cluster"],
        "idp"
    );
}

#[test]
fn import_refuses_a_custom_policy_with_file_document_and_field() {
    let text = format!(
        "{ISTIO_POLICIES}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz, namespace: foo}}\nspec:\n  action: CUSTOM\n  provider: {{name: my-custom-authz}}\n  rules: [{{to: [{{operation: {{paths: [\"/admin/*\"]}}}}]}}]\n"
    );
    let file = write_temp("custom.yaml", &text);
    let (code, stdout, stderr) = meshguard(&["import", &file.to_string_lossy()]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(
            "custom.yaml: document 3 (AuthorizationPolicy foo/ext-authz): spec.action: CUSTOM"
        ),
        "{stderr}"
    );
}

#[test]
fn import_prints_a_wasmplugin_on_request() {
    let file = write_temp("istio-for-plugin.yaml", ISTIO_POLICIES);
    let (code, stdout, stderr) = meshguard(&[
        "import",
        "--wasmplugin",
        "meshguard-authz",
        &file.to_string_lossy(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("kind: WasmPlugin"), "{stdout}");
    assert!(stdout.contains("name: meshguard-authz"), "{stdout}");
    assert!(stdout.contains("namespace: foo"), "{stdout}");
    assert!(stdout.contains("pluginConfig:"), "{stdout}");
    assert!(stdout.contains("app: httpbin"), "{stdout}");
}

#[test]
fn import_without_files_or_with_an_unknown_option_is_a_usage_error() {
    assert_eq!(meshguard(&["import"]).0, Some(2));
    assert_eq!(meshguard(&["import", "--colour", "x.yaml"]).0, Some(2));
    assert_eq!(
        meshguard(&["import", "--jwks-cluster", "nohost", "x.yaml"]).0,
        Some(2)
    );
}
