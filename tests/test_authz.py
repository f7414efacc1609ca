"""Authorization in real Envoy: the answers a client can act on (insufficient_scope with the
scopes, 403 naming the rule), dry runs recorded in the access record, filter state and counters,
CORS preflights, and the addresses Envoy hands the filter (a client's X-Forwarded-For is not its
address in the shipped config). The Istio comparison is tests/test_authz_differential.py."""

import json

import pytest
import requests

from support.envoy import Envoy, free_port, json_file_access_log, wait_for
from support.wire import Http1
from support.jose import ISSUER, Signer, bearer, jwks

SCOPED = {"scope": "orders:read reports:read"}


@pytest.fixture(scope="module")
def signer():
    return Signer("ES256")


def plugin_config(signer):
    return {
        "providers": {"corp": {"issuer": ISSUER, "local_jwks": {"inline": jwks(signer)}}},
        "bypass_cors_preflight": True,
        "rules": [
            {"name": "no-legacy", "action": "deny", "when": [{"key": "request.headers[x-client]", "values": ["legacy-*"]}]},
            {"name": "trial-block", "action": "deny", "dry_run": True, "match": {"prefix": "/api/"},
             "when": [{"key": "request.auth.claims[plan]", "values": ["trial"]}]},
            {"name": "billing-audit", "action": "audit", "match": {"prefix": "/api/billing"}},
            {"name": "reports", "match": {"prefix": "/api/reports"}, "requires": "corp",
             "when": [{"scopes": ["reports:read"]}]},
            {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "allow_missing": True,
             "when": [{"key": "request.auth.principal", "values": [f"{ISSUER}/*"]}]},
        ],
        "access_log": {"enabled": True},
    }


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, upstream, signer):
    workdir = tmp_path_factory.mktemp("authz")
    fields = {"path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%", "meshguard": "%FILTER_STATE(wasm.meshguard:PLAIN)%"}
    access_log = json_file_access_log(workdir / "access.log", fields)
    envoy = Envoy(plugin_config(signer), {"upstream": upstream.port}, workdir, access_log=access_log)
    envoy.workdir_log = workdir / "access.log"
    with envoy.start():
        yield envoy


def get(envoy, path, token=None, method="GET", headers=None):
    sent = dict(headers or {})
    if token:
        sent.update([bearer(token)])
    return requests.request(method, f"http://127.0.0.1:{envoy.listener_port}{path}", headers=sent, timeout=10)


def authz_record(envoy, path):
    """The authz part of meshguard's filter state for the last request to `path`."""

    def find():
        for line in reversed(envoy.workdir_log.read_text().splitlines() if envoy.workdir_log.exists() else []):
            entry = json.loads(line)
            if entry["path"] == path and entry["meshguard"]:
                return json.loads(entry["meshguard"])
        return None

    found = []
    assert wait_for(lambda: found.append(find()) or found[-1] is not None, timeout=5), f"no record for {path}"
    return found[-1].get("authz")


def test_a_missing_scope_answers_insufficient_scope_naming_the_scope(envoy, signer):
    denied = get(envoy, "/api/reports/q3", signer.sign(scope="orders:read"))
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="reports:read"'
    assert denied.json() == {"error": "forbidden", "reason": 'rule "reports" needs scope reports:read'}
    assert get(envoy, "/api/reports/q3", signer.sign(**SCOPED)).status_code == 200


def test_a_deny_rule_names_itself_and_never_a_claim_value(envoy, signer):
    denied = get(envoy, "/api/orders", signer.sign(**SCOPED), headers={"x-client": "legacy-7"})
    assert denied.status_code == 403
    assert denied.json()["reason"] == 'denied by rule "no-legacy"'
    assert "legacy-7" not in denied.text
    record = authz_record(envoy, "/api/orders")
    assert record == {"decision": "denied", "rule": "no-legacy", "principal": f"{ISSUER}/alice"}


def test_no_token_where_the_rule_reads_one_asks_for_it(envoy):
    answer = get(envoy, "/api/orders")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="api"'


def test_a_dry_run_lets_the_request_through_and_records_and_counts_it(envoy, signer):
    answer = get(envoy, "/api/orders?trial=1", signer.sign(plan="trial", **SCOPED))
    assert answer.status_code == 200
    record = authz_record(envoy, "/api/orders?trial=1")
    assert record == {"decision": "dry_run_denied", "rule": "trial-block", "principal": f"{ISSUER}/alice", "dry_run_denied": ["trial-block"]}

    def counted():
        stats = requests.get(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=5).text
        return 'meshguard_authz_dry_run_denied_total{rule="trial-block"} 1' in stats or None

    assert wait_for(counted, timeout=10)


