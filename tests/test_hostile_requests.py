"""Hostile requests against real Envoy: oversized headers and tokens, thousands of cookies,
duplicate credentials, tokens that are validly signed but malformed inside (duplicate members,
huge numbers, deep nesting, bytes that are not UTF-8), key ids carrying path or SQL
metacharacters, and path tricks around rule prefixes. meshguard answers per the behaviour table,
never lets an ambiguous request through, and its VM never fails."""

import hashlib
import hmac
import json
import time

import pytest

from support.envoy import Envoy, wait_for
from support.jose import AUDIENCE, ISSUER, Signer, b64url, jwks
from support.servers import free_port
from support.wire import Request, send_all

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
    return envoy.raw_get(path, headers)


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


# Issue 12: one request must mean one thing to everyone who reads it. Envoy's router, Envoy's own
# settings and meshguard must agree on the host, the method and a repeated header's value; a
# client must not be able to empty someone's bucket slot by its choice of keys; tokens never
# reach a log line; and whether a token verifies never depends on its algorithm.

PARITY_ALGORITHMS = ["RS256", "ES256", "PS256", "EdDSA"]
LOGGED_SECRETS = ["x-jwt", "x-jwt-payload", "authorization", "cookie"]


@pytest.fixture(scope="module")
def ruled_envoy(tmp_path_factory, upstream, signers):
    """Rules that each read one of a request's facts, every one followed by a rule that lets
    the request through: a request read otherwise than Envoy reads it falls through to 200."""
    config = {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline": jwks(*(signers[alg] for alg in PARITY_ALGORITHMS))},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-jwt"}],
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rules": [
            {"name": "open", "match": {"prefix": "/t/", "headers": {"x-tenant": "public"}}, "allow_unauthenticated": True},
            {"name": "tenants", "match": {"prefix": "/t/"}, "requires": "corp"},
            {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}, "requires": "corp"},
            {"name": "writes", "match": {"path": "/w", "methods": ["POST"]}, "requires": "corp"},
            {"name": "fallback", "match": {"prefix": "/"}, "allow_unauthenticated": True},
        ],
        "access_log": {"enabled": True, "sample_rate": 1.0, "request_headers": LOGGED_SECRETS + ["user-agent"]},
    }
    with Envoy(config, {"upstream": upstream.port}, tmp_path_factory.mktemp("ruled")) as envoy:
        yield envoy
        assert not envoy.vm_failures(), "\n".join(envoy.vm_failures())


def statuses(envoy, *requests, protocol="http1"):
    return [response.status for response in send_all(envoy.listener_port, requests, protocol, connections=1)]


def test_repeated_tenant_header_does_not_select_the_open_rule(ruled_envoy):
    # Envoy's route matching sees a repeated header as its values joined by ",": "acme,public"
    # is not "public", and neither may it be to meshguard.
    def tenants(*values):
        return Request("GET", "/t/orders", [("host", "svc")] + [("x-tenant", value) for value in values])

    assert statuses(ruled_envoy, tenants("public")) == [200]
    assert statuses(ruled_envoy, tenants("acme", "public"), tenants("public", "acme"), tenants("acme")) == [401, 401, 401]


@pytest.mark.parametrize("host", ["admin.example.com", "admin.example.com.", "admin.example.com.:8443", "admin.example.com:", "ADMIN.example.com:8443"])
def test_a_host_spelled_with_a_trailing_dot_or_an_empty_port_is_still_the_admin_host(ruled_envoy, host):
    assert statuses(ruled_envoy, Request("GET", "/orders", [("host", host)])) == [401]


def test_another_host_is_not_the_admin_host(ruled_envoy):
    assert statuses(ruled_envoy, Request("GET", "/orders", [("host", "admin.example.com.evil")])) == [200]


def test_a_lower_case_method_over_http2_selects_the_rule_for_that_method(ruled_envoy):
    # Over HTTP/2 Envoy passes `:method: post` as it came (its HTTP/1 codec refuses it).
    def method(name):
        return Request(name, "/w", [("host", "svc")])

    assert statuses(ruled_envoy, method("POST"), method("post"), method("Post"), method("GET"), protocol="http2") == [401, 401, 401, 200]


def test_a_client_x_user_with_an_underscore_never_reaches_the_upstream(ruled_envoy, signers):
    # Envoy's default (headers_with_underscores_action ALLOW) passes x_user on, and an upstream
    # that reads headers loosely takes it for x-user: meshguard removes it as it removes x-user.
    token = signers["ES256"].sign()
    sent = [("host", "svc"), ("x_user", "root"), ("x-user", "root")] + bearer(token)
    [response] = send_all(ruled_envoy.listener_port, [Request("GET", "/t/orders", sent)])
    seen = response.upstream_echo()
    assert seen is not None, response.describe()
    assert seen["headers"]["x-user"] == ["alice"]
    assert "x_user" not in seen["headers"], seen["headers"]


