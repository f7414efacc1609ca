"""What happens when meshguard's Wasm VM fails while running, in real Envoy. A bug that panics
aborts the module and traps the VM; no request input can do that to the real filter (fuzzing and
the no-panic rule see to it), so a test-only build (`make trap-wasm`, feature `test-trap`) traps
when a request carries `x-meshguard-test-trap`. Envoy's `failure_policy` (Istio's
`failStrategy`) decides what follows, and a reloaded VM keeps what lives in shared data
(rate-limit buckets, fetched keys): README, "Fail open or fail closed"."""

import pytest

from support.envoy import FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD, REPO, Envoy, meshguard_filter, wait_for
from support.jose import ISSUER, Signer, jwks
from support.servers import Idp

TRAP_WASM = REPO / "target" / "test-trap" / "wasm32-wasip1" / "release" / "meshguard.wasm"
TRAP = {"x-meshguard-test-trap": "1"}


@pytest.fixture(scope="module")
def signer():
    return Signer("ES256")


def auth_config(signer):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "local_jwks": {"inline": jwks(signer)},
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}],
    }


def trap_envoy(tmp_path, clusters, config, plugin_options):
    """Envoy running the trap build with `config` and Envoy's PluginConfig `plugin_options`."""
    if not TRAP_WASM.exists():
        pytest.fail(f"{TRAP_WASM} is missing: run the tests with 'make test'")
    # One worker: the trap kills the only VM serving requests.
    filters = [meshguard_filter(config, wasm=TRAP_WASM, plugin_options=plugin_options)]
    return Envoy(None, clusters, tmp_path, concurrency=1, http_filters=filters)


def reached_upstream(response):
    return response.status_code == 200 and "headers" in response.json()


def test_the_trap_build_works_like_the_real_filter_until_told_to_trap(tmp_path, upstream, signer):
    with trap_envoy(tmp_path, {"upstream": upstream.port}, auth_config(signer), FAIL_CLOSED) as envoy:
        token = {"authorization": f"Bearer {signer.sign()}"}
        allowed = envoy.get("/orders", token)
        assert reached_upstream(allowed) and allowed.json()["headers"]["x-user"] == ["alice"]
        assert envoy.get("/orders").status_code == 401
        # The request that hit the bug gets Envoy's empty 503, whatever the failure policy.
        trapped = envoy.get("/orders", {**token, **TRAP})
        assert trapped.status_code == 503 and trapped.text == ""
        panic, trap = "panicked at", "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
        assert wait_for(lambda: panic in envoy.log() and trap in envoy.log()), "the panic and the trap are in Envoy's log"
        assert "trapping as asked" in envoy.log()


def test_fail_closed_refuses_every_later_request(tmp_path, upstream, signer):
    with trap_envoy(tmp_path, {"upstream": upstream.port}, auth_config(signer), FAIL_CLOSED) as envoy:
        token = {"authorization": f"Bearer {signer.sign()}"}
        assert envoy.get("/orders", token).status_code == 200
        assert envoy.get("/orders", TRAP).status_code == 503
        for headers in (token, {}, {"authorization": "Bearer forged"}):
            response = envoy.get("/orders", headers)
            assert response.status_code == 503, response.text
            assert not reached_upstream(response)


def test_fail_open_passes_later_requests_without_the_filter(tmp_path, upstream, signer):
    # Why FAIL_OPEN must never guard auth: once the VM is gone, a request with no token
    # reaches the service, and nothing strips client-sent identity headers.
    with trap_envoy(tmp_path, {"upstream": upstream.port}, auth_config(signer), FAIL_OPEN) as envoy:
        assert envoy.get("/orders").status_code == 401
        assert envoy.get("/orders", TRAP).status_code == 503
        response = envoy.get("/orders", {"x-user": "mallory"})
        assert reached_upstream(response), response.text
        assert response.json()["headers"]["x-user"] == ["mallory"]


def test_fail_reload_starts_a_new_vm_for_later_requests(tmp_path, upstream, signer):
    with trap_envoy(tmp_path, {"upstream": upstream.port}, auth_config(signer), FAIL_RELOAD) as envoy:
        token = {"authorization": f"Bearer {signer.sign()}"}
        assert envoy.get("/orders", token).status_code == 200
        assert envoy.get("/orders", TRAP).status_code == 503
        # Until the new VM is up (the back-off), requests are refused as with FAIL_CLOSED.
        assert envoy.get("/orders", token).status_code in (200, 503)
        # The reloaded VM is the whole filter again: auth enforced, claims forwarded.
        assert wait_for(lambda: envoy.get("/orders").status_code == 401, timeout=10, interval=0.2), envoy.log()[-3000:]
        allowed = envoy.get("/orders", token)
        assert reached_upstream(allowed) and allowed.json()["headers"]["x-user"] == ["alice"]
        # And it can fail and come back again.
        assert envoy.get("/orders", TRAP).status_code == 503
        assert wait_for(lambda: envoy.get("/orders", token).status_code == 200, timeout=10, interval=0.2)
        assert envoy.get("/orders").status_code == 401
        assert envoy.stat("wasm.meshguard.vm_reload_success") == 2


def test_rate_limit_buckets_outlive_a_reloaded_vm(tmp_path, upstream, signer):
    # Buckets live in Envoy's shared data, outside the VM: a crash does not hand out fresh tokens.
    config = auth_config(signer)
    config["rate_limits"] = {"per_user": {"key": "claim:sub", "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h"}}}
    config["rules"][0]["rate_limits"] = ["per_user"]
    with trap_envoy(tmp_path, {"upstream": upstream.port}, config, FAIL_RELOAD) as envoy:
        token = {"authorization": f"Bearer {signer.sign()}"}
        assert [envoy.get("/orders", token).status_code for _ in range(3)] == [200, 200, 429]
        assert envoy.get("/orders", TRAP).status_code == 503
        assert wait_for(lambda: envoy.get("/orders").status_code == 401, timeout=10, interval=0.2)
        assert envoy.get("/orders", token).status_code == 429
        assert envoy.stat("wasm.meshguard.vm_reload_success") == 1


def test_a_reloaded_vm_takes_the_fetched_keys_from_shared_data(tmp_path, upstream, signer):
    idp = Idp(jwks(signer)).start()
    try:
        config = auth_config(signer)
        config["providers"]["corp"].pop("local_jwks")
        config["providers"]["corp"]["remote_jwks"] = {"cluster": "idp", "uri": "http://idp.meshguard.test/jwks.json", "timeout": "1s", "cache_duration": "10m"}
        with trap_envoy(tmp_path, {"upstream": upstream.port, "idp": idp.port}, config, FAIL_RELOAD) as envoy:
            token = {"authorization": f"Bearer {signer.sign()}"}
            assert envoy.get("/orders", token).status_code == 200
            assert envoy.get("/orders", TRAP).status_code == 503
            assert wait_for(lambda: envoy.get("/orders", token).status_code == 200, timeout=10, interval=0.2)
            assert idp.fetches == 1, "the new VM fetched the keys again"
    finally:
        idp.stop()