def test_audit_rules_mark_the_record(envoy, signer):
    assert get(envoy, "/api/billing/invoices", signer.sign(**SCOPED)).status_code == 200
    assert authz_record(envoy, "/api/billing/invoices") == {"decision": "audited", "principal": f"{ISSUER}/alice", "audit": ["billing-audit"]}


def test_a_cors_preflight_needs_no_token(envoy):
    preflight = {"origin": "https://app.example", "access-control-request-method": "GET"}
    assert get(envoy, "/api/reports/q3", method="OPTIONS", headers=preflight).status_code == 200
    assert get(envoy, "/api/reports/q3", method="OPTIONS").status_code == 401
    legacy = {**preflight, "x-client": "legacy-1"}
    assert get(envoy, "/api/reports/q3", method="OPTIONS", headers=legacy).status_code == 403


def test_the_shipped_config_does_not_take_a_clients_forwarded_for_as_its_address(tmp_path, upstream):
    """Without use_remote_address, Envoy takes the last X-Forwarded-For entry as the client's
    address: a client could choose its own client_ip bucket or pass a remote.ip rule."""
    envoy = Envoy.shipped({"upstream": upstream.port, "idp": free_port()}, tmp_path)
    settings = json.loads(envoy.config_path.read_text())
    hcm = settings["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    configuration = wasm["typed_config"]["config"]["configuration"]
    shipped = json.loads(configuration["value"])
    # The shipped rules, and one that blocks this test's own address (loopback).
    shipped["rules"].insert(0, {"name": "block-loopback", "action": "deny", "match": {"path": "/healthz"},
                                "when": [{"key": "remote.ip", "values": ["127.0.0.0/8"]}]})
    configuration["value"] = json.dumps(shipped)
    envoy.config_path.write_text(json.dumps(settings))
    with envoy.start():
        url = f"http://127.0.0.1:{envoy.listener_port}/healthz"
        assert requests.get(url, timeout=5).status_code == 403
        for forwarded in ["203.0.113.9", "10.0.0.1, 203.0.113.9"]:
            answer = requests.get(url, headers={"x-forwarded-for": forwarded}, timeout=5)
            assert answer.status_code == 403, f"X-Forwarded-For {forwarded} moved the client out of its block"


def test_bytes_that_are_not_utf8_in_what_authorization_reads_never_trap_and_never_help(tmp_path, upstream, signer):
    """Every byte 0x80-0xFF (and a few control bytes Envoy lets through) in a header a deny and
    an allow condition read, in a CORS preflight's headers and in the direct-peer header, each
    also repeated: answered as specified (a condition never matches such a value), no VM failure."""
    config = plugin_config(signer)
    config["direct_peer_header"] = "x-direct-peer"
    config["rules"].insert(0, {"name": "peers", "action": "deny", "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]})
    config["rules"].append({"name": "tenant", "match": {"prefix": "/t/"}, "allow_unauthenticated": True,
                            "when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}]})
    with Envoy(config, {"upstream": upstream.port}, tmp_path).start() as envoy, Http1(envoy.listener_port) as client:
        token = signer.sign(**SCOPED)
        for byte in [*range(0x80, 0x100), 0x01, 0x7f]:
            value = b"legacy-" + bytes([byte])
            odd = bytes([byte])
            cases = [
                ([("x-client", value)], "/api/orders", 403),  # the deny rule's prefix still matches
                ([("x-client", odd), ("x-client", b"legacy-1")], "/api/orders", 403),
                ([("x-tenant", b"acm" + odd)], "/t/x", 403),
                ([("x-tenant", b"acme"), ("x-tenant", odd)], "/t/x", 403),
                ([("x-direct-peer", b"10.0.0." + odd)], "/api/orders", 200),
                ([("origin", odd), ("access-control-request-method", odd)], "/api/reports/q3", 200),
            ]
            for headers, path, status in cases:
                method = "OPTIONS" if headers[0][0] == "origin" else "GET"
                sent = [("host", "svc"), *headers] + ([] if method == "OPTIONS" else [("authorization", f"Bearer {token}")])
                response = client.request(method, path, sent)
                if response.refused_by_codec:
                    continue  # Envoy's codec refused the byte before any filter ran
                assert response.status == status, (byte, headers, response.describe())
        assert client.request("GET", "/t/x", [("host", "svc"), ("x-tenant", "acme")]).status == 200
    assert not envoy.vm_failures(), envoy.vm_failures()[:4]
