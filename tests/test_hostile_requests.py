"""Hostile requests against real Envoy: oversized headers and tokens, thousands of cookies,
duplicate credentials, tokens that are validly signed but malformed inside (duplicate members,
huge numbers, deep nesting, bytes that are not UTF-8), key ids carrying path or SQL
metacharacters, and path tricks around rule prefixes. meshguard answers per the behaviour table,
never lets an ambiguous request through, and its VM never fails."""

import hashlib
import hmac
import http.client
import json
import time

import pytest

from support.envoy import Envoy
from support.jose import AUDIENCE, ISSUER, Signer, b64url, jwks

SECRET = b"hostile-requests-hmac-secret-0123456789"
KID = "hs"




def hs256(header_json, payload_json):
    """A token over exactly these header and payload bytes, with a valid HS256 signature."""
    signing_input = f"{b64url(header_json)}.{b64url(payload_json)}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(**extra):
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    body.update(extra)
    return json.dumps(body).encode()


HEADER = json.dumps({"alg": "HS256", "kid": KID}).encode()


@pytest.fixture(scope="module")
def es256():
    return Signer("ES256")


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, upstream, es256):
    oct_key = {"kty": "oct", "kid": KID, "alg": "HS256", "k": b64url(SECRET)}
    keys = json.loads(jwks(es256))
    keys["keys"].append(oct_key)
    config = {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline": json.dumps(keys)},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-api-token"}],
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": True},
            {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp"},
        ],
        "unmatched": "deny",
    }
    with Envoy(config, {"upstream": upstream.port}, tmp_path_factory.mktemp("hostile")) as envoy:
        yield envoy
        # Whatever was sent, the filter never failed: no panic, no failed VM callback.
        assert not envoy.vm_failures(), "\n".join(envoy.vm_failures())
        assert envoy.process.poll() is None


def raw(envoy, path, headers=()):
    """Sends exactly these headers (repeats included); returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listener_port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def bearer(token):
    return [("Authorization", f"Bearer {token}")]


def test_a_well_formed_hs256_token_is_allowed(envoy):
    # The control for the crafted tokens below: same key, same signing code.
    assert raw(envoy, "/api/orders", bearer(hs256(HEADER, claims())))[0] == 200


def test_headers_over_envoys_limit_are_refused_before_meshguard(envoy):
    status, _, _ = raw(envoy, "/api/orders", bearer("a" * 100_000))
    assert status == 431
    assert raw(envoy, "/healthz")[0] == 200


def test_a_50_kb_token_gets_401_not_a_crash(envoy):
    status, headers, body = raw(envoy, "/api/orders", bearer("e" * 50_000))
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert b"eeee" not in body, "the reply never echoes the token"


def test_the_session_cookie_is_found_among_thousands(envoy, es256):
    crowd = "; ".join(f"c{i}=v{i}" for i in range(2000))
    assert raw(envoy, "/api/orders", [("Cookie", f"{crowd}; session={es256.sign()}")])[0] == 200
    assert raw(envoy, "/api/orders", [("Cookie", f"{crowd}; session=forged")])[0] == 401
    assert raw(envoy, "/api/orders", [("Cookie", crowd)])[0] == 401


def test_two_authorization_headers_with_different_tokens_are_refused(envoy, es256):
    token = es256.sign()
    for first, second in ((token, es256.sign(sub="mallory")), (es256.sign(sub="mallory"), token), (token, "forged")):
        status, headers, _ = raw(envoy, "/api/orders", bearer(first) + bearer(second))
        assert status == 401, "two credentials are ambiguous: never pick one"
        assert 'error="invalid_token"' in headers["www-authenticate"]
    # The same token twice is one credential (as the same token in a header and a parameter).
    assert raw(envoy, "/api/orders", bearer(token) + bearer(token))[0] == 200


def test_a_repeated_custom_token_header_with_different_tokens_is_refused(envoy, es256):
    # Envoy joins a repeated Authorization header, but keeps other repeated headers apart and
    # hands a filter only the first one it asks for: meshguard reads them all.
    token = es256.sign()
    assert raw(envoy, "/api/orders", [("x-api-token", token)])[0] == 200
    status, headers, _ = raw(envoy, "/api/orders", [("x-api-token", token), ("x-api-token", es256.sign(sub="mallory"))])
    assert status == 401
    assert 'error_description="more than one token in the request"' in headers["www-authenticate"]


def test_a_token_in_two_places_is_refused(envoy, es256):
    token = es256.sign()
    status, _, _ = raw(envoy, f"/api/orders?access_token={es256.sign(sub='mallory')}", bearer(token))
    assert status == 401


CRAFTED = {
    "duplicate claim": (HEADER, b'{"iss":"%s","sub":"alice","sub":"root","aud":"%s","exp":%d}' % (ISSUER.encode(), AUDIENCE.encode(), int(time.time()) + 600)),
    "duplicate header member": (b'{"alg":"HS256","kid":"hs","alg":"none"}', claims()),
    "huge exp": (HEADER, claims().replace(b'"exp": ', b'"exp": 1e400, "x": ')),
    "deeply nested claim": (HEADER, claims()[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "payload not UTF-8": (HEADER, claims()[:-1] + b', "name": "\xff\xfe"}'),
    "payload not JSON": (HEADER, b"\x00\x01\x02"),
    "claims an array": (HEADER, b"[1, 2, 3]"),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_validly_signed_but_malformed_tokens_get_401(envoy, name):
    header, payload = CRAFTED[name]
    status, headers, _ = raw(envoy, "/api/orders", bearer(hs256(header, payload)))
    assert status == 401, name
    assert 'error="invalid_token"' in headers["www-authenticate"]


def test_an_exp_beyond_any_clock_is_a_far_future_expiry(envoy):
    # A signed NumericDate of 10^30 s is read as "expires after any date we can name", as a
    # float of that size is; an unrepresentable one (1e400) is refused above.
    assert raw(envoy, "/api/orders", bearer(hs256(HEADER, claims(exp=10**30))))[0] == 200


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR 1=1 --", "%00%0a", "k" * 4000, "🙂"])
def test_key_ids_with_metacharacters_are_just_unknown(envoy, es256, kid):
    status, headers, _ = raw(envoy, "/api/orders", bearer(es256.sign(headers={"kid": kid})))
    assert status == 401
    assert "token key id is not known" in headers["www-authenticate"]


# Envoy normalises the path before meshguard sees it (normalize_path, merge_slashes, as the
# shipped envoy/envoy.yaml sets them): dot segments, %2e and doubled slashes cannot move a
# request out from under a rule. What is left unusual matches no rule and is denied.
PATHS = [
    ("/api/../healthz", 200),
    ("/api/%2e%2e/healthz", 200),
    ("/healthz/../api/orders", 401),
    ("/healthz/%2E%2E/api/orders", 401),
    ("//api//orders", 401),
    ("/./api/./orders", 401),
    ("/API/orders", 403),
    ("/api;x=1/orders", 403),
    ("/healthz;x=1", 403),
    ("/healthz?x=/api/", 200),
    ("/api/orders?/healthz", 401),
]


@pytest.mark.parametrize("path, status", PATHS)
def test_path_tricks_around_rule_prefixes(envoy, path, status):
    assert raw(envoy, path)[0] == status
