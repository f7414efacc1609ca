"""Envoy's own filters configured as istiod configures a sidecar for the policies in
tests/support/authz/: `envoy.filters.http.jwt_authn` for the RequestAuthentication, then one
`envoy.filters.http.rbac` per action (AUDIT as LOG, DENY, ALLOW) for the AuthorizationPolicies.

Compiled by hand, policy by policy, from istiod's generator (read in istio/istio at the files named
in each comment; `model/` and `matcher/` are under pilot/pkg/security/authz/). The small helpers
below are istiod's matcher functions, one each, so that every compiled rule reads like the golden
files in pilot/pkg/security/authz/builder/testdata/http/extended-allow-full-rule-out.yaml; the
arrangement of each rule (which and/or/not, in which order) is written out by hand.
"""

import ipaddress

# pilot/pkg/xds/filters (EnvoyJwtFilterName, EnvoyJwtFilterPayload): the jwt_authn filter writes
# each verified token's payload under this key of its dynamic metadata, and RBAC reads it there.
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD = "payload"

CORP_ISSUER = "https://accounts.corp.test"
PARTNER_ISSUER = "https://partner.idp.test"
NAMESPACE = "shop"
API_PORT = 8443
ADMIN_PORT = 9443


# --- istiod's matcher helpers -------------------------------------------------------------------


