"""Requests for the authorization differential test: each starts from a scenario aimed at one rule
of tests/support/authz/ (or at nothing), then has zero to three of its facts changed at random to
a near miss (another path, host, port, method, peer, forwarded address, tenant, token or claim).
Everything random comes from one seeded `random.Random`; keys and timestamps are the test's."""

import random
import time
from dataclasses import dataclass, field

from .istio_native import ADMIN_PORT, API_PORT, CORP_ISSUER, PARTNER_ISSUER

# Client certificates by name; None is a TLS connection without one.
IDENTITIES = {
    "no-cert": None,
    "frontend/web": "spiffe://cluster.local/ns/frontend/sa/web",
    "checkout/api": "spiffe://cluster.local/ns/checkout/sa/api",
    "checkout/legacy": "spiffe://cluster.local/ns/checkout/sa/legacy",
    "ops/debug": "spiffe://cluster.local/ns/ops/sa/debug",
    "sre-oncall/pager": "spiffe://cluster.local/ns/sre-oncall/sa/pager",
    "billing/invoicer": "spiffe://cluster.local/ns/billing/sa/invoicer",
    "other-td": "spiffe://partner.example/ns/frontend/sa/web",
}
# Direct peers: 127.0.0.0/30 are the jump hosts of allow-mesh.
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9", "127.10.0.5"]
FORWARDED = [
    None,
    "10.1.2.3",
    "10.99.4.5",
    "203.0.113.50",
    "198.51.100.7",
    "198.51.100.8",
    "192.0.2.1, 203.0.113.9",
    "203.0.113.9, 10.1.2.3",
    "unknown",
]
# Lists of x-tenant header lines: a repeated header, and one line holding a list, are in on purpose.
TENANTS = [[], [], [], [], ["acme"], ["globex"], ["blocked-7"], ["acme-suspended"], ["initech"], ["initech", "acme"], ["acme", "blocked-7"], ["acme,globex"]]
HOSTS = [
    "orders.shop.svc",
    "ORDERS.Shop.svc",
    "orders.shop.svc:8443",
    "reports.corp.test",
    "Reports.Corp.Test",
    "reports.corp.test:9443",
    "api.corp.test",
    "corp.test",
    "reports",
    "evil.example",
]
METHODS = ["GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]
PATHS = [
    "/healthz",
    "/healthz/",
    "/public/logo.png",
    "/public/",
    "/public",
    "/public/../admin",
    "/admin",
    "/admin/",
    "/admin/users",
    "/administrator",
    "/internal",
    "/internal/",
    "/internal/jobs",
    "/internal/jobs/7",
    "/orders",
    "/orders/",
    "/orders/42",
    "/orders/42/items",
    "/orders/42/items/",
    "/orders//items",
    "/orders/42/items/3",
    "/Orders/42",
    "/ordersx",
    "/api",
    "/api/orders",
    "/api/private/keys",
    "/API/orders",
    "/api/refunds",
    "/api/refunds/9",
    "/reports",
    "/reports/q1",
    "/reports/q1/csv",
    "/partner",
    "/partner/",
    "/partner/feeds",
    "/partner/feeds/2026",
    "/office/printer",
    "/office",
    "/x/.git",
    "/index.php",
    "/a//b",
    "/nothing",
]
QUERIES = ["", "", "", "", "?page=2", "?q=/admin"]


@dataclass
class Request:
    id: str
    scenario: str
    method: str
    target: str
    host: str
    port: int
    source: str
    cert: str
    forwarded: str | None = None
    tenant: list = field(default_factory=list)
    token: str | None = None
    token_kind: str = "none"
    claims: dict | None = None

    def header_lines(self):
        lines = [("Host", self.host), ("x-req-id", self.id)]
        if self.token is not None:
            lines.append(("Authorization", f"Bearer {self.token}"))
        if self.forwarded is not None:
            lines.append(("X-Forwarded-For", self.forwarded))
        lines += [("x-tenant", t) for t in self.tenant]
        if self.method in ("POST", "PUT", "PATCH"):
            lines.append(("Content-Length", "0"))
        return lines

    @property
    def repeats_tenant(self):
        return len(set(self.tenant)) > 1

    def with_one_tenant_line(self, index):
        """The same request with only one of its x-tenant lines (another id)."""
        return Request(**{**self.__dict__, "id": f"{self.id}-tenant{index}", "tenant": [self.tenant[index]]})

    def describe(self):
        claims = {k: v for k, v in (self.claims or {}).items() if k not in ("iat", "exp", "iss")}
        return (
            f"{self.id} [{self.scenario}] {self.method} {self.target} Host={self.host} port={self.port} "
            f"peer={self.source} cert={self.cert} xff={self.forwarded!r} x-tenant={self.tenant} "
            f"token={self.token_kind} claims={claims}"
        )


class Tokens:
    """Signs the corpus's tokens: valid ones from either issuer, expired ones, ones signed by an
    impostor key under the real key's id, corp tokens for an audience corp does not accept, and
    tokens from an issuer no rule names."""

    def __init__(self, corp, partner, impostor):
        self.corp, self.partner, self.impostor = corp, partner, impostor
        self.now = int(time.time())

    def sign(self, kind, claims):
        if kind == "stranger":
            # An issuer no jwtRule names: jwt_authn's JwtUnknownIssuer, which allow_missing does
            # not admit (401), as meshguard's `any` with allow_missing.
            payload = {"iss": "https://stranger.example", "iat": self.now - 60, "exp": self.now + 3600, **claims}
            return self.impostor.sign(payload), payload
        issuer = CORP_ISSUER if kind.startswith("corp") else PARTNER_ISSUER
        signer = self.corp if kind.startswith("corp") else self.partner
        payload = {"iss": issuer, "iat": self.now - 60, "exp": self.now + 3600, **claims}
        if kind.endswith("-expired"):
            payload.update(iat=self.now - 7200, exp=self.now - 3600)
        if kind.endswith("-badsig"):
            return self.impostor.sign(payload, headers={"kid": signer.kid}), payload
        return signer.sign(payload), payload


def _claims(rng, issuer):
    claims = {}
    if rng.random() < 0.95:
        claims["sub"] = rng.choice(
            ["alice", "bob", "team/alice", "svc-7"] if issuer == "corp" else ["acme-1", "acme-banned", "acme-ops/bot", "globex-2", "acme-"]
        )
    if issuer == "corp":
        claims["aud"] = rng.choice(["orders-api", "orders-api", "orders-admin", ["orders-admin", "orders-api"], ["x", "orders-admin"]])
    elif rng.random() < 0.6:
        claims["aud"] = rng.choice(["orders-api", "partner-feed", ["orders-api", "partner-feed"]])
    if rng.random() < 0.7:
        claims["groups"] = rng.choice(
            [["staff"], ["eng-backend"], ["eng-interns"], ["eng-backend", "eng-interns"], ["ops", 7], ["suspended", "staff"], "staff", "eng-web", []]
        )
    if rng.random() < 0.5:
        claims["realm"] = rng.choice([{"role": "analyst"}, {"role": "admin"}, {"role": "viewer"}, {"role": ["viewer", "admin"]}, {"roles": "analyst"}, "analyst"])
    if rng.random() < 0.5:
        claims["scope"] = rng.choice(["openid reports:read", "openid", "reports:read orders:write", ["reports:read"], "reports:readonly", "reports:read"])
    if rng.random() < 0.4:
        claims["permission"] = rng.choice(["refunds:write orders:read", "refunds:read", ["refunds:write"], "refunds:write"])
    if rng.random() < 0.5:
        claims["azp"] = rng.choice(["dashboard", "cli-tool", "web", "cli-"])
    return claims


def _token(rng, tokens, kind, claims=None):
    if kind == "none":
        return None, None
    issuer = "corp" if kind.startswith("corp") else "partner"
    claims = {**_claims(rng, issuer), **(claims or {})}
    if kind == "corp-wrong-aud":
        claims["aud"] = rng.choice(["billing-api", ["billing-api", "x"]])
    return tokens.sign(kind, claims)


TOKEN_KINDS = ["none"] * 4 + ["corp"] * 5 + ["partner"] * 4 + ["corp-expired", "partner-expired", "corp-badsig", "partner-badsig", "corp-wrong-aud", "stranger"]

# Scenario name -> the facts that make its rule hold (the rest is random).
SCENARIOS = {
    "public": dict(method="GET", path=["/healthz", "/public/logo.png"]),
    "mesh-orders": dict(method=["GET", "POST"], path=["/orders", "/orders/42", "/orders/42/items"], port=API_PORT, cert=["frontend/web", "checkout/api"]),
    "mesh-billing": dict(method="GET", path=["/orders/42"], port=API_PORT, cert="billing/invoicer", token="corp"),
    "mesh-admin": dict(path=["/admin", "/admin/users", "/internal/jobs/7"], port=ADMIN_PORT, cert=["ops/debug", "sre-oncall/pager"], source=["127.0.0.1", "127.0.0.2"]),
    "jwt-api": dict(path=["/api/orders"], token="corp", claims={"groups": ["eng-backend"], "aud": "orders-api", "sub": "alice"}),
    "refunds": dict(method="POST", path=["/api/refunds", "/api/refunds/9"], host=["orders.shop.svc", "api.corp.test"], token=["corp", "partner"], claims={"permission": "orders:read refunds:write"}),
    "reports": dict(
        path=["/reports/q1"],
        host=["reports.corp.test", "Reports.Corp.Test"],
        token=["corp", "partner"],
        claims={"realm": {"role": "analyst"}, "scope": "openid reports:read", "azp": "cli-tool"},
    ),
    "partner": dict(path=["/partner/feeds", "/partner/feeds/2026"], token="partner", claims={"sub": "acme-1"}, tenant=[[], ["acme"]]),
    "office": dict(method="GET", path=["/office/printer"], forwarded=["203.0.113.50", "198.51.100.7", "192.0.2.1, 203.0.113.9"], tenant=[["acme"], ["globex"]]),
    "admin-denied": dict(path=["/admin"], port=ADMIN_PORT, cert="ops/debug", source="127.0.0.1", forwarded="10.1.2.3"),
    "random": dict(),
}


def _other_port(rng, facts):
    facts["port"] = API_PORT if facts["port"] == ADMIN_PORT else ADMIN_PORT


def _drop_a_claim(rng, facts):
    if facts["claims"]:
        facts["claims"].pop(rng.choice(list(facts["claims"])))


def _redraw(name, choices):
    def redraw(rng, facts):
        facts[name] = rng.choice(choices)

    return redraw


# Fact -> how a near miss changes it.
NEAR_MISSES = {
    "method": _redraw("method", METHODS),
    "path": _redraw("path", PATHS),
    "host": _redraw("host", HOSTS),
    "port": _other_port,
    "cert": _redraw("cert", list(IDENTITIES)),
    "source": _redraw("source", SOURCES),
    "forwarded": _redraw("forwarded", FORWARDED),
    "tenant": _redraw("tenant", TENANTS),
    "token": _redraw("token", TOKEN_KINDS),
    "claims": _drop_a_claim,
}


def _pick(rng, value):
    return rng.choice(value) if isinstance(value, list) else value


def build(seed, size, tokens):
    rng = random.Random(seed)
    names = list(SCENARIOS)
    corpus = []
    for i in range(size):
        scenario = names[i % len(names)] if i < 2 * len(names) else rng.choice(names)
        spec = SCENARIOS[scenario]
        facts = {
            "method": _pick(rng, spec.get("method", METHODS)),
            "path": _pick(rng, spec.get("path", PATHS)),
            "host": _pick(rng, spec.get("host", HOSTS)),
            "port": _pick(rng, spec.get("port", [API_PORT, ADMIN_PORT])),
            "cert": _pick(rng, spec.get("cert", list(IDENTITIES))),
            "source": _pick(rng, spec.get("source", SOURCES)),
            "forwarded": _pick(rng, spec.get("forwarded", FORWARDED)),
            "tenant": _pick(rng, spec.get("tenant", TENANTS)),
            "token": _pick(rng, spec.get("token", TOKEN_KINDS)),
            "claims": dict(spec.get("claims", {})),
        }
        # Near misses: change up to three facts (none for a third of the aimed requests).
        for name in rng.sample(list(NEAR_MISSES), rng.choice([0, 1, 1, 2, 3])) if scenario != "random" else []:
            NEAR_MISSES[name](rng, facts)
        token, claims = _token(rng, tokens, facts["token"], facts["claims"])
        corpus.append(
            Request(
                id=f"r{i:04d}",
                scenario=scenario,
                method=facts["method"],
                target=facts["path"] + rng.choice(QUERIES),
                host=facts["host"],
                port=facts["port"],
                source=facts["source"],
                cert=facts["cert"],
                forwarded=facts["forwarded"],
                tenant=list(facts["tenant"]),
                token=token,
                token_kind=facts["token"],
                claims=claims,
            )
        )
    return corpus
