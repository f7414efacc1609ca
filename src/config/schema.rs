//! The pluginConfig JSON Schema, derived from the serde types in `raw.rs` (so a field added there
//! is in the schema too) plus what serde cannot say: duration syntax, key parts, enumerations,
//! and the recursive `requires` tree. Native only (feature `cli`): `meshguard schema` prints it.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::duration::ConfigDuration;
use super::raw::RawConfig;

/// The whole document, as `meshguard schema` prints it and `istio/pluginconfig.schema.json` holds.
pub fn plugin_config_schema() -> Schema {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert(
        "$id".into(),
        "https://meshguard.dev/schemas/pluginconfig.schema.json".into(),
    );
    schema.insert("title".into(), "meshguard pluginConfig".into());
    schema
}

const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h)$";
const KEY_PART_PATTERN: &str =
    "^(client_ip|rule|path|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|claim:.+|const:.+)$";

impl JsonSchema for ConfigDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A whole number and a unit: ms, s, m or h (\"250ms\", \"10s\", \"5m\", \"1h\").",
            "examples": ["250ms", "10s"]
        })
    }
}

/// Schema-only mirror of the `requires` tree: a provider name, `{"any": [...]}` or `{"all": [...]}`.
/// `validate.rs` parses it from a `serde_json::Value` for its error messages.
pub struct Requirement;

impl JsonSchema for Requirement {
    fn schema_name() -> Cow<'static, str> {
        "Requirement".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let this = generator.subschema_for::<Requirement>();
        json_schema!({
            "description": "A provider name, or {\"any\": [...]} / {\"all\": [...]} of requirements, with optional allow_missing.",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "object",
                    "properties": {
                        "any": {"type": "array", "minItems": 1, "items": this},
                        "all": {"type": "array", "minItems": 1, "items": this},
                        "allow_missing": {"type": "boolean"}
                    },
                    "additionalProperties": false,
                    "oneOf": [{"required": ["any"]}, {"required": ["all"]}]
                }
            ]
        })
    }
}

pub fn requires(generator: &mut SchemaGenerator) -> Schema {
    let requirement = generator.subschema_for::<Requirement>();
    json_schema!({"anyOf": [requirement, {"type": "null"}]})
}

pub fn key(_: &mut SchemaGenerator) -> Schema {
    let part = json_schema!({"type": "string", "pattern": KEY_PART_PATTERN});
    json_schema!({
        "description": "One key part or a list: client_ip, header:<name>, claim:<name>, rule, path, const:<text>.",
        "oneOf": [part, {"type": "array", "minItems": 1, "items": part}]
    })
}

pub fn mode(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["reject", "delay", null], "default": "reject"})
}

pub fn unmatched(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["deny", "allow", null], "default": "deny"})
}

pub fn algorithms(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = crate::auth::alg::Algorithm::ALL
        .into_iter()
        .map(|alg| alg.name())
        .collect();
    json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": {"enum": names}
    })
}

pub fn sample_rate(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 1})
}

pub fn action(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["allow", "deny", "audit", null], "default": "allow"})
}

/// The attribute keys a `key` condition names (`README.md` "Authorization").
const CONDITION_KEY_PATTERN: &str = r"^(request\.auth\.claims(\[[^\[\]]+\])+|request\.auth\.(principal|audiences|presenter)|source\.(principal|namespace|service_account|trust_domain|ip)|remote\.ip|request\.headers\[[!#$%&'*+.^_`|~0-9A-Za-z-]+\]|request\.(path|method|host)|destination\.port)$";

/// Schema-only mirror of a condition: a `key` with `values` / `not_values`, `scopes`,
/// `max_lifetime`, or `all` / `any` / `not` of conditions; each may be a `dry_run`.
pub struct Condition;

impl JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let this = generator.subschema_for::<Condition>();
        let duration = generator.subschema_for::<ConfigDuration>();
        let strings = json_schema!({"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}});
        json_schema!({
            "description": "A condition: {\"key\": ..., \"values\": [...], \"not_values\": [...]}, {\"scopes\": [...]}, {\"max_lifetime\": \"1h\"}, or {\"all\"|\"any\": [...]} / {\"not\": {...}}; any may carry \"dry_run\": true.",
            "type": "object",
            "properties": {
                "key": {"type": "string", "pattern": CONDITION_KEY_PATTERN},
                "values": strings,
                "not_values": strings,
                "scopes": strings,
                "max_lifetime": duration,
                "all": {"type": "array", "minItems": 1, "items": this},
                "any": {"type": "array", "minItems": 1, "items": this},
                "not": this,
                "dry_run": {"type": "boolean"}
            },
            "additionalProperties": false,
            "oneOf": [
                {"required": ["key"], "anyOf": [{"required": ["values"]}, {"required": ["not_values"]}]},
                {"required": ["scopes"]},
                {"required": ["max_lifetime"]},
                {"required": ["all"]},
                {"required": ["any"]},
                {"required": ["not"]}
            ]
        })
    }
}

pub fn when(generator: &mut SchemaGenerator) -> Schema {
    let condition = generator.subschema_for::<Condition>();
    json_schema!({"type": ["array", "null"], "items": condition})
}
