"""Issue 14's differential test: the Istio policies in tests/support/authz/ enforced by Envoy's own
filters as istiod compiles them (side A: jwt_authn + rbac, tests/support/istio_native.py) and by
meshguard configured with `meshguard import` of the same files (side B), over TLS with SPIFFE
client certificates (or none), two ports, several direct peers and X-Forwarded-For addresses.

First a dozen and more hand-reasoned requests prove side A is what Istio means. Then a seeded
corpus (MESHGUARD_AUTHZ_SEED, default below) goes to both sides; every allow/deny must agree, and so
must the status, except where meshguard differs on purpose (each documented, each counted):

- `no-token-401`: no token was presented and an ALLOW condition that reads the token failed: RBAC
  answers 403, meshguard 401 with a `Bearer` challenge (authz-spec, precedence step 6).
- `repeated-header`: a request repeats `x-tenant` with different values and an ALLOW condition
  reads it. rbac holds a header condition if any line does, so a client can add a friendlier
  copy; meshguard's allow conditions need every line to hold (README, "Authorization"). Proved
  per request: side A is asked again with each line alone, and must refuse at least one of them
  (so the allowing line was not the only one sent), while meshguard refused.
"""

import json
import threading
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.authz_corpus import IDENTITIES, Request, Tokens, build
from support.authz_harness import AuthzEnvoy, Client, environment_seed, meshguard_import, render_policies
from support.envoy import meshguard_filter
from support.istio_native import ADMIN_PORT, API_PORT, native_filters
from support.jose import Signer, jwks
from support.mtls import Pki

DEFAULT_SEED = 1414
CORPUS_SIZE = 1500
WORKERS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("authz-diff")
    corp, partner, impostor = Signer("ES256"), Signer("ES256"), Signer("ES256")
    pki = Pki(workdir / "pki")
    certs = {name: (pki.client(spiffe) if spiffe else None) for name, spiffe in IDENTITIES.items()}
    policies = render_policies(workdir, {"CORP_JWKS": jwks(corp), "PARTNER_JWKS": jwks(partner)})
    plugin_config, skip_reason = meshguard_import(policies)
    side_b = [meshguard_filter(plugin_config)] if plugin_config is not None else None
    envoy = AuthzEnvoy(workdir, pki, native_filters(jwks(corp), jwks(partner)), side_b)
    with envoy:
        yield {"envoy": envoy, "pki": pki, "certs": certs, "tokens": Tokens(corp, partner, impostor), "skip_reason": skip_reason}


def make(tokens, rid, path, token=None, claims=None, **facts):
    """A hand-written request: GET on the API port from a peer outside the jump hosts, no
    certificate, no token, unless told otherwise."""
    signed, payload = tokens.sign(token, claims or {}) if token else (None, None)
    defaults = dict(method="GET", host="orders.shop.svc", port=API_PORT, source="127.0.0.9", cert="no-cert")
    return Request(id=rid, scenario="sanity", target=path, token=signed, token_kind=token or "none", claims=payload, **{**defaults, **facts})


def deny(policy, rule):
    return f"rbac_access_denied_matched_policy[ns[shop]-policy[{policy}]-rule[{rule}]]"


NO_ALLOW = "rbac_access_denied_matched_policy[none]"
ENG = {"sub": "alice", "groups": ["eng-backend"], "aud": "orders-api"}
REPORTS = {"sub": "acme-1", "realm": {"role": "analyst"}, "scope": "openid reports:read", "azp": "cli-tool"}
REFUNDS = {"sub": "acme-1", "permission": "orders:read refunds:write"}
ADMIN = dict(port=ADMIN_PORT, cert="ops/debug", source="127.0.0.1")

