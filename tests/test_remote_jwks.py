"""Remote JWKS in real Envoy (2 workers) against a real IdP that can be healthy, down, slow or
hostile (HTML, 10 MB, keys of the wrong types, JSON nested 10,000 deep), or a cluster that does
not exist: requests wait for the first keys, all workers share one fetch, last good keys are
kept, a rotated key works without a restart, unknown kids cannot hammer the IdP, and no request
is held beyond the fetch timeout."""

import concurrent.futures
import json
import os
import time

import pytest
import requests

from support.envoy import Envoy, wait_for
from support.jose import ISSUER, Signer, jwks
from support.servers import Idp, free_port


def plugin_config(cache_duration="10m", timeout="500ms"):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "remote_jwks": {"cluster": "idp", "uri": "http://idp.meshguard.test/.well-known/jwks.json", "timeout": timeout, "cache_duration": cache_duration},
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}],
    }


@pytest.fixture
def keys():
    return {"current": Signer("ES256"), "next": Signer("RS256")}


@pytest.fixture
def idp(keys):
    server = Idp(jwks(keys["current"])).start()
    yield server
    server.stop()


def start_envoy(tmp_path, upstream, idp_port, **config):
    return Envoy(plugin_config(**config), {"upstream": upstream.port, "idp": idp_port}, tmp_path).start()


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def test_first_request_waits_for_keys_and_is_allowed(tmp_path, upstream, idp, keys):
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        assert idp.fetches == 0, "keys are fetched when first needed"
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        assert response.status_code == 200, response.text
        assert response.json()["headers"]["x-user"] == ["alice"]
        assert idp.fetches == 1
        assert envoy.counter("meshguard_jwks_fetches_total") == 1
        assert envoy.counter("meshguard_jwks_fetch_failures_total", wait=False) == 0


def test_one_fetch_serves_every_worker(tmp_path, upstream, idp, keys):
    idp.mode, idp.delay = "slow", 0.2  # keep the fetch in flight while requests pile up
    token = keys["current"].sign()
    with start_envoy(tmp_path, upstream, idp.port) as envoy:

        def one(_):
            # A fresh connection each: Envoy spreads them over both workers.
            return requests.get(envoy.url("/orders"), headers=bearer(token), timeout=10).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(one, range(48)))
        assert statuses == [200] * 48
        assert idp.fetches == 1, f"{idp.fetches} JWKS fetches for one key set"


def test_idp_down_and_no_keys_gives_503_with_retry_after(tmp_path, upstream, keys):
    token = keys["current"].sign()
    with start_envoy(tmp_path, upstream, free_port()) as envoy:
        response = envoy.get("/orders", bearer(token))
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"] == "unavailable"
        assert token not in response.text
        assert envoy.counter("meshguard_jwks_fetch_failures_total") >= 1


@pytest.mark.parametrize("mode", ["garbage", "error", "empty"])
def test_broken_idp_and_no_keys_gives_503(tmp_path, upstream, idp, keys, mode):
    idp.mode = mode
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        assert response.status_code == 503
        assert "retry-after" in response.headers


# Documents an IdP (or whatever answers in its place) might serve: none has a usable key.
WRONG_TYPES = {
    "keys is an object": b'{"keys":{"kty":"EC","crv":"P-256"}}',
    "document is an array": b'[{"kty":"EC"}]',
    "document is null": b"null",
    "members of the wrong type": b'{"keys":[{"kty":"EC","crv":"P-256","kid":7,"x":1,"y":[]}]}',
    "RSA modulus is a number": b'{"keys":[{"kty":"RSA","kid":"r","n":12345,"e":"AQAB"}]}',
    "kty is a number": b'{"keys":[{"kty":5}]}',
    "nested 10,000 deep": b'{"keys":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "not UTF-8": b'{"keys":[{"kty":"\xff\xfe"}]}',
}


