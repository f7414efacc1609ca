"""Keys and tokens made at test time with PyJWT + cryptography (not the RustCrypto primitives
the filter verifies with), so the filter is checked against an independent JOSE implementation."""

import base64
import json
import os
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.meshguard.test"
AUDIENCE = "orders-api"

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
SYMMETRIC = ["HS256", "HS384", "HS512"]


class Signer:
    """One signing key, named by `kid`, and its public JWK."""

    def __init__(self, alg, kid=None):
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{os.urandom(4).hex()}"
        if alg.startswith(("RS", "PS")):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "ES384":
            self.private = ec.generate_private_key(ec.SECP384R1())
            public = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            public = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        elif alg in SYMMETRIC:
            self.private = os.urandom({"HS256": 32, "HS384": 48, "HS512": 64}[alg])
            public = json.loads(HMACAlgorithm.to_jwk(self.private))
        else:
            raise ValueError(alg)
        public["kid"] = self.kid
        self.jwk = public

    def sign(self, claims=None, headers=None, **overrides):
        payload = default_claims()
        payload.update(claims or {})
        payload.update(overrides)
        payload = {k: v for k, v in payload.items() if v is not None}
        all_headers = {"kid": self.kid}
        all_headers.update(headers or {})
        all_headers = {k: v for k, v in all_headers.items() if v is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=all_headers)

    def sign_bytes(self, payload, headers=None):
        """A token over exactly these payload bytes: JSON as written (`1e2` stays `1e2`)."""
        return jwt.api_jws.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


def bearer(token):
    """The header that carries `token` as Envoy's jwt_authn and meshguard look for it first."""
    return ("authorization", f"Bearer {token}")


def b64url(data):
    """base64url without padding, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def default_claims():
    now = int(time.time())
    return {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 600}


def jwks(*signers):
    return json.dumps({"keys": [s.jwk for s in signers]})
