"""JWT auth in real Envoy with local JWKS: every row of the behaviour table, every algorithm,
claims as headers, token stripping and anti-spoofing."""

import base64
import hashlib
import hmac
import http.client
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from support.envoy import Envoy
from support.jose import ASYMMETRIC, AUDIENCE, ISSUER, SYMMETRIC, Signer, b64url, jwks

PARTNER_ISSUER = "https://partner.meshguard.test"
LEGACY_ISSUER = "https://legacy.meshguard.test"


@pytest.fixture(scope="module")
def partner():
    return Signer("ES256")


@pytest.fixture(scope="module")
def legacy():
    return Signer("ES256")


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, upstream, signers, partner, legacy):
    corp_keys = jwks(*signers.values())
    config = {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline": corp_keys},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [
                    {"claim_name": "sub", "header_name": "x-user"},
                    {"claim_name": "roles", "header_name": "x-roles"},
                    {"claim_name": "level", "header_name": "x-level"},
                    {"claim_name": "admin", "header_name": "x-admin"},
                    {"claim_name": "org.team", "header_name": "x-team"},
                ],
            },
            "strict": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline": corp_keys}, "algorithms": ["ES256"]},
            "partner": {
                "issuer": PARTNER_ISSUER,
                "local_jwks": {"inline": jwks(partner)},
                "from_headers": [{"name": "x-partner-token"}],
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-partner"}],
            },
            "legacy": {
                "issuer": LEGACY_ISSUER,
                "local_jwks": {"inline": jwks(legacy)},
                "forward": True,
            },
        },
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": True},
            {"name": "either", "match": {"prefix": "/either"}, "requires": {"any": ["corp", "partner"]}},
            {"name": "both", "match": {"prefix": "/both"}, "requires": {"all": ["corp", "partner"]}},
            {"name": "optional", "match": {"prefix": "/optional"}, "requires": "corp", "allow_missing": True},
            {"name": "legacy", "match": {"prefix": "/legacy"}, "requires": "legacy"},
            {"name": "writes", "match": {"prefix": "/api/", "methods": ["POST", "DELETE"]}, "requires": "strict"},
            {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"},
        ],
    }
    with Envoy(config, {"upstream": upstream.port}, tmp_path_factory.mktemp("auth")) as running:
        yield running


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def seen_upstream(response):
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def challenge(response):
    return response.headers.get("www-authenticate")


@pytest.mark.parametrize("alg", ASYMMETRIC + SYMMETRIC)
def test_valid_token_of_every_algorithm_is_allowed(envoy, signers, alg):
    seen = seen_upstream(envoy.get("/api/orders", bearer(signers[alg].sign())))
    assert seen["headers"]["x-user"] == ["alice"]
    assert "authorization" not in seen["headers"]


@pytest.mark.parametrize("alg", ASYMMETRIC + SYMMETRIC)
def test_every_algorithm_accepts_the_same_odd_but_legal_claims(envoy, signers, alg):
    """meshguard reads none of these (`iat` is not checked, `jti`, `nonce` and `cty` are the
    application's, an embedded `jwk` is never used), so neither the host's path (RS*, ES*) nor the
    pure-Rust one (PS*, EdDSA, HS*) may refuse a token for them. The `jwk` is RFC 7515 A.3's."""
    embedded_jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    }
    token = signers[alg].sign(iat="yesterday", jti=7, nonce=7, headers={"cty": 5, "jwk": embedded_jwk})
    seen = seen_upstream(envoy.get("/api/orders", bearer(token)))
    assert seen["headers"]["x-user"] == ["alice"]


def test_the_same_token_is_allowed_again_from_the_cache(envoy, signers):
    token = signers["RS256"].sign()
    for _ in range(20):
        assert envoy.get("/api/orders", bearer(token)).status_code == 200


def test_no_token_gets_401_with_the_rule_as_realm(envoy):
    response = envoy.get("/api/orders")
    assert response.status_code == 401
    assert challenge(response) == 'Bearer realm="api"'
    assert response.json() == {"error": "unauthenticated", "reason": "token is missing"}


