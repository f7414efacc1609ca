"""Live configuration, the way Istio delivers a WasmPlugin: Envoy gets meshguard's filter config
through extension config discovery (ECDS), here from a file. A new pluginConfig applies without
a restart; one meshguard refuses is rejected by Envoy and the last good one keeps serving; and
no request in flight fails while the configuration changes under it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.envoy import Envoy, meshguard_ecds_filter, publish_ecds, wait_for

ECDS_STATS = "extension_config_discovery.http_filter.meshguard"

# Version A lets /api/ through and refuses the rest; version B opens /admin too.
VERSION_A = {
    "rules": [{"name": "api", "match": {"prefix": "/api/"}, "allow_unauthenticated": True}],
    "unmatched": "deny",
}
VERSION_B = {
    "rules": [
        {"name": "api", "match": {"prefix": "/api/"}, "allow_unauthenticated": True},
        {"name": "admin", "match": {"prefix": "/admin"}, "allow_unauthenticated": True},
    ],
    "unmatched": "deny",
}
REFUSED = {
    "rules": [{"name": "api", "match": {"prefix": "/api/"}, "allow_unauthenticated": True}],
    "rate_limits": {"per_ip": {"key": "client_ip", "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1 sec"}}},
}


@pytest.fixture
def ecds_envoy(tmp_path, upstream):
    resource = tmp_path / "ecds" / "meshguard.json"
    resource.parent.mkdir()
    publish_ecds(resource, VERSION_A)
    envoy = Envoy(None, {"upstream": upstream.port}, tmp_path, http_filters=[meshguard_ecds_filter(resource)])
    with envoy:
        envoy.resource = resource
        yield envoy


def test_a_new_plugin_config_applies_without_restart(ecds_envoy):
    pid = ecds_envoy.process.pid
    assert ecds_envoy.get("/api/orders").status_code == 200
    assert ecds_envoy.get("/admin").status_code == 403

    publish_ecds(ecds_envoy.resource, VERSION_B)
    assert wait_for(lambda: ecds_envoy.get("/admin").status_code == 200), "version B never applied"
    assert ecds_envoy.process.pid == pid and ecds_envoy.process.poll() is None
    assert ecds_envoy.stat(f"{ECDS_STATS}.config_reload") >= 2

    publish_ecds(ecds_envoy.resource, VERSION_A)
    assert wait_for(lambda: ecds_envoy.get("/admin").status_code == 403), "back to version A never applied"


def test_a_refused_plugin_config_keeps_the_last_good_one_serving(ecds_envoy):
    publish_ecds(ecds_envoy.resource, VERSION_B)
    assert wait_for(lambda: ecds_envoy.get("/admin").status_code == 200)
    failures = ecds_envoy.stat(f"{ECDS_STATS}.config_fail") or 0

    publish_ecds(ecds_envoy.resource, REFUSED)
    assert wait_for(lambda: (ecds_envoy.stat(f"{ECDS_STATS}.config_fail") or 0) > failures), "Envoy did not reject the update"
    assert wait_for(
        lambda: 'configuration refused: rate_limits.per_ip.token_bucket.fill_interval: invalid duration "1 sec"' in ecds_envoy.log()
    ), "meshguard's reason is not in Envoy's log"
    # Still version B, in the same process.
    assert ecds_envoy.process.poll() is None
    assert ecds_envoy.get("/admin").status_code == 200
    assert ecds_envoy.get("/api/orders").status_code == 200
    assert ecds_envoy.get("/other").status_code == 403


def test_no_request_in_flight_fails_while_the_config_changes(ecds_envoy):
    stop = threading.Event()
    outcomes = []
    lock = threading.Lock()

    def steady_client():
        session = requests.Session()  # keep-alive: swaps happen under open connections
        while not stop.is_set():
            try:
                status = session.get(ecds_envoy.url("/api/orders"), timeout=10).status_code
            except requests.RequestException as err:
                status = repr(err)
            with lock:
                outcomes.append(status)

    def held_request():
        # Held by the upstream for 1.5 s, so several swaps happen while it is in flight.
        try:
            return requests.get(ecds_envoy.url("/api/slow"), headers={"x-test-delay-ms": "1500"}, timeout=10).status_code
        except requests.RequestException as err:
            return repr(err)

    with ThreadPoolExecutor(max_workers=12) as pool:
        clients = [pool.submit(steady_client) for _ in range(4)]
        held = []
        for round in range(6):
            held += [pool.submit(held_request) for _ in range(2)]
            time.sleep(0.2)
            publish_ecds(ecds_envoy.resource, VERSION_B if round % 2 == 0 else VERSION_A)
            time.sleep(0.3)
        publish_ecds(ecds_envoy.resource, REFUSED)
        time.sleep(0.5)
        stop.set()
        for client in clients:
            client.result()
        held_statuses = [h.result() for h in held]

    assert ecds_envoy.stat(f"{ECDS_STATS}.config_reload") >= 5, "the configuration did not change under load"
    assert held_statuses == [200] * len(held)
    assert len(outcomes) > 50
    assert set(outcomes) == {200}, {o for o in outcomes if o != 200}


def test_with_no_good_config_yet_requests_are_refused_not_passed(tmp_path, upstream):
    # The first version meshguard sees is refused: there is no last good config to keep, and
    # Envoy answers 500 rather than letting requests past a filter it could not configure.
    resource = tmp_path / "ecds" / "meshguard.json"
    resource.parent.mkdir()
    publish_ecds(resource, REFUSED)
    with Envoy(None, {"upstream": upstream.port}, tmp_path, http_filters=[meshguard_ecds_filter(resource)]) as envoy:
        assert wait_for(lambda: (envoy.stat(f"{ECDS_STATS}.config_fail") or 0) >= 1)
        assert envoy.get("/api/orders").status_code == 500
        publish_ecds(resource, VERSION_A)
        assert wait_for(lambda: envoy.get("/api/orders").status_code == 200), "a good version did not take over"
