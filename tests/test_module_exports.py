"""The shipped module exports only the callbacks meshguard implements (scripts/drop_exports.py):
Envoy skips the others (a body enters the VM once per chunk otherwise), and requests and answers
with bodies pass through whole, including a body that arrives while meshguard holds the request."""

import hashlib
import re
import sys
import time

import pytest
import requests

from support.envoy import REPO, WASM, Envoy
from support.jose import ISSUER, Signer, jwks

sys.path.insert(0, str(REPO / "scripts"))
from drop_exports import DROPPED  # noqa: E402
from wasm_sections import exports  # noqa: E402

IMPLEMENTED = ["proxy_on_request_headers", "proxy_on_response_headers", "proxy_on_log", "proxy_on_http_call_response",
               "proxy_on_grpc_receive", "proxy_on_grpc_close", "proxy_on_tick", "proxy_on_configure",
               "proxy_on_delete", "proxy_on_context_create", "proxy_on_memory_allocate"]


def test_the_module_exports_no_callback_meshguard_leaves_to_the_sdk():
    exported = set(exports(str(WASM)))
    assert not exported & set(DROPPED), sorted(exported & set(DROPPED))
    assert set(IMPLEMENTED) <= exported, sorted(set(IMPLEMENTED) - exported)


def test_no_dropped_callback_is_implemented():
    # A callback meshguard starts implementing must come off the list, or Envoy never calls it.
    host = "\n".join(path.read_text() for path in (REPO / "src" / "host").glob("*.rs"))
    implemented = [method for method in DROPPED.values() if re.search(rf"\bfn {method}\b", host)]
    assert implemented == [], f"implemented in src/host/ but dropped from the module's exports: {implemented}"


@pytest.fixture(scope="module")
def signer():
    return Signer("ES256")


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, upstream, signer):
    config = {
        "providers": {"corp": {"issuer": ISSUER, "local_jwks": {"inline": jwks(signer)},
                               "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
        "rate_limits": {
            # One token per 4 s: a request right after the first is held for seconds, however
            # busy the machine.
            "held": {"key": ["header:x-api-key"], "mode": "delay", "max_delay": "10s",
                     "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "4s"}},
        },
        "rules": [
            {"name": "held", "match": {"prefix": "/held"}, "allow_unauthenticated": True, "rate_limits": ["held"]},
            {"name": "api", "match": {"prefix": "/"}, "requires": "corp"},
        ],
    }
    with Envoy(config, {"upstream": upstream.port}, tmp_path_factory.mktemp("exports")) as running:
        yield running


def test_a_long_request_body_and_a_long_answer_pass_whole(envoy, signer):
    body = bytes(range(256)) * (4 * 4096)  # 4 MiB: many chunks through Envoy
    response = envoy.request("POST", "/api/upload", {"authorization": f"Bearer {signer.sign(sub='alice')}",
                                                     "x-test-response-bytes": str(2 * 2**20)}, data=body)
    assert response.status_code == 200
    echo = response.json()
    assert echo["headers"]["x-user"] == ["alice"]
    assert (echo["body_length"], echo["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert len(echo["padding"]) == 2 * 2**20
    # Refused before any body: the answer is meshguard's.
    refused = envoy.request("POST", "/api/upload", {}, data=body)
    assert refused.status_code == 401


def test_a_body_that_arrives_while_the_request_is_held_reaches_the_upstream_whole(envoy):
    headers = {"x-api-key": "held-with-body"}
    assert envoy.get("/held", headers).status_code == 200  # takes the only token: the next waits ~4 s
    body = b"held body " * 20000
    started = time.monotonic()
    response = requests.post(envoy.url("/held/upload"), headers=headers, data=body, timeout=10)
    assert response.status_code == 200
    assert time.monotonic() - started > 1, "the request was held for the bucket's next token"
    echo = response.json()
    assert (echo["body_length"], echo["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
