"""The Istio manifests in istio/ are ready to apply: every WasmPlugin passes Istio's WasmPlugin
CRD (schema and CEL rules, as the API server checks them) and meshguard's own validator, and
the clusters their pluginConfig names exist as Istio would name them."""

import copy
import json

import jsonschema
import pytest
import yaml

from support.crd import Crd
from support.manifests import CRD, PLUGIN_CONFIG_SCHEMA, documents, manifest_files, validate, wasm_plugins

PLUGINS = wasm_plugins()
PLUGIN_IDS = [f"{name}:{doc['metadata']['name']}" for name, doc in PLUGINS]


@pytest.fixture(scope="module")
def crd():
    return Crd(CRD, "v1alpha1")


def test_the_use_cases_each_have_a_manifest():
    specs = [doc["spec"] for _, doc in PLUGINS]
    configs = [spec.get("pluginConfig", {}) for spec in specs]
    assert any(spec.get("phase") == "AUTHN" and config.get("providers") for spec, config in zip(specs, configs))
    assert any(config.get("rate_limits") for config in configs)
    assert any(
        policy.get("service") for config in configs for policy in config.get("rate_limits", {}).values()
    ), "a global (RLS) limit"
    assert any(config.get("access_log") for config in configs)
    rules = [rule for config in configs for rule in config.get("rules", [])]
    assert any(rule.get("action") == "deny" for rule in rules) and any(rule.get("when") for rule in rules), "authorization"
    assert any(rule.get("dry_run") for rule in rules), "a dry run"
    assert any("selector" in spec for spec in specs)
    assert any(ref.get("kind") == "Gateway" for spec in specs for ref in spec.get("targetRefs", []))
    assert any(m.get("ports") for spec in specs for m in spec.get("match", []))
    assert {spec.get("failStrategy") for spec in specs} == {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"}
    for spec in specs:
        assert spec["url"].startswith("oci://") and spec.get("sha256") and spec.get("imagePullPolicy")
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"ServiceEntry", "DestinationRule", "Service"} <= kinds


@pytest.mark.parametrize("doc", [doc for _, doc in PLUGINS], ids=PLUGIN_IDS)
def test_wasmplugin_is_accepted_by_istios_crd(crd, doc):
    assert crd.errors(doc) == []


def auth_plugin():
    return copy.deepcopy(next(doc for name, doc in PLUGINS if "selector" in doc["spec"] and doc["spec"].get("phase") == "AUTHN"))


def set_path(doc, path, value):
    *parents, last = path.split(".")
    node = doc["spec"]
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return doc


# What the API server refuses, each case from the CRD; the first two are CEL rules that a
# plain JSON-Schema check would let through.
REFUSED = [
    ("url", "ftp://registry.example.com/meshguard:1", "spec.url: url must have schema one of [http, https, file, oci]"),
    ("targetRefs", [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}], "spec: only one of targetRefs or selector can be set"),
    ("selector.matchLabels", {"app*": "orders"}, "wildcard not allowed in label key match"),
    ("selector.matchLabels", {"app": "ord*"}, "wildcard not allowed in label value match"),
    ("failStrategy", "FAIL_SOMETIMES", "spec.failStrategy: 'FAIL_SOMETIMES' is not one of"),
    ("phase", "AUTHENTICATION", "spec.phase: 'AUTHENTICATION' is not one of"),
    ("sha256", "ABCDEF", "spec.sha256: 'ABCDEF' does not match"),
    ("match", [{"mode": "SERVER", "ports": [{"number": 70000}]}], "spec.match[0].ports[0].number: 70000 is greater than the maximum"),
    ("vmConfig", {"env": [{"name": "TOKEN", "valueFrom": "HOST", "value": "x"}]}, "value may only be set when valueFrom is INLINE"),
    ("pluginconfig", {}, "'pluginconfig' was unexpected"),
]


@pytest.mark.parametrize("path, value, reason", REFUSED, ids=[f"{p}={v}"[:60] for p, v, _ in REFUSED])
def test_the_crd_check_refuses_what_istio_refuses(crd, path, value, reason):
    errors = crd.errors(set_path(auth_plugin(), path, value))
    assert any(reason in error for error in errors), errors