@pytest.mark.parametrize("body", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_an_idp_serving_keys_of_the_wrong_types_gives_503_with_the_reason_logged(tmp_path, upstream, idp, keys, body):
    idp.mode, idp.body = "body", body
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        for _ in range(2):  # the VM is still serving after the first refusal
            response = envoy.get("/orders", bearer(keys["current"].sign()))
            assert response.status_code == 503, response.text
            assert "retry-after" in response.headers
        assert wait_for(lambda: "JWKS from http://idp.meshguard.test/.well-known/jwks.json refused" in envoy.log())
        assert envoy.counter("meshguard_jwks_fetch_failures_total") >= 1
        assert envoy.process.poll() is None


def test_a_10_mb_jwks_is_refused_unread_within_the_timeout(tmp_path, upstream, idp, keys):
    idp.mode = "huge"
    with start_envoy(tmp_path, upstream, idp.port, timeout="2s") as envoy:
        started = time.monotonic()
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 3.5
        assert wait_for(lambda: "over 262144" in envoy.log()), envoy.log()[-2000:]
        # Envoy buffered the body for the call; meshguard never copied it into the VM.
        assert envoy.stat("server.memory_allocated") < 40 * 2**20


def test_a_set_with_one_good_key_is_used_and_the_others_are_reported(tmp_path, upstream, idp, keys):
    good = json.loads(jwks(keys["current"]))["keys"]
    idp.mode = "body"
    idp.body = json.dumps({"keys": [{"kty": "RSA", "kid": "broken", "n": 12345, "e": "AQAB"}, *good, {"kty": "OKP", "crv": "X25519", "x": "AAAA"}]}).encode()
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        assert response.status_code == 200, response.text
        assert wait_for(lambda: 'key 0: "n" is not a string; key left out' in envoy.log())
        assert "key 2:" in envoy.log()


def test_a_jwks_cluster_that_does_not_exist_gives_503_at_once(tmp_path, upstream, keys):
    config = plugin_config()
    config["providers"]["corp"]["remote_jwks"]["cluster"] = "no-such-cluster"
    with Envoy(config, {"upstream": upstream.port}, tmp_path) as envoy:
        started = time.monotonic()
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 1.0
        assert wait_for(lambda: 'cannot call cluster "no-such-cluster" for JWKS' in envoy.log())


def test_idp_slower_than_the_timeout_gives_503_within_the_timeout(tmp_path, upstream, idp, keys):
    idp.mode, idp.delay = "slow", 3.0
    with start_envoy(tmp_path, upstream, idp.port, timeout="500ms") as envoy:
        started = time.monotonic()
        response = envoy.get("/orders", bearer(keys["current"].sign()))
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert elapsed < 2.5, f"request held {elapsed:.2f}s for a 500ms JWKS timeout"


def test_recovers_once_the_idp_is_back(tmp_path, upstream, keys):
    port = free_port()
    token = keys["current"].sign()
    with start_envoy(tmp_path, upstream, port) as envoy:
        assert envoy.get("/orders", bearer(token)).status_code == 503
        idp = Idp(jwks(keys["current"]), port=port).start()
        try:
            deadline = time.monotonic() + 10
            status = None
            while time.monotonic() < deadline:
                status = envoy.get("/orders", bearer(token)).status_code
                if status == 200:
                    break
                time.sleep(0.3)
            assert status == 200
        finally:
            idp.stop()


@pytest.mark.parametrize("failure,logged", [
    ("down", "JWKS fetch from"),
    ("garbage", "keeping the last good keys"),
    ("huge", "over 262144"),
    ("wrong types", "keeping the last good keys"),
])
def test_last_good_keys_are_kept_while_the_idp_fails(tmp_path, upstream, idp, keys, failure, logged):
    token = keys["current"].sign()
    with start_envoy(tmp_path, upstream, idp.port, cache_duration="1s") as envoy:
        assert envoy.get("/orders", bearer(token)).status_code == 200
        if failure == "down":
            idp.stop()
        elif failure == "wrong types":
            idp.mode, idp.body = "body", WRONG_TYPES["members of the wrong type"]
        else:
            idp.mode = failure
        fetches_before = idp.fetches
        time.sleep(3.0)  # several refresh attempts fail meanwhile
        for _ in range(10):
            assert envoy.get("/orders", bearer(keys["current"].sign())).status_code == 200
        if failure != "down":
            assert idp.fetches > fetches_before, "stale keys were not refreshed"
        assert logged in envoy.log()


def test_rotated_key_works_without_restart(tmp_path, upstream, idp, keys):
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        assert envoy.get("/orders", bearer(keys["current"].sign())).status_code == 200
        idp.jwks = jwks(keys["current"], keys["next"])
        time.sleep(5.2)  # early refetches are spaced 5 s apart
        response = envoy.get("/orders", bearer(keys["next"].sign()))
        assert response.status_code == 200, response.text
        assert idp.fetches == 2


def test_a_flood_of_unknown_kids_cannot_hammer_the_idp(tmp_path, upstream, idp, keys):
    with start_envoy(tmp_path, upstream, idp.port) as envoy:
        assert envoy.get("/orders", bearer(keys["current"].sign())).status_code == 200
        stranger = Signer("ES256")
        statuses = [envoy.get("/orders", bearer(stranger.sign(headers={"kid": os.urandom(6).hex()}))).status_code for _ in range(40)]
        assert statuses == [401] * 40
        assert idp.fetches <= 2, f"{idp.fetches} fetches for 40 unknown kids"


def test_removed_key_stops_working_after_refresh(tmp_path, upstream, idp, keys):
    token = keys["current"].sign()
    with start_envoy(tmp_path, upstream, idp.port, cache_duration="1s") as envoy:
        assert envoy.get("/orders", bearer(token)).status_code == 200
        idp.jwks = jwks(keys["next"])
        deadline = time.monotonic() + 8
        status = 200
        while time.monotonic() < deadline and status == 200:
            time.sleep(0.5)
            status = envoy.get("/orders", bearer(token)).status_code
        assert status == 401
