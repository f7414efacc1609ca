"""Logging and metrics in real Envoy: one well-formed record per request through Envoy's log,
sampling that never drops a denial, secrets that never reach any log line, the decision in
Envoy's filter state, and counters in /stats/prometheus."""

import json
import time

import pytest

from support.envoy import Envoy, json_file_access_log, wait_for
from support.jose import ISSUER, Signer, jwks

SECRET_QUERY = "s3cr3t-query-value"
SECRET_COOKIE = "s3cr3t-cookie-value"


@pytest.fixture(scope="module")
def signer():
    return Signer("ES256")


def plugin_config(signer, access_log):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "local_jwks": {"inline": jwks(signer)},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_cookies": ["session"],
            }
        },
        "rate_limits": {
            "per_user": {"key": "claim:sub", "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h"}},
            "trial": {"key": "const:all", "shadow": True, "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1h"}},
        },
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": True, "rate_limits": ["trial"]},
            {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "rate_limits": ["per_user"]},
        ],
        "access_log": access_log,
    }


def start(tmp_path, upstream, config):
    access_log = json_file_access_log(tmp_path / "access.log", {"status": "%RESPONSE_CODE%", "meshguard": "%FILTER_STATE(wasm.meshguard:PLAIN)%"})
    return Envoy(config, {"upstream": upstream.port}, tmp_path, access_log=access_log).start()