def test_the_shipped_envoy_config_drops_headers_with_underscores(tmp_path, upstream):
    # envoy/envoy.yaml sets headers_with_underscores_action: DROP_HEADER: Envoy drops the header
    # before any filter runs (REJECT_REQUEST would refuse real browsers' SDK and CDN headers).
    with Envoy.shipped({"upstream": upstream.port, "idp": free_port()}, tmp_path) as envoy:
        response = envoy.get("/healthz", {"x_user": "root", "x-other": "kept"})
        assert response.status_code == 200
        headers = response.json()["headers"]
        assert "x_user" not in headers and headers["x-other"] == ["kept"], headers


def test_tokens_never_reach_the_access_log(ruled_envoy, signers):
    signer = signers["ES256"]
    tokens = {name: signer.sign(sub=name) for name in ("verified", "refused", "in-authorization", "in-cookie")}
    forged = tokens["refused"][:-4] + ("AAAA" if not tokens["refused"].endswith("AAAA") else "BBBB")
    sent = {
        "verified": [("x-jwt", tokens["verified"])],
        "refused": [("x-jwt", forged)],
        "beside": [("x-jwt", tokens["verified"])] + bearer(tokens["in-authorization"]),
        "cookie": [("x-jwt", tokens["verified"]), ("cookie", f"session={tokens['in-cookie']}")],
    }
    requests = [Request("GET", "/t/orders", [("host", "svc"), ("user-agent", f"agent-{name}"), ("x-request-id", f"secret-{name}")] + headers) for name, headers in sent.items()]
    # Two tokens are refused; a session cookie is no token location of this provider.
    assert statuses(ruled_envoy, *requests) == [200, 401, 401, 200]
    assert wait_for(lambda: {f"secret-{name}" for name in sent} <= {r.get("request_id") for r in ruled_envoy.meshguard_records()}, timeout=5)
    # Each record holds the headers it was asked for (user-agent is there), never a credential.
    agents = {r["request_id"]: r.get("request_headers", {}).get("user-agent") for r in ruled_envoy.meshguard_records()}
    assert {f"secret-{name}": agents.get(f"secret-{name}") for name in sent} == {f"secret-{name}": f"agent-{name}" for name in sent}
    # No value of x-jwt, x-jwt-payload, authorization or cookie: none holds a token's payload
    # segment (x-jwt-payload is one) or its signature.
    log = ruled_envoy.log()
    leaked = [name for name, token in {**tokens, "forged": forged}.items() if any(part in log for part in token.split(".")[1:])]
    assert not leaked, f"tokens, or parts of them, in Envoy's log: {leaked}"


def test_tokens_with_odd_claim_types_get_the_same_status_whatever_the_algorithm(ruled_envoy, signers):
    # A claim of an unexpected type (iat a string, jti and nonce numbers) and header members of
    # odd types (cty a number, an embedded jwk) are decided once, not by each verifier.
    statuses_by_alg = {}
    for alg in PARITY_ALGORITHMS:
        signer = signers[alg]
        token = signer.sign(claims={"iat": "yesterday", "jti": 7, "nonce": 7}, headers={"cty": 5, "jwk": signer.jwk})
        [statuses_by_alg[alg]] = statuses(ruled_envoy, Request("GET", "/t/orders", [("host", "svc")] + bearer(token)))
    assert statuses_by_alg == {alg: 200 for alg in PARITY_ALGORITHMS}


def fnv1a_slot(policy, key, slots=4096):
    """The slot of a bucket key as meshguard picks it today (src/hash.rs fnv1a,
    src/ratelimit/slots.rs slot_name): FNV-1a 64 over the policy name and the key, each part
    followed by the byte 0xff, modulo the policy's 4096 slots."""
    value = 0xCBF29CE484222325
    for part in (policy.encode(), key.encode()):
        for byte in part + b"\xff":
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value % slots


def test_eight_colliding_paths_do_not_refill_a_spent_bucket(tmp_path, upstream):
    # A slot holds eight buckets; a client that spends its bucket, then sends eight keys that
    # land in the same slot, must not get its bucket back full.
    config = {
        "rate_limits": {"per_path": {"key": "path", "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h"}}},
        "rules": [{"name": "rl", "match": {"prefix": "/rl/"}, "allow_unauthenticated": True, "rate_limits": ["per_path"]}],
    }
    # A `path` key is written "=<path>" (src/ratelimit/key.rs).
    target = fnv1a_slot("per_path", "=/rl/search")
    colliding = [path for path in (f"/rl/x{n}" for n in range(1_000_000)) if fnv1a_slot("per_path", f"={path}") == target][:8]
    with Envoy(config, {"upstream": upstream.port}, tmp_path) as envoy:
        assert [envoy.get("/rl/search").status_code for _ in range(3)] == [200, 200, 429]
        assert [envoy.get(path).status_code for path in colliding] == [200] * 8
        assert envoy.get("/rl/search").status_code == 429, f"the spent bucket came back full after {colliding}"
