"""Global limits through an Envoy rate-limit service (RLS v3 over gRPC), tested with a real RLS
server counting in a real Redis, shared by two Envoy instances (two replicas), and with the
service stopped, hanging, answering garbage, or named by a cluster that does not exist."""

import os
import time

import pytest

from support.envoy import Envoy, wait_for
from support.rls import RLS_BIN, Hostile, Silent, redis_server, rls_server
from support.servers import free_port

LIMIT = 10


@pytest.fixture(scope="module")
def redis():
    if not RLS_BIN.exists():
        pytest.fail(f"{RLS_BIN} is missing: run the tests with 'make test'")
    server = redis_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rls(redis):
    # Hour-long fixed windows: a test never straddles a window boundary.
    server = rls_server(redis.port, LIMIT, "hour")
    yield server
    server.stop()


def plugin_config(failure_mode_deny=False, timeout="500ms"):
    # A fresh domain per Envoy: counters in Redis never leak between tests.
    domain = f"meshguard-{os.urandom(4).hex()}"
    service = {"cluster": "ratelimit", "domain": domain, "timeout": timeout, "failure_mode_deny": failure_mode_deny}
    return {
        "rate_limits": {"global": {"key": ["header:x-api-key"], "service": service}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "allow_unauthenticated": True, "rate_limits": ["global"]}],
    }


def envoy_for(tmp_path, upstream, rls_port, config):
    clusters = {"upstream": upstream.port, "ratelimit": {"port": rls_port, "http2": True}}
    return Envoy(config, clusters, tmp_path / os.urandom(3).hex())


def test_the_global_limit_holds_exactly_across_two_envoys(tmp_path, upstream, rls):
    config = plugin_config()
    with envoy_for(tmp_path, upstream, rls.port, config) as first, envoy_for(tmp_path, upstream, rls.port, config) as second:
        statuses = []
        for i in range(3 * LIMIT):
            envoy = first if i % 2 == 0 else second
            statuses.append(envoy.get("/orders", {"x-api-key": "shared-key"}).status_code)
        assert statuses.count(200) == LIMIT, statuses
        assert statuses.count(429) == 2 * LIMIT
        refused = first.get("/orders", {"x-api-key": "shared-key"})
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-limit"] == str(LIMIT)
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-policy"] == f'"global";q={LIMIT};w=3600'
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        # Another key has its own counter.
        assert second.get("/orders", {"x-api-key": "other-key"}).status_code == 200
        calls = first.counter("meshguard_rls_calls_total") + second.counter("meshguard_rls_calls_total", wait=False)
        assert calls == 3 * LIMIT + 2, f"{calls} calls counted by the two Envoys"
        assert first.counter("meshguard_rls_errors_total", wait=False) == 0


def test_a_stopped_service_allows_by_default_and_denies_with_failure_mode_deny(tmp_path, upstream):
    nowhere = free_port()
    with envoy_for(tmp_path, upstream, nowhere, plugin_config()) as lenient:
        assert lenient.get("/orders", {"x-api-key": "k"}).status_code == 200
    with envoy_for(tmp_path, upstream, nowhere, plugin_config(failure_mode_deny=True)) as strict:
        response = strict.get("/orders", {"x-api-key": "k"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert strict.counter("meshguard_rls_errors_total") == 1


@pytest.mark.parametrize("failure_mode_deny,expected", [(False, 200), (True, 503)])
def test_a_hanging_service_is_decided_within_its_timeout(tmp_path, upstream, failure_mode_deny, expected):
    silent = Silent()
    try:
        config = plugin_config(failure_mode_deny=failure_mode_deny, timeout="200ms")
        with envoy_for(tmp_path, upstream, silent.port, config) as envoy:
            started = time.monotonic()
            response = envoy.get("/orders", {"x-api-key": "k"})
            elapsed = time.monotonic() - started
            assert response.status_code == expected
            assert elapsed < 1.0, f"held {elapsed:.2f}s for a 200ms timeout"
    finally:
        silent.stop()


@pytest.mark.parametrize("failure_mode_deny,expected", [(False, 200), (True, 503)])
def test_a_cluster_that_does_not_exist_follows_failure_mode(tmp_path, upstream, failure_mode_deny, expected):
    config = plugin_config(failure_mode_deny=failure_mode_deny)
    config["rate_limits"]["global"]["service"]["cluster"] = "no-such-cluster"
    with Envoy(config, {"upstream": upstream.port}, tmp_path / "missing") as envoy:
        started = time.monotonic()
        assert envoy.get("/orders", {"x-api-key": "k"}).status_code == expected
        assert time.monotonic() - started < 1.0
        assert envoy.counter("meshguard_rls_errors_total") == 1
        assert wait_for(lambda: 'cannot call cluster "no-such-cluster"' in envoy.log())


@pytest.mark.parametrize("mode", ["bytes", "not grpc", "grpc error", "bad message", "truncated"])
@pytest.mark.parametrize("failure_mode_deny,expected", [(False, 200), (True, 503)])
def test_a_service_answering_garbage_follows_failure_mode(tmp_path, upstream, mode, failure_mode_deny, expected):
    hostile = Hostile(mode)
    try:
        config = plugin_config(failure_mode_deny=failure_mode_deny, timeout="500ms")
        with envoy_for(tmp_path, upstream, hostile.port, config) as envoy:
            for _ in range(3):  # each answered at once, and the VM keeps serving
                started = time.monotonic()
                response = envoy.get("/orders", {"x-api-key": "k"})
                assert response.status_code == expected, response.text
                assert time.monotonic() - started < 1.0
            assert hostile.calls >= 1, "the service was never asked"
            assert envoy.counter("meshguard_rls_errors_total") == 3
            assert envoy.process.poll() is None
    finally:
        hostile.stop()