def test_a_cross_namespace_target_ref_is_refused(crd):
    gateway = copy.deepcopy(next(doc for _, doc in PLUGINS if "targetRefs" in doc["spec"]))
    gateway["spec"]["targetRefs"][0]["namespace"] = "istio-system"
    assert crd.errors(gateway) == ["spec.targetRefs[0].namespace: cross namespace referencing is not currently supported"]


@pytest.mark.parametrize("url", ["registry.example.com/meshguard:1", "file:///opt/filters/meshguard.wasm", "https://example.com/meshguard.wasm"])
def test_urls_istio_accepts_pass(crd, url):
    # A bare reference (no scheme) is an OCI image to Istio; the CEL rule lets it through.
    assert crd.errors(set_path(auth_plugin(), "url", url)) == []


def test_every_plugin_config_passes_meshguard_validate():
    code, stdout, stderr = validate(*manifest_files())
    assert code == 0, stderr
    assert stdout.count("spec.pluginConfig: ok") == len(PLUGINS), stdout


def test_a_manifest_meshguard_would_refuse_fails_the_check(tmp_path):
    plugin = auth_plugin()
    plugin["spec"]["pluginConfig"]["rules"][1]["requires"] = "partner"
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump(plugin))
    code, _, stderr = validate(path)
    assert code == 1
    assert "WasmPlugin meshguard-auth spec.pluginConfig: configuration refused: rules[1].requires" in stderr, stderr
    assert "partner" in stderr


@pytest.mark.parametrize("doc", [doc for _, doc in PLUGINS], ids=PLUGIN_IDS)
def test_plugin_config_matches_the_published_json_schema(doc):
    schema = json.loads(PLUGIN_CONFIG_SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(doc["spec"]["pluginConfig"])


def istio_cluster(name):
    """`outbound|<port>|<subset>|<host>` -> (host, port)."""
    direction, port, subset, host = name.split("|")
    assert direction == "outbound" and subset == "", name
    return host, int(port)


def exported_to(resource, namespace):
    export = resource.get("spec", {}).get("exportTo", ["*"])
    own = resource["metadata"].get("namespace")
    return "*" in export or namespace in export or ("." in export and own == namespace)


def test_remote_jwks_clusters_are_service_entries_with_tls_where_the_uri_is_https():
    objects = [doc for _, doc in documents()]
    checked = 0
    for _, plugin in PLUGINS:
        namespace = plugin["metadata"]["namespace"]
        for provider in plugin["spec"]["pluginConfig"].get("providers", {}).values():
            jwks = provider.get("remote_jwks")
            if not jwks:
                continue
            host, port = istio_cluster(jwks["cluster"])
            assert jwks["uri"].split("/")[2] == host, "the JWKS request's authority is the cluster's host"
            entries = [o for o in objects if o["kind"] == "ServiceEntry" and host in o["spec"]["hosts"] and exported_to(o, namespace)]
            assert any(p["number"] == port for e in entries for p in e["spec"]["ports"]), f"no ServiceEntry for {host}:{port} visible in {namespace}"
            if jwks["uri"].startswith("https://"):
                rules = [o for o in objects if o["kind"] == "DestinationRule" and o["spec"]["host"] == host and exported_to(o, namespace)]
                tls = [s["tls"] for r in rules for s in r["spec"]["trafficPolicy"].get("portLevelSettings", []) if s["port"]["number"] == port]
                assert tls and tls[0]["mode"] == "SIMPLE" and tls[0].get("sni") == host, f"no TLS origination for {host}:{port} in {namespace}"
            checked += 1
    assert checked >= 2


def test_rate_limit_service_clusters_are_grpc_services():
    services = {
        f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local": o
        for _, o in documents()
        if o["kind"] == "Service"
    }
    checked = 0
    for _, plugin in PLUGINS:
        for policy in plugin["spec"]["pluginConfig"].get("rate_limits", {}).values():
            if "service" not in policy:
                continue
            host, port = istio_cluster(policy["service"]["cluster"])
            ports = [p for p in services[host]["spec"]["ports"] if p["port"] == port]
            assert ports and (ports[0].get("appProtocol") == "grpc" or ports[0]["name"].startswith("grpc")), "RLS needs an HTTP/2 (gRPC) cluster"
            checked += 1
    assert checked >= 1
