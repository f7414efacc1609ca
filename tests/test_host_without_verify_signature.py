"""meshguard on a host without Envoy's `verify_signature` foreign function (Envoy < 1.31), made
here from this Envoy by `capability_restriction_config`: every import and export of the module is
allowed but `proxy_call_foreign_function`, so the self-test finds no host crypto. The shipped
module (`make wasm`) has no ECDSA of its own: ES256/ES384 tokens are refused with 401 and the
reason, every other algorithm verifies in Wasm, and on_configure warns once per provider. A module
built with `make wasm WASM_FEATURES=portable-ecdsa` verifies them in Wasm."""

import sys

import pytest

from support.envoy import REPO, VM_FAILURE, WASM, Envoy, meshguard_filter
from support.jose import ASYMMETRIC, AUDIENCE, ISSUER, SYMMETRIC, jwks

sys.path.insert(0, str(REPO / "scripts"))
from wasm_sections import exports, imports  # noqa: E402

REFUSAL = "token algorithm cannot be verified on this host"
ECDSA = ["ES256", "ES384"]


def without_foreign_functions(wasm):
    """Plugin options allowing all `wasm` imports and exports but proxy_call_foreign_function."""
    allowed = [name for _, name in imports(wasm)] + [name for name in exports(wasm) if name.startswith("proxy_")]
    allowed = [name for name in allowed if name != "proxy_call_foreign_function"]
    return {"capability_restriction_config": {"allowed_capabilities": {name: {} for name in allowed}}}


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, upstream, signers):
    config = {
        "providers": {
            "corp": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline": jwks(*signers.values())}},
            "rsa_only": {
                "issuer": "https://rsa.meshguard.test",
                "local_jwks": {"inline": jwks(signers["RS256"])},
                "from_headers": [{"name": "x-rsa-token"}],
            },
        },
        "rules": [{"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"}],
    }
    filters = [meshguard_filter(config, plugin_options=without_foreign_functions(WASM))]
    with Envoy(None, {"upstream": upstream.port}, tmp_path_factory.mktemp("no-verify-signature"), http_filters=filters) as running:
        yield running


def configured_lines(envoy):
    return [line for line in envoy.log().splitlines() if "configured" in line and "meshguard" in line]


def ecdsa_in_wasm(envoy):
    """Whether the module under test was built with portable-ecdsa (its on_configure line says)."""
    lines = configured_lines(envoy)
    assert lines and all("the host has no verify_signature" in line or "this host has none" in line for line in lines), envoy.log()[-2000:]
    return not any("but for ES256/ES384" in line for line in lines)


@pytest.mark.parametrize("alg", [alg for alg in ASYMMETRIC + SYMMETRIC if alg not in ECDSA])
def test_every_other_algorithm_verifies_in_wasm(envoy, signers, alg):
    response = envoy.get("/api/orders", {"authorization": f"Bearer {signers[alg].sign()}"})
    assert response.status_code == 200, (response.status_code, response.text)


@pytest.mark.parametrize("alg", ECDSA)
def test_an_ecdsa_token_is_refused_with_the_reason_unless_the_module_verifies_it(envoy, signers, alg):
    good = signers[alg].sign()
    header, payload, _ = good.split(".")
    forged = f"{header}.{payload}.{'A' * (86 if alg == 'ES256' else 128)}"
    for token in (good, forged):
        response = envoy.get("/api/orders", {"authorization": f"Bearer {token}"})
        if token == good and ecdsa_in_wasm(envoy):
            assert response.status_code == 200, (response.status_code, response.text)
            continue
        assert response.status_code == 401, (response.status_code, response.text)
        if not ecdsa_in_wasm(envoy):
            assert response.headers["www-authenticate"] == f'Bearer error="invalid_token", error_description="{REFUSAL}"'
            assert response.json()["reason"] == REFUSAL
    assert not VM_FAILURE.search(envoy.log())


def test_on_configure_warns_once_for_each_provider_with_ecdsa_keys(envoy):
    warnings = [line for line in envoy.log().splitlines() if "tokens will be refused" in line]
    if ecdsa_in_wasm(envoy):
        assert warnings == []
        return
    # One line per provider and configure (one per worker VM): "corp" only, never "rsa_only".
    assert warnings, envoy.log()[-2000:]
    assert len(warnings) == len(configured_lines(envoy))
    for line in warnings:
        assert (
            'provider "corp": its ES256/ES384 tokens will be refused (401): ECDSA needs Envoy ≥ 1.31\'s '
            "verify_signature, which this host lacks, or a module built with --features portable-ecdsa"
        ) in line