# (request facts, expected status, expected response details or None): each reasoned from the
# policies by hand, asserted against side A only.
SANITY = [
    (dict(path="/healthz"), 200, None),  # allow-public
    (dict(path="/admin", forwarded="10.1.2.3", **ADMIN), 403, deny("deny-admin", 0)),  # remote 10/8
    (dict(path="/admin", forwarded="10.99.4.5", **ADMIN), 200, None),  # the bastion range; allow-mesh[1]
    (dict(path="/admin", **{**ADMIN, "source": "127.0.0.9"}), 403, NO_ALLOW),  # not a jump host
    (dict(path="/orders/42", cert="frontend/web"), 200, None),  # allow-mesh[0], `{*}`
    (dict(path="/orders/42", cert="frontend/web", port=ADMIN_PORT), 403, NO_ALLOW),  # wrong port
    (dict(path="/orders/42/items", cert="checkout/api"), 200, None),  # `checkout/sa/*`
    (dict(path="/orders/42", cert="checkout/legacy"), 403, NO_ALLOW),  # notPrincipals
    (dict(path="/orders//items", cert="frontend/web"), 403, NO_ALLOW),  # `{*}` is non-empty
    (dict(path="/orders/", cert="frontend/web"), 403, NO_ALLOW),
    (dict(path="/orders/42", cert="other-td"), 403, deny("deny-admin", 1)),  # another trust domain
    (dict(path="/api/orders", token="corp", claims=ENG), 200, None),  # allow-jwt[0]
    (dict(path="/api/orders", token="corp", claims={**ENG, "groups": ["eng-backend", "eng-interns"]}), 403, NO_ALLOW),
    (dict(path="/api/orders", token="corp", claims={**ENG, "aud": ["orders-admin", "orders-api"]}), 200, None),
    (dict(path="/api/orders", token="corp", claims={**ENG, "aud": "orders-admin"}), 403, NO_ALLOW),  # accepted, not for this rule
    (dict(path="/api/orders"), 403, NO_ALLOW),  # no token: authentication passes, no ALLOW holds
    (dict(path="/api/orders", token="corp-expired", claims=ENG), 401, None),
    (dict(path="/api/orders", token="partner-badsig", claims=ENG), 401, None),
    (dict(path="/api/orders", token="corp-wrong-aud", claims={**ENG, "aud": "billing-api"}), 403, "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}"),
    (dict(path="/api/private/keys", token="corp", claims=ENG), 403, NO_ALLOW),  # notPaths
    (dict(path="/reports/q1", host="Reports.Corp.Test", token="partner", claims=REPORTS), 200, None),  # allow-jwt[2]
    (dict(path="/reports/q1", host="reports.corp.test", token="partner", claims={**REPORTS, "scope": "openid"}), 403, NO_ALLOW),
    (dict(path="/reports/q1", host="reports.corp.test", token="partner", claims={**REPORTS, "realm": {"role": ["viewer", "admin"]}}), 200, None),
    (dict(path="/index.php", cert="frontend/web"), 403, deny("deny-abuse", 1)),  # `*suffix`
    (dict(method="DELETE", path="/orders/42", cert="frontend/web"), 403, deny("deny-abuse", 3)),  # notPorts
    (dict(path="/office/printer", forwarded="192.0.2.1, 203.0.113.9", tenant=["globex"]), 200, None),  # rightmost XFF
    (dict(path="/office/printer", forwarded="198.51.100.8", tenant=["acme"]), 403, NO_ALLOW),
    # A repeated header: Envoy 1.40's header matcher tries each line's value on its own (not the
    # values joined by `,`), so a second line can satisfy an ALLOW and trip a DENY...
    (dict(path="/office/printer", forwarded="198.51.100.7", tenant=["initech", "acme"]), 200, None),
    (dict(path="/healthz", tenant=["acme", "blocked-1"]), 403, deny("deny-abuse", 0)),
    # ...while one line holding a list is one value.
    (dict(path="/office/printer", forwarded="198.51.100.7", tenant=["acme,globex"]), 403, NO_ALLOW),
    (dict(method="POST", path="/api/refunds", token="partner", claims=REFUNDS), 200, None),  # allow-jwt[1], permission split
    (dict(method="POST", path="/api/refunds", host="orders.shop.svc:8443", token="partner", claims=REFUNDS), 403, NO_ALLOW),
    (dict(path="/internal/jobs/7", **{**ADMIN, "cert": "billing/invoicer"}), 403, deny("deny-abuse", 2)),  # notNamespaces
    (dict(path="/internal/jobs/7", **ADMIN), 200, None),  # `{**}`
    # Envoy's uri_template `**` also matches no segment at all: `/internal/` is in, `/internal` out.
    (dict(path="/internal/", **ADMIN), 200, None),
    (dict(path="/internal", **ADMIN), 403, NO_ALLOW),
    (dict(path="/internal/", **{**ADMIN, "cert": "billing/invoicer"}), 403, deny("deny-abuse", 2)),
    (dict(path="/orders/42?page=2", cert="frontend/web"), 200, None),  # templates ignore the query
    (dict(path="/partner/feeds/2026", token="partner", claims={"sub": "acme-1"}), 200, None),  # allow-jwt[3]
    (dict(path="/partner/feeds", token="partner", claims={"sub": "acme-banned"}), 403, NO_ALLOW),  # notRequestPrincipals
    (dict(path="/partner/feeds", token="partner", claims={}), 403, NO_ALLOW),  # no sub: no request principal
    (dict(path="/partner/feeds", token="partner", claims={"sub": "acme-1"}, tenant=["globex"]), 403, NO_ALLOW),  # header notValues
    (dict(path="/partner/feeds", token="partner", claims={"sub": "acme-1", "groups": ["suspended"]}), 403, NO_ALLOW),  # claim notValues
    (dict(path="/healthz", tenant=["blocked-7"]), 403, deny("deny-abuse", 0)),
    (dict(path="/orders/42", cert="billing/invoicer", token="corp", claims={"sub": "bob", "aud": "orders-api"}), 200, None),  # audited too
]