def string_match(value, prefix=""):
    """matcher/string.go StringMatcherWithPrefix: `*` is the regex `.+` (present, non-empty),
    `*x` a suffix (a regex when there is a prefix to keep), `x*` a prefix, else exact. istiod does
    not escape the value inside the regexes it builds; neither do we."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if not prefix:
            return {"suffix": value[1:]}
        return {"safe_regex": {"regex": prefix + ".*" + value[1:]}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def header_matcher(name, value, ignore_case=False):
    """matcher/header.go HeaderMatcher (`ignore_case` false) and HostMatcher (true): `*` is a
    presence match, the rest string matchers on the header (Envoy joins repeated values with `,`)."""
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        match = {"suffix": value[1:]}
    elif value.endswith("*"):
        match = {"prefix": value[:-1]}
    else:
        match = {"exact": value}
    if ignore_case:
        match["ignore_case"] = True
    return {"name": name, "string_match": match}


def cidr(value):
    """pilot/pkg/networking/util AddrStrToCidrRange: an address is a /32 (/128)."""
    network = ipaddress.ip_network(value, strict=False)
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def or_values(values):
    """matcher/string.go StringOrMatcher + OrMatcher: one value is its own matcher."""
    matchers = [{"string_match": string_match(v)} for v in values]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def jwt_claim(claims, values):
    """model/util.go MetadataListValueMatcherForJWTClaims -> matcher/metadata.go
    MetadataListValueMatcher(useExtendedJwt=true): the claim at payload.<c1>.<c2>... matches when
    it is a list with one matching element, or is itself a matching string."""
    value = or_values(values)
    return {
        "metadata": {
            "filter": JWT_FILTER,
            "path": [{"key": JWT_PAYLOAD}] + [{"key": c} for c in claims],
            "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": value}}, value]}},
        }
    }


def jwt_string_claim(claim, match):
    """model/util.go MetadataStringMatcherForJWTClaim."""
    return {"metadata": {"filter": JWT_FILTER, "path": [{"key": JWT_PAYLOAD}, {"key": claim}], "value": {"string_match": match}}}


def request_principals(values):
    """model/generator.go requestPrincipalGenerator.extendedPrincipal: each value is split at its
    last `/` into iss and sub, each matched on its own claim; `*` is `.+` for both."""
    any_ = {"safe_regex": {"regex": ".+"}}
    ors = []
    for value in values:
        iss, found, sub = value.rpartition("/")
        if not found:
            iss, sub = value, ""
        if value == "*":
            match_iss, match_sub = any_, any_
        elif value.startswith("*"):
            if found:
                match_iss = any_ if iss == "*" else {"suffix": iss[1:]}
                match_sub = {"exact": sub}
            else:
                match_iss, match_sub = any_, {"suffix": value[1:]}
        elif value.endswith("*"):
            if found:
                match_iss = {"exact": iss}
                match_sub = any_ if sub == "*" else {"prefix": sub[:-1]}
            else:
                match_iss, match_sub = {"prefix": value[:-1]}, any_
        else:
            match_iss, match_sub = {"exact": iss}, {"exact": sub}
        ors.append({"and_ids": {"ids": [jwt_string_claim("iss", match_iss), jwt_string_claim("sub", match_sub)]}})
    return ors[0] if len(ors) == 1 else {"or_ids": {"ids": ors}}


def source_principal(value):
    """model/generator.go srcPrincipalGenerator: the peer certificate's URI SAN, `spiffe://` added
    (matcher.StringMatcherWithPrefix(value, spiffe.URIPrefix)); model/principal.go
    principalAuthenticated."""
    return {"authenticated": {"principal_name": string_match(value, "spiffe://")}}


def source_namespace(value):
    """model/generator.go srcNamespaceGenerator: the regex `.*/ns/<ns>/.*` on the principal, `*`
    turned into `.*`."""
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/%s/.*" % value.replace("*", ".*")}}}}


def path(value):
    """model/generator.go pathGenerator: a `{*}`/`{**}` template becomes a uri_template permission
    (matcher/template.go PathTemplateMatcher: `{*}` -> `*`, `{**}` -> `**`), anything else a
    url_path (matcher/header.go PathMatcher -> StringMatcher)."""
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {
            "uri_template": {
                "name": "uri-template",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                    "path_template": template,
                },
            }
        }
    return {"url_path": {"path": string_match(value)}}


def method(value):
    """model/generator.go methodGenerator: HeaderMatcher on `:method`."""
    return {"header": header_matcher(":method", value)}


def host(value):
    """model/generator.go hostGenerator: HostMatcher on `:authority` (case-insensitive; the
    authority as the client sent it, a port included)."""
    return {"header": header_matcher(":authority", value, ignore_case=True)}


def port(value):
    """model/generator.go destPortGenerator (model/permission.go permissionDestinationPort)."""
    return {"destination_port": int(value)}


def request_header(name, value):
    """model/generator.go requestHeaderGenerator: HeaderMatcher on the named header."""
    return {"header": header_matcher(name, value)}


# model/model.go rule.permission / rule.principal: a field's values are OR-ed; its notValues are
# OR-ed under one not; model.go generatePermission / generatePrincipal AND the fields of one
# from/to entry; each from (to) entry is one element of the policy's principals (permissions),
# which RBAC ORs. A rule without from (to) gets `any: true`.
def p_or(rules):
    return {"or_rules": {"rules": rules}}


def p_not(rule):
    return {"not_rule": rule}


def p_and(rules):
    return {"and_rules": {"rules": rules}}


def id_or(ids):
    return {"or_ids": {"ids": ids}}


def id_not(principal):
    return {"not_id": principal}


def id_and(ids):
    return {"and_ids": {"ids": ids}}


P_ANY = p_and([{"any": True}])
ID_ANY = id_and([{"any": True}])


def policy_name(name, rule):
    """builder/builder.go policyName: `ns[<ns>]-policy[<name>]-rule[<i>]`."""
    return f"ns[{NAMESPACE}]-policy[{name}]-rule[{rule}]"


# --- the policies, compiled -----------------------------------------------------------------------
# In each rule the fields come in model/model.go New's order: permissions host, method, path, port
# (insertFront), principals source principal, request principal, namespace, remote IP, source IP
# (insertFront), then the `when` conditions in the order written (appendLast); requestPrincipals,
# audiences, presenter and claims use the extended generators (insertFrontExtended /
# appendLastExtended), whose notValues are one not around the whole matcher.


def deny_policies():
    return {
        # deny-admin rule 0: remoteIpBlocks + notRemoteIpBlocks -> remote_ip (model/generator.go
        # remoteIPGenerator); paths exact and `prefix*`.
        policy_name("deny-admin", 0): {
            "permissions": [p_and([p_or([path("/admin"), path("/admin/*")])])],
            "principals": [id_and([id_or([{"remote_ip": cidr("10.0.0.0/8")}]), id_not(id_or([{"remote_ip": cidr("10.99.0.0/16")}]))])],
        },
        # deny-admin rule 1: principals `td/*` -> prefix `spiffe://td/`.
        policy_name("deny-admin", 1): {
            "permissions": [P_ANY],
            "principals": [id_and([id_or([source_principal("partner.example/*")])])],
        },
        # deny-abuse rule 0: when request.headers[x-tenant] values (prefix, suffix).
        policy_name("deny-abuse", 0): {
            "permissions": [P_ANY],
            "principals": [id_and([id_or([request_header("x-tenant", "blocked-*"), request_header("x-tenant", "*-suspended")])])],
        },
        # deny-abuse rule 1: paths `*suffix`.
        policy_name("deny-abuse", 1): {
            "permissions": [p_and([p_or([path("*/.git"), path("*.php")])])],
            "principals": [ID_ANY],
        },
        # deny-abuse rule 2: notNamespaces -> not_id(regex) (true without a peer certificate);
        # paths `{**}` template.
        policy_name("deny-abuse", 2): {
            "permissions": [p_and([p_or([path("/internal/{**}")])])],
            "principals": [id_and([id_not(id_or([source_namespace("ops")]))])],
        },
        # deny-abuse rule 3: methods + notPorts.
        policy_name("deny-abuse", 3): {
            "permissions": [p_and([p_or([method("DELETE")]), p_not(p_or([port(ADMIN_PORT)]))])],
            "principals": [ID_ANY],
        },
    }


def audit_policies():
    return {
        # audit-billing rule 0: namespaces; paths `prefix*` (no slash: /orders, /orders/1, /ordersx).
        policy_name("audit-billing", 0): {
            "permissions": [p_and([p_or([path("/orders*")])])],
            "principals": [id_and([id_or([source_namespace("billing")])])],
        },
    }


def allow_policies():
    return {
        # allow-public rule 0.
        policy_name("allow-public", 0): {
            "permissions": [p_and([p_or([method("GET"), method("HEAD")]), p_or([path("/healthz"), path("/public/*")])])],
            "principals": [ID_ANY],
        },
        # allow-mesh rule 0: two `from` entries -> two principals (OR); principals exact and
        # `prefix*` with notPrincipals; namespaces + requestPrincipals `*`; paths exact and `{*}`.
        policy_name("allow-mesh", 0): {
            "permissions": [
                p_and(
                    [
                        p_or([method("GET"), method("POST")]),
                        p_or([path("/orders"), path("/orders/{*}"), path("/orders/{*}/items")]),
                        p_or([port(API_PORT)]),
                    ]
                )
            ],
            "principals": [
                id_and(
                    [
                        id_or([source_principal("cluster.local/ns/frontend/sa/web"), source_principal("cluster.local/ns/checkout/sa/*")]),
                        id_not(id_or([source_principal("cluster.local/ns/checkout/sa/legacy")])),
                    ]
                ),
                id_and([request_principals(["*"]), id_or([source_namespace("billing")])]),
            ],
        },
        # allow-mesh rule 1: namespaces exact and `prefix*` + ipBlocks (direct_remote_ip,
        # model/generator.go srcIPGenerator); ports; paths incl. `{**}`.
        policy_name("allow-mesh", 1): {
            "permissions": [p_and([p_or([path("/admin"), path("/admin/*"), path("/internal/{**}")]), p_or([port(ADMIN_PORT)])])],
            "principals": [
                id_and(
                    [
                        id_or([source_namespace("ops"), source_namespace("sre-*")]),
                        id_or([{"direct_remote_ip": cidr("127.0.0.0/30")}]),
                    ]
                )
            ],
        },
        # allow-jwt rule 0: requestPrincipals `iss/*`; paths + notPaths; claims[groups] values
        # and notValues; request.auth.audiences (model/generator.go requestAudiencesGenerator:
        # claim aud, list or string).
        policy_name("allow-jwt", 0): {
            "permissions": [p_and([p_or([path("/api/*")]), p_not(p_or([path("/api/private/*")]))])],
            "principals": [
                id_and(
                    [
                        request_principals([f"{CORP_ISSUER}/*"]),
                        jwt_claim(["groups"], ["staff", "eng-*"]),
                        id_not(jwt_claim(["groups"], ["eng-interns"])),
                        jwt_claim(["aud"], ["orders-api"]),
                    ]
                )
            ],
        },
        # allow-jwt rule 1: hosts exact and `*suffix`; claims[permission] (space-delimited by
        # jwt_authn's normalize_payload_in_metadata, which istiod always asks for).
        policy_name("allow-jwt", 1): {
            "permissions": [
                p_and(
                    [
                        p_or([host("orders.shop.svc"), host("*.corp.test")]),
                        p_or([method("POST"), method("PUT")]),
                        p_or([path("/api/refunds"), path("/api/refunds/*")]),
                    ]
                )
            ],
            "principals": [id_and([request_principals(["*"]), jwt_claim(["permission"], ["refunds:write"])])],
        },
        # allow-jwt rule 2: hosts `prefix*`; nested claim realm.role; scope (space-delimited);
        # request.auth.presenter (model/generator.go requestPresenterGenerator: claim azp).
        policy_name("allow-jwt", 2): {
            "permissions": [p_and([p_or([host("reports.*")]), p_or([path("/reports/*")])])],
            "principals": [
                id_and(
                    [
                        jwt_claim(["realm", "role"], ["analyst", "admin"]),
                        jwt_claim(["scope"], ["reports:read"]),
                        jwt_claim(["azp"], ["dashboard", "cli-*"]),
                    ]
                )
            ],
        },
        # allow-jwt rule 3: requestPrincipals `iss/prefix*` + notRequestPrincipals; `{**}`;
        # header notValues; claim notValues.
        policy_name("allow-jwt", 3): {
            "permissions": [p_and([p_or([path("/partner/{**}")])])],
            "principals": [
                id_and(
                    [
                        request_principals([f"{PARTNER_ISSUER}/acme-*"]),
                        id_not(request_principals([f"{PARTNER_ISSUER}/acme-banned"])),
                        id_not(id_or([request_header("x-tenant", "globex")])),
                        id_not(jwt_claim(["groups"], ["suspended"])),
                    ]
                )
            ],
        },
        # allow-office rule 0: remoteIpBlocks CIDR and address; notMethods; header values.
        policy_name("allow-office", 0): {
            "permissions": [p_and([p_not(p_or([method("DELETE"), method("PATCH")])), p_or([path("/office/*")])])],
            "principals": [
                id_and(
                    [
                        id_or([{"remote_ip": cidr("203.0.113.0/24")}, {"remote_ip": cidr("198.51.100.7")}]),
                        id_or([request_header("x-tenant", "acme"), request_header("x-tenant", "globex")]),
                    ]
                )
            ],
        },
    }


def rbac_filter(action, policies):
    """builder/builder.go buildHTTP: one RBAC filter per action with its policies."""
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies},
        },
    }


def rbac_filters():
    """builder/builder.go BuildHTTP: AUDIT (as LOG), then DENY, then ALLOW."""
    return [rbac_filter("LOG", audit_policies()), rbac_filter("DENY", deny_policies()), rbac_filter("ALLOW", allow_policies())]


def jwt_provider(issuer, jwks, audiences=None):
    """pilot/pkg/security/authn/policy_applier.go convertToEnvoyJwtConfig: the payload in
    metadata under `payload`, `permission` and `scope` always space-delimited
    (buildSpaceDelimitedClaims), inline jwks as local_jwks (JwtKeyResolver.BuildLocalJwks),
    no forward, default token locations."""
    provider = {
        "issuer": issuer,
        "local_jwks": {"inline_string": jwks},
        "payload_in_metadata": JWT_PAYLOAD,
        "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
    }
    if audiences:
        provider["audiences"] = audiences
    return provider


def jwt_authn_filter(corp_jwks, partner_jwks):
    """pilot/pkg/security/authn/policy_applier.go convertToEnvoyJwtConfig with two jwtRules, sorted
    by issuer into origins-0 (corp) and origins-1 (partner): any one provider, or every provider
    either verified or missing (so no token passes, a bad token is 401); CORS preflights bypass."""
    providers = {
        "origins-0": jwt_provider(CORP_ISSUER, corp_jwks, ["orders-api", "orders-admin"]),
        "origins-1": jwt_provider(PARTNER_ISSUER, partner_jwks),
    }
    inner_and = [{"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}} for name in providers]
    outer_or = [{"provider_name": name} for name in providers] + [{"requires_all": {"requirements": inner_and}}]
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": outer_or}}}],
            "bypass_cors_preflight": True,
        },
    }


def native_filters(corp_jwks, partner_jwks):
    return [jwt_authn_filter(corp_jwks, partner_jwks)] + rbac_filters()