REFUSALS = {
    "expired": (lambda s: s["ES256"].sign(exp=int(time.time()) - 120), "token is expired"),
    "not yet valid": (lambda s: s["ES256"].sign(nbf=int(time.time()) + 300), "token is not yet valid"),
    "wrong issuer": (lambda s: s["ES256"].sign(iss="https://evil.test"), "token issuer is not accepted"),
    "unknown kid": (lambda s: s["ES256"].sign(headers={"kid": "no-such-key"}), "token key id is not known"),
    "bad signature": (lambda s: tamper(s["RS256"].sign()), "token signature does not verify"),
    "signature from another key": (lambda s: Signer("ES256", kid=s["ES256"].kid).sign(), "token signature does not verify"),
    "alg none": (lambda s: unsigned_token(), "token algorithm is not allowed"),
    "malformed": (lambda s: "not.a-token", "token is malformed"),
    "crit header": (lambda s: s["ES256"].sign(headers={"crit": ["exp"]}), "token has a critical header that is not supported"),
    "embedded jwk of the attacker": (lambda s: embedded_jwk_attack(s["ES256"]), "token signature does not verify"),
    "hmac with the rsa public key": (lambda s: rsa_hmac_confusion(s["RS256"]), "no key matches the token algorithm"),
}


def tamper(token):
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = b64url(json.dumps(claims).encode())
    return f"{header}.{forged}.{signature}"


def unsigned_token():
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 600}
    return f"{b64url(json.dumps({'alg': 'none'}).encode())}.{b64url(json.dumps(claims).encode())}."


def embedded_jwk_attack(victim):
    """RFC 8725 §3.10: the attacker signs with its own key and offers it in the header."""
    attacker = Signer("ES256", kid=victim.kid)
    return attacker.sign(headers={"jwk": attacker.jwk, "jku": "http://attacker.test/jwks.json"})