def test_native_side_decides_as_istio_means(setup):
    """Side A on its own: each hand-reasoned request gets the status and the deciding policy (in
    Envoy's response details) that Istio's documentation says it should."""
    tokens, envoy = setup["tokens"], setup["envoy"]
    client = Client(setup["pki"], setup["certs"])
    requests = [make(tokens, f"sanity-{i}", **facts) for i, (facts, _, _) in enumerate(SANITY)]
    try:
        answers = [client.send("A", request) for request in requests]
    finally:
        client.close()
    records = envoy.access_records(len(requests))
    wrong = []
    for request, answer, (_, status, details) in zip(requests, answers, SANITY):
        seen = records.get(("A", request.id), {}).get("details")
        if answer.status != status or (details and seen != details):
            wrong.append(f"{request.describe()}\n    expected {status} {details or ''}, got {answer.status} {seen}")
    assert not wrong, "\n".join(wrong)
    audited = records[("A", requests[-1].id)]
    assert audited["audit_hint"] is True, audited


def classify(request, a, b, a_single_lines):
    """`agree`, one of the documented differences, or `DISAGREE`."""
    if a.status == b.status:
        return "agree"
    if request.token is None and a.status == 403 and b.status == 401 and (b.www_authenticate or "").startswith("Bearer"):
        return "no-token-401"
    if a.status == 200 and b.status in (401, 403) and a_single_lines and any(one.status != 200 for one in a_single_lines):
        return "repeated-header"
    return "DISAGREE"


def run_corpus(setup, corpus):
    """Sends every request to both sides; (request, A, B, A for each x-tenant line alone)."""
    pki, certs = setup["pki"], setup["certs"]
    # One worker per group of connections (port, peer, certificate), so each keep-alive
    # connection belongs to one thread; a few workers keep the load modest.
    groups = [[] for _ in range(WORKERS)]
    for request in corpus:
        groups[zlib.crc32(f"{request.port} {request.source} {request.cert}".encode()) % WORKERS].append(request)
    results, lock = [], threading.Lock()

    def work(group):
        client = Client(pki, certs)
        try:
            for request in group:
                a = client.send("A", request)
                b = client.send("B", request)
                singles = [client.send("A", request.with_one_tenant_line(i)) for i in range(len(request.tenant))] if request.repeats_tenant else []
                with lock:
                    results.append((request, a, b, singles))
        finally:
            client.close()

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(work, groups))
    results.sort(key=lambda row: row[0].id)
    return results


