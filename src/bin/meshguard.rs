//! `meshguard`: the filter's configuration checks as a native command, for users' CI.
//!
//! - `meshguard validate FILE...` checks each file the way the filter's `on_configure` does and
//!   prints the same path-and-reason errors. A file is JSON or YAML, and holds either a bare
//!   pluginConfig or Kubernetes manifests: every Istio `WasmPlugin` in it has its
//!   `spec.pluginConfig` checked (as Istio hands it to Envoy: the YAML turned into JSON); other
//!   kinds (a `ServiceEntry` next to it, say) are listed as not checked. A `List` (as
//!   `kubectl get wasmplugins -o yaml` prints) has each item checked; `-` reads standard input.
//! - `meshguard schema` prints the pluginConfig JSON Schema, derived from the same types.
//! - `meshguard import FILE...` translates Istio `RequestAuthentication` and
//!   `AuthorizationPolicy` objects, taken as one workload's policies, into the pluginConfig that
//!   decides the same way (`--wasmplugin NAME`: a whole WasmPlugin); what it cannot say exactly
//!   is refused with the file, document and field (src/import).

use std::io::Read;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::Value;

const USAGE: &str = "usage: meshguard validate FILE...   check pluginConfig files (JSON or YAML; a bare pluginConfig or WasmPlugin manifests; - for stdin)
       meshguard schema            print the pluginConfig JSON Schema
       meshguard import [--wasmplugin NAME] [--namespace NS] [--jwks-cluster HOST=CLUSTER]... FILE...
                                   Istio RequestAuthentication/AuthorizationPolicy -> pluginConfig (- for stdin)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, files)) if command == "validate" && !files.is_empty() => validate(files),
        Some((command, rest)) if command == "schema" && rest.is_empty() => print_schema(),
        Some((command, rest)) if command == "import" => match ImportArgs::parse(rest) {
            Ok(args) => import(&args),
            Err(reason) => {
                eprintln!("meshguard import: {reason}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn print_schema() -> ExitCode {
    let schema = meshguard::config::schema::plugin_config_schema();
    match serde_json::to_string_pretty(&schema) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("meshguard: cannot render the schema: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a file, or standard input for `-`.
fn read_input(file: &str) -> std::io::Result<Vec<u8>> {
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    }
}

struct ImportArgs {
    files: Vec<String>,
    wasm_plugin: Option<String>,
    options: meshguard::import::Options,
}

impl ImportArgs {
    fn parse(args: &[String]) -> Result<ImportArgs, String> {
        let mut parsed = ImportArgs {
            files: Vec::new(),
            wasm_plugin: None,
            options: meshguard::import::Options::default(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if arg.starts_with("--") => (flag, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--wasmplugin" => parsed.wasm_plugin = Some(value()?),
                "--namespace" => parsed.options.namespace = Some(value()?),
                "--jwks-cluster" => {
                    let mapping = value()?;
                    let (host, cluster) = mapping
                        .split_once('=')
                        .filter(|(host, cluster)| !host.is_empty() && !cluster.is_empty())
                        .ok_or_else(|| {
                            format!("--jwks-cluster takes HOST=CLUSTER, not {mapping:?}")
                        })?;
                    parsed
                        .options
                        .jwks_clusters
                        .insert(host.to_string(), cluster.to_string());
                }
                _ if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                _ => parsed.files.push(arg.clone()),
            }
        }
        if parsed.files.is_empty() {
            return Err("name at least one file (- for standard input)".into());
        }
        if parsed.files.iter().filter(|f| *f == "-").count() > 1 {
            return Err("standard input (-) can be read once".into());
        }
        Ok(parsed)
    }
}

fn import(args: &ImportArgs) -> ExitCode {
    let mut contents = Vec::new();
    for file in &args.files {
        match read_input(file) {
            Ok(bytes) => contents.push((
                if file == "-" {
                    "<stdin>"
                } else {
                    file.as_str()
                },
                bytes,
            )),
            Err(err) => {
                eprintln!("{file}: cannot read: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let inputs: Vec<meshguard::import::InputFile> = contents
        .iter()
        .map(|(name, bytes)| meshguard::import::InputFile { name, bytes })
        .collect();
    let imported = match meshguard::import::import(&inputs, &args.options) {
        Ok(imported) => imported,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::FAILURE;
        }
    };
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let rendered = match &args.wasm_plugin {
        Some(name) => meshguard::import::to_wasm_plugin(&imported, name),
        None => meshguard::import::to_json(&imported),
    };
    match rendered {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("meshguard import: cannot render the output: {err}");
            ExitCode::FAILURE
        }
    }
}

fn validate(files: &[String]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let stdin = file == "-";
        let read = read_input(file);
        let outcomes = match read {
            Ok(bytes) => check_file(&bytes),
            Err(err) => vec![Outcome::Unreadable(format!("cannot read: {err}"))],
        };
        let file = if stdin { "<stdin>" } else { file.as_str() };
        for outcome in outcomes {
            match outcome {
                Outcome::Valid { label, summary } => println!("{file}{label}: ok ({summary})"),
                Outcome::NotChecked { label } => {
                    println!("{file}{label}: not a WasmPlugin, not checked")
                }
                Outcome::Refused { label, error } => {
                    eprintln!("{file}{label}: configuration refused: {error}");
                    failed = true;
                }
                Outcome::Unreadable(reason) => {
                    eprintln!("{file}: {reason}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

enum Outcome {
    Valid { label: String, summary: String },
    Refused { label: String, error: String },
    NotChecked { label: String },
    Unreadable(String),
}

fn check_file(bytes: &[u8]) -> Vec<Outcome> {
    // JSON first: a JSON pluginConfig is checked byte for byte as the filter reads it.
    if let Ok(document) = serde_json::from_slice::<Value>(bytes) {
        return match manifest_kind(&document) {
            None => vec![check_config(String::new(), bytes)],
            Some(kind) => check_manifests(&document, kind),
        };
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return vec![Outcome::Unreadable("not UTF-8 text".into())];
    };
    let mut outcomes = Vec::new();
    for (index, yaml) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = match Value::deserialize(yaml) {
            Ok(Value::Null) => continue, // an empty document, as after a trailing `---`
            Ok(document) => document,
            Err(err) => {
                outcomes.push(Outcome::Unreadable(format!(
                    "document {}: neither JSON nor YAML: {err}",
                    index + 1
                )));
                break; // the parser cannot resynchronise after a syntax error
            }
        };
        match manifest_kind(&document) {
            Some(kind) => outcomes.extend(check_manifests(&document, kind)),
            None => outcomes.push(match serde_json::to_vec(&document) {
                Ok(json) => check_config(format!(" (document {})", index + 1), &json),
                Err(err) => Outcome::Unreadable(format!("document {}: {err}", index + 1)),
            }),
        }
    }
    if outcomes.is_empty() {
        outcomes.push(Outcome::Unreadable("holds no document".into()));
    }
    outcomes
}

/// `Some(kind)` for a Kubernetes object (it has `apiVersion` and `kind`), `None` for a bare
/// pluginConfig (which cannot have those members: unknown fields are refused).
fn manifest_kind(document: &Value) -> Option<&str> {
    let object = document.as_object()?;
    object.get("apiVersion")?.as_str()?;
    object.get("kind")?.as_str()
}

/// A manifest, or each item of a `List` (what `kubectl get wasmplugins -o yaml` prints).
fn check_manifests(document: &Value, kind: &str) -> Vec<Outcome> {
    match document.get("items").and_then(Value::as_array) {
        Some(items) if kind.ends_with("List") => items
            .iter()
            .map(|item| match manifest_kind(item) {
                Some(kind) => check_manifest(item, kind),
                None => Outcome::Unreadable(format!("a {kind} item is not a Kubernetes object")),
            })
            .collect(),
        _ => vec![check_manifest(document, kind)],
    }
}

fn check_manifest(document: &Value, kind: &str) -> Outcome {
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let label = format!(" {kind} {name}");
    let istio = document
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|api| api.starts_with("extensions.istio.io/"));
    if kind != "WasmPlugin" || !istio {
        return Outcome::NotChecked { label };
    }
    let label = format!("{label} spec.pluginConfig");
    // Without pluginConfig Istio passes no configuration at all, which the filter refuses too.
    let Some(config) = document.pointer("/spec/pluginConfig") else {
        return check_config(label, b"");
    };
    match serde_json::to_vec(config) {
        Ok(json) => check_config(label, &json),
        Err(err) => Outcome::Unreadable(format!("{label}: {err}")),
    }
}

fn check_config(label: String, json: &[u8]) -> Outcome {
    match meshguard::config::parse(json) {
        Ok(config) => Outcome::Valid {
            label,
            summary: format!(
                "{} providers, {} rate limits, {} rules",
                config.providers.len(),
                config.rate_limits.len(),
                config.rules.len()
            ),
        },
        Err(err) => Outcome::Refused {
            label,
            error: err.to_string(),
        },
    }
}
