"""Claims as headers, side by side with Envoy's own `jwt_authn` (issue 12): one token whose claims
are of every JSON type, sent through meshguard's `claim_to_headers` and through Envoy's, and what
each put on the upstream request. meshguard's rendering is the documented one: strings as they
are, integers as decimal digits, other numbers as JSON renders the double (`1.5`, `1.0`,
`100.0`), booleans `true`/`false`, arrays of strings joined by `,`, and no header for objects or
mixed arrays. What Envoy puts there is printed for the README, not asserted: it is Envoy's."""

import json
import time

from support.envoy import Envoy
from support.jose import ISSUER, Signer, bearer, jwks

# The claims exactly as the token carries them (`1.0` and `1e2` written so, not as Python would).
CLAIMS = {"s": '"a"', "i": "-5", "f": "1.5", "one": "1.0", "big": "1e2", "b": "true", "arr": '["a","b"]', "obj": '{"k":"v"}', "mixed": '["a",1]'}
MESHGUARD_RENDERS = {"s": "a", "i": "-5", "f": "1.5", "one": "1.0", "big": "100.0", "b": "true", "arr": "a,b", "obj": None, "mixed": None}


def claim_to_headers():
    return [{"claim_name": name, "header_name": f"x-claim-{name}"} for name in MESHGUARD_RENDERS]


def jwt_authn_filter(signer):
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"corp": {"issuer": ISSUER, "local_jwks": {"inline_string": jwks(signer)}, "claim_to_headers": claim_to_headers()}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}],
        },
    }


def upstream_claims(envoy, token):
    response = envoy.get("/orders", dict([bearer(token)]))
    assert response.status_code == 200, response.text
    headers = response.json()["headers"]
    return {name: (headers.get(f"x-claim-{name}") or [None])[0] for name in MESHGUARD_RENDERS}


def test_claims_become_headers_as_documented_beside_envoys_jwt_authn(tmp_path, upstream):
    signer = Signer("ES256")
    claims = ",".join(f'"{name}":{text}' for name, text in CLAIMS.items())
    payload = '{"iss":"%s","sub":"alice","exp":%d,%s}' % (ISSUER, int(time.time()) + 600, claims)
    token = signer.sign_bytes(payload.encode())
    config = {
        "providers": {"corp": {"issuer": ISSUER, "local_jwks": {"inline": jwks(signer)}, "claim_to_headers": claim_to_headers()}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}],
    }
    clusters = {"upstream": upstream.port}
    with Envoy(config, clusters, tmp_path / "meshguard") as meshguard, Envoy(None, clusters, tmp_path / "jwt_authn", http_filters=[jwt_authn_filter(signer)]) as native:
        ours, envoys = upstream_claims(meshguard, token), upstream_claims(native, token)
    print(f"\n{'claim':<8} {'token':<12} {'meshguard':<12} Envoy jwt_authn")
    for name, text in CLAIMS.items():
        print(f"{name:<8} {text:<12} {json.dumps(ours[name]):<12} {json.dumps(envoys[name])}")
    assert ours == MESHGUARD_RENDERS
