"""The published pluginConfig JSON Schema (istio/pluginconfig.schema.json, generated from the
filter's config types) agrees with the filter: what the filter accepts passes the schema, and
mistakes of shape the filter refuses (unknown fields, bad durations, key parts, enums, types)
are caught by the schema too, before deploy. References between parts (a rule naming a
provider that does not exist) are for `meshguard validate`, which runs the filter's checks."""

import copy
import json
import re

import jsonschema
import pytest
import yaml

from support.envoy import REPO
from support.manifests import PLUGIN_CONFIG_SCHEMA, validate

FULL = {
    "providers": {
        "corp": {
            "issuer": "https://idp.example.com",
            "audiences": ["orders-api"],
            "remote_jwks": {"cluster": "idp", "uri": "http://idp.example.com/jwks.json", "timeout": "1s", "cache_duration": "10m"},
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["access_token"],
            "from_cookies": ["session"],
            "forward": False,
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            "clock_skew": "60s",
            "algorithms": ["RS256", "ES256"],
            "require_expiration": True,
            "space_delimited_claims": ["permission"],
        },
        "partner": {"issuer": "https://partner.example.com", "remote_jwks": {"cluster": "partner", "uri": "http://partner.example.com/keys"}},
    },
    "rate_limits": {
        "per_user": {"key": ["claim:sub"], "token_bucket": {"max_tokens": 20, "tokens_per_fill": 10, "fill_interval": "1s"}},
        "per_ip": {
            "key": "client_ip",
            "token_bucket": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1m"},
            "mode": "delay",
            "max_delay": "500ms",
            "enable_ratelimit_headers": True,
        },
        "trial": {"key": ["claim:sub", "const:trial"], "shadow": True, "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1s"}},
        "global": {"key": ["header:x-api-key"], "service": {"cluster": "ratelimit", "domain": "meshguard", "timeout": "100ms", "failure_mode_deny": False}},
    },
    "rules": [
        {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": True},
        {
            "name": "writes",
            "match": {"prefix": "/api/", "methods": ["POST", "PUT", "DELETE"], "hosts": ["api.example.com"], "headers": {"x-tenant": "a"}},
            "requires": {"any": ["corp", {"all": ["partner"]}], "allow_missing": False},
            "rate_limits": ["per_user", "global", "trial"],
        },
        {"name": "no-admin", "action": "deny", "dry_run": True,
         "match": {"paths": ["/admin", "/admin/{**}"], "not_paths": ["/admin/health"], "not_methods": ["OPTIONS"],
                   "hosts": ["*.example.com"], "not_hosts": ["dev.example.com"], "ports": [8443], "not_ports": [9901]},
         "when": [{"any": [{"key": "remote.ip", "values": ["10.0.0.0/8", "2001:db8::/32"]},
                           {"not": {"key": "source.principal", "values": ["cluster.local/ns/ops/*"], "dry_run": True}}]}]},
        {"name": "trace", "action": "audit", "when": [{"key": "source.namespace", "values": ["billing"]}]},
        {"name": "orders", "match": {"paths": ["/orders/{*}"]}, "requires": "corp", "allow_missing": True, "dry_run": False,
         "when": [{"scopes": ["orders:write"]}, {"max_lifetime": "1h"},
                  {"key": "request.auth.claims[realm][roles]", "values": ["buyer"], "not_values": ["banned*"]},
                  {"all": [{"key": "request.auth.audiences", "values": ["orders-api"]}, {"key": "request.auth.presenter", "values": ["web"]},
                           {"key": "request.auth.principal", "values": ["https://idp.example.com/*"]},
                           {"key": "source.service_account", "values": ["shop/api"]}, {"key": "source.trust_domain", "values": ["cluster.local"]},
                           {"key": "source.ip", "values": ["10.1.0.0/16"]}, {"key": "request.headers[x-tenant]", "values": ["acme"]},
                           {"key": "request.path", "values": ["/orders/{*}"]}, {"key": "request.method", "values": ["POST"]},
                           {"key": "request.host", "values": ["*.example.com"]}, {"key": "destination.port", "values": ["8443"]}]}]},
        {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "rate_limits": ["per_ip"]},
    ],
    "bypass_cors_preflight": True,
    "direct_peer_header": "x-envoy-direct-peer",
    "unmatched": "deny",
    "access_log": {"enabled": True, "sample_rate": 0.5, "request_headers": ["user-agent", "x-request-id"]},
}