def side_a_verdict(record, status):
    if status == 200:
        return "allowed"
    details = (record or {}).get("details", "")
    if details.startswith("jwt_authn_access_denied"):
        # 401 for a token that fails verification, 403 for one whose audience is not accepted.
        return f"{status} by jwt_authn"
    if details.startswith("rbac_access_denied_matched_policy["):
        policy = details.removeprefix("rbac_access_denied_matched_policy[").removesuffix("]")
        return "403 no ALLOW policy matched" if policy == "none" else f"403 by {policy}"
    return f"{status} {details}"


def side_b_verdict(record, status):
    """meshguard's record names the deciding rule and action (authz-spec, "Record")."""
    try:
        authz = json.loads((record or {}).get("meshguard") or "{}").get("authz", {})
    except ValueError:
        authz = {}
    named = " ".join(str(authz[k]) for k in ("decision", "rule") if k in authz)
    return f"{status} {named}".strip() + (" +audit" if authz.get("audit") else "")


def test_meshguard_decides_as_istio_on_a_generated_corpus(setup):
    if setup["skip_reason"]:
        pytest.skip(f"side B needs `meshguard import` (issue 14): {setup['skip_reason']}")
    seed = environment_seed(DEFAULT_SEED)
    print(f"\nauthz differential: seed {seed} (MESHGUARD_AUTHZ_SEED), corpus {CORPUS_SIZE}")
    corpus = build(seed, CORPUS_SIZE, setup["tokens"])
    results = run_corpus(setup, corpus)
    sent = len(results) * 2 + sum(len(extra) for _, _, _, extra in results)
    records = setup["envoy"].access_records(sent)

    outcomes, verdicts, audited, scenarios, meshguard_verdicts = Counter(), Counter(), 0, Counter(), Counter()
    disagreements = []
    for request, a, b, singles in results:
        outcome = classify(request, a, b, singles)
        outcomes[outcome] += 1
        record_a = records.get(("A", request.id))
        verdicts[side_a_verdict(record_a, a.status)] += 1
        audited += bool(record_a and record_a.get("audit_hint") is True)
        scenarios[(request.scenario, "allowed" if a.status == 200 else "denied")] += 1
        meshguard_verdicts[side_b_verdict(records.get(("B", request.id)), b.status)] += 1
        if outcome == "DISAGREE":
            extra = f", A for each x-tenant line alone {[one.status for one in singles]}" if singles else ""
            meshguard = (records.get(("B", request.id)) or {}).get("meshguard")
            disagreements.append(f"{request.describe()}\n    A {a.status} ({side_a_verdict(record_a, a.status)}){extra}; meshguard {b.status} {b.www_authenticate or ''} {meshguard}")

    print(f"{'side A (Envoy jwt_authn + rbac as istiod compiles)':<55} requests")
    for verdict, count in sorted(verdicts.items()):
        print(f"  {verdict:<53} {count}")
    print(f"  {'(audited by audit-billing, decision unchanged)':<53} {audited}")
    print(f"{'scenario':<20} {'allowed':>8} {'denied':>8}")
    for name in sorted({s for s, _ in scenarios}):
        print(f"  {name:<18} {scenarios[(name, 'allowed')]:>8} {scenarios[(name, 'denied')]:>8}")
    print(f"{'side B (meshguard, from its access record)':<55} requests")
    for verdict, count in sorted(meshguard_verdicts.items()):
        print(f"  {verdict:<53} {count}")
    print(f"{'meshguard vs side A':<55} requests")
    for outcome in ["agree", "no-token-401", "repeated-header", "DISAGREE"]:
        print(f"  {outcome:<53} {outcomes[outcome]}")

    assert len(corpus) >= 1000
    assert verdicts["allowed"] >= 100 and sum(v for k, v in verdicts.items() if k.startswith("403 by")) >= 100, verdicts
    assert not disagreements, f"{len(disagreements)} disagreements (seed {seed}):\n" + "\n".join(disagreements[:40])