def rsa_hmac_confusion(rsa_signer):
    """HS256 keyed with the RSA public key: the classic algorithm-confusion forgery."""
    public_pem = rsa_signer.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "kid": rsa_signer.kid}).encode())
    payload = b64url(json.dumps({"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "exp": now + 600}).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_token_gets_401_invalid_token_with_the_reason(envoy, signers, case):
    make_token, reason = REFUSALS[case]
    token = make_token(signers)
    response = envoy.get("/api/orders", bearer(token))
    assert response.status_code == 401
    assert challenge(response) == f'Bearer error="invalid_token", error_description="{reason}"'
    assert token not in response.text
    assert response.json()["reason"] == reason


def test_algorithm_outside_the_allow_list_gets_401(envoy, signers):
    response = envoy.request("POST", "/api/orders", bearer(signers["RS256"].sign()))
    assert response.status_code == 401
    assert "token algorithm is not allowed" in challenge(response)
    assert envoy.request("POST", "/api/orders", bearer(signers["ES256"].sign())).status_code == 200


def test_wrong_audience_gets_403_insufficient_scope(envoy, signers):
    for aud in ["billing-api", ["billing-api", "other"], None]:
        response = envoy.get("/api/orders", bearer(signers["ES256"].sign(aud=aud)))
        assert response.status_code == 403
        assert challenge(response) == 'Bearer error="insufficient_scope"'
    listed = signers["ES256"].sign(aud=["billing-api", AUDIENCE])
    assert envoy.get("/api/orders", bearer(listed)).status_code == 200


def test_unmatched_request_gets_403(envoy):
    response = envoy.get("/not-in-any-rule")
    assert response.status_code == 403
    assert response.json()["reason"] == "no rule matches the request"


def test_claims_become_headers_like_envoy(envoy, signers):
    token = signers["PS256"].sign(roles=["read", "write"], level=3, admin=False, org={"team": "payments"})
    seen = seen_upstream(envoy.get("/api/orders", bearer(token)))["headers"]
    assert seen["x-user"] == ["alice"]
    assert seen["x-roles"] == ["read,write"]
    assert seen["x-level"] == ["3"]
    assert seen["x-admin"] == ["false"]
    assert seen["x-team"] == ["payments"]
    assert seen["x-jwt-payload"] == [token.split(".")[1]]


def test_client_sent_output_headers_are_removed_on_every_request(envoy, signers):
    spoof = {"x-user": "root", "x-roles": "admin", "x-jwt-payload": "e30", "x-partner": "p"}
    open_seen = seen_upstream(envoy.get("/healthz", spoof))["headers"]
    for header in spoof:
        assert header not in open_seen
    token = signers["ES256"].sign()  # no roles claim: x-roles must be absent, not spoofed
    seen = seen_upstream(envoy.get("/api/orders", {**spoof, **bearer(token)}))["headers"]
    assert seen["x-user"] == ["alice"]
    assert "x-roles" not in seen and "x-partner" not in seen


def raw_get_seen(envoy, path, headers):
    """What the upstream saw of a GET sent with exactly these headers (repeats, case)."""
    status, _, body = envoy.raw_get(path, headers)
    assert status == 200, (status, body)
    return json.loads(body)["headers"]


def test_output_headers_arrive_once_whether_or_not_the_client_sent_them(envoy, signers):
    # meshguard adds a header the client did not send and replaces one it did (issue 15):
    # either way the upstream sees exactly meshguard's value, however the client repeated or
    # cased its own.
    token = signers["ES256"].sign()
    auth = ("authorization", f"Bearer {token}")
    assert raw_get_seen(envoy, "/api/orders", [auth])["x-user"] == ["alice"]
    spoofs = [("X-User", "root"), ("x-user", "admin"), ("x-USER", "r2"), ("X-Jwt-Payload", "e30"), ("x_user", "u")]
    seen = raw_get_seen(envoy, "/api/orders", [spoofs[0], auth, *spoofs[1:]])
    assert seen["x-user"] == ["alice"]
    assert seen["x-jwt-payload"] == [token.split(".")[1]]
    assert "x_user" not in seen and "x-roles" not in seen
    open_seen = raw_get_seen(envoy, "/healthz", spoofs)
    assert not {"x-user", "x-jwt-payload", "x_user"} & set(open_seen)


def test_token_is_removed_from_query_and_cookie(envoy, signers):
    token = signers["ES256"].sign()
    seen = seen_upstream(envoy.get(f"/api/orders?page=2&access_token={token}"))
    assert seen["path"] == "/api/orders?page=2"
    seen = seen_upstream(envoy.get("/api/orders", {"cookie": f"theme=dark; session={token}"}))
    assert seen["headers"]["cookie"] == ["theme=dark"]


def test_forward_keeps_the_token(envoy, legacy):
    token = legacy.sign(iss=LEGACY_ISSUER)
    seen = seen_upstream(envoy.get("/legacy/x", bearer(token)))
    assert seen["headers"]["authorization"] == [f"Bearer {token}"]


def test_any_accepts_either_provider(envoy, signers, partner):
    assert envoy.get("/either", bearer(signers["ES256"].sign())).status_code == 200
    partner_token = partner.sign(iss=PARTNER_ISSUER, sub="acme")
    seen = seen_upstream(envoy.get("/either", {"x-partner-token": partner_token}))
    assert seen["headers"]["x-partner"] == ["acme"]
    assert envoy.get("/either").status_code == 401


def test_all_needs_every_provider(envoy, signers, partner):
    corp = bearer(signers["ES256"].sign())
    partner_header = {"x-partner-token": partner.sign(iss=PARTNER_ISSUER)}
    assert envoy.get("/both", corp).status_code == 401
    assert envoy.get("/both", partner_header).status_code == 401
    assert envoy.get("/both", {**corp, **partner_header}).status_code == 200


def test_allow_missing_admits_no_token_but_never_a_bad_one(envoy, signers):
    assert envoy.get("/optional").status_code == 200
    assert envoy.get("/optional", bearer(signers["ES256"].sign())).status_code == 200
    assert envoy.get("/optional", bearer(signers["ES256"].sign(iss="https://evil.test"))).status_code == 401
    assert envoy.get("/optional", bearer(tamper(signers["ES256"].sign()))).status_code == 401


def test_two_different_tokens_are_refused(envoy, signers):
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=10)
    conn.putrequest("GET", "/api/orders")
    conn.putheader("authorization", f"Bearer {signers['ES256'].sign()}")
    conn.putheader("authorization", f"Bearer {signers['RS256'].sign()}")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 401
    assert "more than one token" in response.getheader("www-authenticate")
    conn.close()


def raw_status(envoy, path):
    """Sends `path` exactly as written (HTTP clients would normalise it themselves)."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=10)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def test_paths_are_normalised_before_rules_match(envoy):
    # /healthz is open; /api/../healthz normalises to it, //api//orders to /api/orders.
    assert raw_status(envoy, "/api/../healthz") == 200
    assert raw_status(envoy, "//api//orders") == 401
    assert raw_status(envoy, "/healthz/../api/orders") == 401


def test_token_without_kid_is_checked_against_every_fitting_key(envoy, signers):
    assert envoy.get("/api/orders", bearer(signers["ES384"].sign(headers={"kid": None}))).status_code == 200


def test_rsa_and_ecdsa_signatures_are_checked_by_the_host(envoy):
    configured = [line for line in envoy.log().splitlines() if "configured" in line and "meshguard" in line]
    assert configured, envoy.log()[-2000:]
    assert all("verified by the host (Envoy verify_signature)" in line for line in configured)