def demo_config():
    envoy = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())
    text = json.dumps(envoy)
    match = re.search(r'"value": "(\{.*?\})\\n"', text)
    return json.loads(json.loads(f'"{match.group(1)}"'))


@pytest.fixture(scope="module")
def schema():
    return jsonschema.Draft202012Validator(json.loads(PLUGIN_CONFIG_SCHEMA.read_text()))


def meshguard_verdict(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, _, stderr = validate(path)
    return code, stderr


@pytest.mark.parametrize("config", [FULL, demo_config(), {}], ids=["every-field", "make-run-demo", "empty"])
def test_what_the_filter_accepts_passes_the_schema(tmp_path, schema, config):
    assert meshguard_verdict(tmp_path, config)[0] == 0
    assert list(schema.iter_errors(config)) == []


def changed(path, value):
    config = copy.deepcopy(FULL)
    *parents, last = path
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    return config


MISTAKES = [
    (changed(["colour"], "blue"), "unknown field `colour`"),
    (changed(["providers", "corp", "clock_skew"], "1 sec"), 'providers.corp.clock_skew: invalid duration "1 sec"'),
    (changed(["providers", "corp", "remote_jwks", "timeout"], "1.5s"), "providers.corp.remote_jwks.timeout: invalid duration"),
    (changed(["providers", "corp", "algorithms"], ["none"]), "providers.corp.algorithms"),
    (changed(["providers", "corp", "audiences"], "orders-api"), "providers.corp.audiences"),
    (changed(["rate_limits", "per_ip", "mode"], "queue"), "rate_limits.per_ip.mode"),
    (changed(["rate_limits", "per_ip", "key"], ["client-ip"]), "rate_limits.per_ip.key"),
    (changed(["rate_limits", "per_ip", "key"], []), "rate_limits.per_ip.key"),
    (changed(["rate_limits", "per_ip", "token_bucket", "max_tokens"], -1), "rate_limits.per_ip.token_bucket.max_tokens"),
    (changed(["rules", 1, "requires"], {"any": []}), "rules[1].requires.any: must not be empty"),
    (changed(["rules", 1, "requires"], {"any": ["corp"], "all": ["partner"]}), "set either any or all"),
    (changed(["rules", 0, "match", "prefix"], 7), "rules[0].match.prefix"),
    (changed(["unmatched"], "maybe"), "unmatched"),
    (changed(["access_log", "sample_rate"], 1.5), "access_log.sample_rate"),
    (changed(["rules", 2, "action"], "reject"), 'rules[2].action: "reject" is not'),
    (changed(["rules", 4, "when"], [{"key": "request.claims[x]", "values": ["a"]}]), "rules[4].when[0].key: unknown key"),
    (changed(["rules", 4, "when"], [{"key": "request.auth.principal"}]), "rules[4].when[0]: a `key` condition needs"),
    (changed(["rules", 4, "when"], [{"scopes": []}]), "rules[4].when[0].scopes: must be a non-empty list"),
    (changed(["rules", 4, "when"], [{"any": [{"scopes": ["a"], "not": {"scopes": ["b"]}}]}]), "rules[4].when[0].any[0]: set only one of"),
    (changed(["rules", 4, "when"], [{"max_lifetime": "1 hour"}]), "rules[4].when[0].max_lifetime: invalid duration"),
    (changed(["rules", 4, "when"], [{"key": "request.method", "values": ["GET"], "extra": 1}]), "rules[4].when[0].extra: unknown field"),
    (changed(["rules", 2, "match", "ports"], ["443"]), "rules[2].match.ports"),
]


@pytest.mark.parametrize("config, reason", MISTAKES, ids=[reason[:50] for _, reason in MISTAKES])
def test_a_mistake_the_filter_refuses_is_caught_by_the_schema_too(tmp_path, schema, config, reason):
    code, stderr = meshguard_verdict(tmp_path, config)
    assert code == 1 and reason in stderr, stderr
    assert list(schema.iter_errors(config)), "the schema let through a config the filter refuses"