def test_one_record_per_request_with_decisions(tmp_path, upstream, signer):
    config = plugin_config(signer, {"enabled": True, "sample_rate": 1.0, "request_headers": ["user-agent", "authorization", "cookie"]})
    envoy = start(tmp_path, upstream, config)
    try:
        token = signer.sign(sub="alice")
        sent = [
            envoy.get("/api/orders?page=2", {"authorization": f"Bearer {token}", "x-request-id": "req-allowed", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
            envoy.get("/api/orders", {"x-request-id": "req-missing"}),
            envoy.get("/elsewhere", {"x-request-id": "req-unmatched"}),
            envoy.get("/api/orders", {"authorization": f"Bearer {token}", "x-request-id": "req-2"}),
            envoy.get("/api/orders", {"authorization": f"Bearer {token}", "x-request-id": "req-limited"}),
        ]
        assert [r.status_code for r in sent] == [200, 401, 403, 200, 429]
        assert wait_for(lambda: len(envoy.meshguard_records()) >= 5, timeout=5)
        records = {r["request_id"]: r for r in envoy.meshguard_records()}
        allowed = records["req-allowed"]
        assert allowed["method"] == "GET" and allowed["path"] == "/api/orders" and allowed["status"] == 200
        assert allowed["rule"] == "api" and allowed["provider"] == "corp" and allowed["subject"] == "alice"
        assert allowed["decision"] == "allowed"
        assert allowed["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert allowed["rate_limits"] == [{"policy": "per_user", "decision": "allowed", "remaining": 1}]
        assert allowed["request_headers"]["user-agent"].startswith("python-requests")
        assert allowed["time"].endswith("Z") and allowed["duration_ms"] >= 0 and allowed["response_bytes"] > 0
        assert records["req-missing"]["decision"] == "unauthenticated"
        assert records["req-missing"]["reason"] == "token is missing"
        assert records["req-unmatched"]["decision"] == "forbidden"
        limited = records["req-limited"]
        assert limited["decision"] == "rate_limited" and limited["status"] == 429
        assert limited["rate_limits"][0]["decision"] == "limited"
        # Envoy's own access log carries the same decision from the filter state.
        assert wait_for(lambda: (tmp_path / "access.log").exists() and len((tmp_path / "access.log").read_text().splitlines()) >= 5, timeout=5)
        native = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
        decisions = sorted(json.loads(entry["meshguard"])["decision"] for entry in native)
        assert decisions == ["allowed", "allowed", "forbidden", "rate_limited", "unauthenticated"]
    finally:
        envoy.stop()


def test_filter_state_export_can_be_turned_off(tmp_path, upstream, signer):
    """`access_log.filter_state: false` spares the export (a serialisation and a host call per
    request) where no Envoy logger reads it; decisions and meshguard's own log are unchanged."""
    config = plugin_config(signer, {"enabled": True, "filter_state": False})
    envoy = start(tmp_path, upstream, config)
    try:
        token = signer.sign(sub="alice")
        statuses = [
            envoy.get("/api/orders", {"authorization": f"Bearer {token}", "x-request-id": "off-allowed"}).status_code,
            envoy.get("/api/orders", {"x-request-id": "off-missing"}).status_code,
        ]
        assert statuses == [200, 401]
        assert wait_for(lambda: len(envoy.meshguard_records()) >= 2, timeout=5)
        assert {r["request_id"]: r["decision"] for r in envoy.meshguard_records()} == {"off-allowed": "allowed", "off-missing": "unauthenticated"}
        assert wait_for(lambda: (tmp_path / "access.log").exists() and len((tmp_path / "access.log").read_text().splitlines()) >= 2, timeout=5)
        native = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
        assert [entry["status"] for entry in native] == [200, 401]
        assert all(entry["meshguard"] is None for entry in native), native
    finally:
        envoy.stop()


def test_byte_counts_can_be_left_out(tmp_path, upstream, signer):
    config = plugin_config(signer, {"enabled": True, "byte_counts": False})
    envoy = start(tmp_path, upstream, config)
    try:
        token = signer.sign(sub="alice")
        assert envoy.get("/api/orders", {"authorization": f"Bearer {token}", "x-request-id": "no-bytes"}).status_code == 200
        assert wait_for(lambda: len(envoy.meshguard_records()) >= 1, timeout=5)
        record = envoy.meshguard_records()[0]
        assert record["request_id"] == "no-bytes" and record["status"] == 200 and record["decision"] == "allowed"
        assert "request_bytes" not in record and "response_bytes" not in record, record
    finally:
        envoy.stop()


def test_secrets_never_reach_any_log_line(tmp_path, upstream, signer):
    config = plugin_config(signer, {"enabled": True, "sample_rate": 1.0, "request_headers": ["authorization", "cookie", "proxy-authorization"]})
    envoy = start(tmp_path, upstream, config)
    try:
        good = signer.sign(sub="alice")
        bad = good[:-4] + "AAAA"
        envoy.get(f"/api/orders?api_key={SECRET_QUERY}", {"authorization": f"Bearer {good}", "proxy-authorization": "Basic c2VjcmV0"})
        envoy.get("/api/orders", {"authorization": f"Bearer {bad}"})
        envoy.get("/api/orders", {"cookie": f"session={bad}; other={SECRET_COOKIE}"})
        envoy.get("/api/orders", {"authorization": "Bearer not-a-token-at-all"})
        assert wait_for(lambda: len(envoy.meshguard_records()) >= 4, timeout=5)
        text = envoy.log() + (tmp_path / "access.log").read_text()
        for secret in [good, bad, good.split(".")[1], good.split(".")[2], SECRET_QUERY, SECRET_COOKIE, "c2VjcmV0", "not-a-token-at-all"]:
            assert secret not in text, f"a secret reached the log: {secret[:12]}..."
    finally:
        envoy.stop()


def test_sampling_keeps_every_denial(tmp_path, upstream, signer):
    envoy = start(tmp_path, upstream, plugin_config(signer, {"enabled": True, "sample_rate": 0.0}))
    try:
        for _ in range(5):
            assert envoy.get("/healthz").status_code == 200
        assert envoy.get("/api/orders").status_code == 401
        assert wait_for(lambda: len(envoy.meshguard_records()) >= 5, timeout=5)
        time.sleep(0.3)
        records = envoy.meshguard_records()
        # The first /healthz was plainly allowed: sampled out. The other four were allowed but
        # over the shadow policy: limited requests are always logged, like the denial.
        assert [r["decision"] for r in records if r["path"] == "/api/orders"] == ["unauthenticated"]
        health = [r for r in records if r["path"] == "/healthz"]
        assert len(health) == 4
        assert all(r["rate_limits"][0]["decision"] == "shadow_limited" for r in health)
    finally:
        envoy.stop()


def test_disabled_access_log_writes_nothing(tmp_path, upstream, signer):
    envoy = start(tmp_path, upstream, plugin_config(signer, {"enabled": False}))
    try:
        envoy.get("/healthz")
        envoy.get("/api/orders")
        time.sleep(0.5)
        assert envoy.meshguard_records() == []
    finally:
        envoy.stop()


def test_metrics_count_a_known_sequence(tmp_path, upstream, signer):
    envoy = start(tmp_path, upstream, plugin_config(signer, {"enabled": False}))
    try:
        token = signer.sign(sub="bob")
        for _ in range(3):
            envoy.get("/api/orders", {"authorization": f"Bearer {token}"})  # 200, 200, 429
        envoy.get("/api/orders")  # 401
        envoy.get("/nowhere")  # 403
        envoy.get("/healthz")  # 200, then shadow-limited
        envoy.get("/healthz")
        time.sleep(2.5)  # counters reach Envoy on the next tick (every second)
        metrics = {}
        for line in envoy.prometheus().splitlines():
            if line.startswith("meshguard_"):
                name, value = line.rsplit(" ", 1)
                metrics[name] = int(float(value))
        assert metrics['meshguard_requests_total{rule="api",decision="allowed"}'] == 2
        assert metrics['meshguard_requests_total{rule="api",decision="rate_limited"}'] == 1
        assert metrics['meshguard_requests_total{rule="api",decision="unauthenticated"}'] == 1
        assert metrics['meshguard_requests_total{rule="none",decision="forbidden"}'] == 1
        assert metrics['meshguard_requests_total{rule="health",decision="allowed"}'] == 1
        assert metrics['meshguard_requests_total{rule="health",decision="shadow_limited"}'] == 1
        assert metrics["meshguard_token_cache_misses_total{}"] == 1
        assert metrics["meshguard_token_cache_hits_total{}"] == 2
    finally:
        envoy.stop()
