"""One byte must not take a worker down (issue 12). Every byte, 0x00 to 0xFF, inside a value of
every header meshguard reads or writes, sent to real Envoy over HTTP/1.1 (raw sockets) and, for
a sample of bytes, over HTTP/2, under each of Envoy's failure policies; and the same bytes in
the headers of what meshguard's dependencies answer (the IdP's JWKS, the rate-limit service's
gRPC metadata).

Envoy's codec refuses some bytes before any filter runs (NUL, CR, LF, most control bytes; in a
host or a path, more): that is Envoy's answer and fine. Every byte it lets through is meshguard's
to handle, per the behaviour table: a token that is not UTF-8 is malformed (401
`invalid_token`); a header named in `access_log.request_headers` is logged with each byte that
is not UTF-8 written as `\\xNN`; any other header is carried as it came. The VM never fails:
no panic, no trap, no failed callback in Envoy's log, and afterwards a valid token still gets
200 and a missing one 401 (under FAIL_OPEN a failed VM would let it through)."""

import pytest

from support.envoy import FAILURE_POLICIES, QUICK_CLOSE, Envoy, meshguard_filter, wait_for
from support.jose import ISSUER, Signer, bearer, jwks
from support.rls import Hostile
from support.servers import Idp
from support.wire import Request, send_all

HOST = "api.example.com"
LOGGED = ["user-agent", "x-request-id", "traceparent", "x-b3-traceid"]
EVERY_BYTE = list(range(256))
# Over HTTP/2: every byte that is not ASCII, and a few the codec refuses or keeps.
HTTP2_SAMPLE = [0x00, 0x09, 0x20, 0x7F] + list(range(0x80, 0x100))
# In a dependency's answer: every byte that is not ASCII, and control bytes.
DEPENDENCY_BYTES = [0x00, 0x01, 0x09, 0x0B, 0x1F, 0x7F] + list(range(0x80, 0x100))

# What meshguard answers once Envoy lets the byte through.
MALFORMED = "401 invalid_token"
MISSING = "401 no token"
ALLOWED = "200, reaching the upstream"
VM_FAILED = "Envoy's empty 503: the VM failed"
FIRST_VM_FAILURE = "the first request (in sending order) answered by a failed VM"


def in_header(name, prefix=b"", path="/api"):
    return lambda value: (path, [(name, prefix + value)])


def in_host(value):
    return "/api", [("host", value)]


def in_query(value):
    return b"/api?access_token=" + value, []


# Where the byte goes: position -> (the request carrying `value`, whether a valid bearer token
# rides along, the answer). The token headers, the rule-match header, the rate-limit key, the
# logged headers, the authority a `hosts` rule reads, and the header meshguard writes (with its
# underscore twin, which must not reach the upstream either).
POSITIONS = {
    "authorization": (in_header("authorization", b"Bearer "), False, MALFORMED),
    "x-jwt": (in_header("x-jwt"), False, MALFORMED),
    "cookie": (in_header("cookie", b"session="), False, MALFORMED),
    "access_token": (in_query, False, MALFORMED),
    "user-agent": (in_header("user-agent"), True, ALLOWED),
    "x-request-id": (in_header("x-request-id"), True, ALLOWED),
    "traceparent": (in_header("traceparent"), True, ALLOWED),
    "x-b3-traceid": (in_header("x-b3-traceid"), True, ALLOWED),
    "x-tenant": (in_header("x-tenant", path="/t/x"), False, MISSING),
    "x-api-key": (in_header("x-api-key"), True, ALLOWED),
    "host": (in_host, True, ALLOWED),
    "x-user": (in_header("x-user"), True, ALLOWED),
    "x_user": (in_header("x_user"), True, ALLOWED),
}
# Headers the upstream must receive exactly as sent.
CARRIED = ["user-agent", "x-request-id", "traceparent", "x-b3-traceid", "x-api-key"]


def plugin_config(signer):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "local_jwks": {"inline": jwks(signer)},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-jwt"}],
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rate_limits": {
            "per_api_key": {"key": "header:x-api-key", "token_bucket": {"max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1h"}},
        },
        "rules": [
            {"name": "public", "match": {"prefix": "/t/", "headers": {"x-tenant": "public"}}, "allow_unauthenticated": True},
            {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}, "requires": "corp"},
            {"name": "api", "match": {"prefix": "/"}, "requires": "corp", "rate_limits": ["per_api_key"]},
        ],
        "access_log": {"enabled": True, "sample_rate": 1.0, "request_headers": LOGGED + ["x-user"]},
    }


@pytest.fixture(scope="module")
def signer():
    return Signer("ES256")


@pytest.fixture(scope="module")
def token(signer):
    return signer.sign()


@pytest.fixture(scope="module", params=list(FAILURE_POLICIES))
def envoy(request, tmp_path_factory, upstream, signer):
    """One Envoy per failure policy, every test of this module against each."""
    filters = [meshguard_filter(plugin_config(signer), plugin_options=FAILURE_POLICIES[request.param])]
    workdir = tmp_path_factory.mktemp(request.param)
    with Envoy(None, {"upstream": upstream.port}, workdir, http_filters=filters, hcm_options=QUICK_CLOSE) as envoy:
        yield envoy


def ask(envoy, requests, protocol="http1"):
    # Over HTTP/2 more connections: each one the codec refuses still takes QUICK_CLOSE to end.
    return send_all(envoy.listener_port, requests, protocol, connections=4 if protocol == "http1" else 8)


def logged(value):
    """How meshguard logs a header value: UTF-8 as it is, each byte that is not as `\\xNN`."""
    return value.decode("utf-8", errors="backslashreplace")


def handed_on(value):
    """The value as Envoy hands it to the filter: its HTTP/1 codec drops a lone CR inside a
    value (`a\\rb` arrives as `ab`); every other byte it lets through arrives as sent."""
    return value.replace(b"\r", b"")


def placed(position, byte, token):
    """The request carrying `a<byte>b` in `position`; a tag (in x-request-id, or in user-agent
    when the byte is in x-request-id) finds its log record."""
    build, with_token, _ = POSITIONS[position]
    target, headers = build(b"a" + bytes([byte]) + b"b")
    tag = ("user-agent" if position == "x-request-id" else "x-request-id", f"tag-{position}-{byte:02x}")
    if position != "host":
        headers = [("host", HOST)] + headers
    return Request("GET", target, headers + [tag] + ([bearer(token)] if with_token else []))


def problem(position, value, response):
    """What is wrong with the answer to `value` in `position` (None: as specified). The
    description does not depend on the byte, so that bytes with the same fault group together."""
    if response.refused_by_codec:
        return None
    if response.timed_out:
        return "no answer (a hung request)"
    if response.status == 503 and not response.body:
        return VM_FAILED
    expected = POSITIONS[position][2]
    if expected == ALLOWED:
        seen = response.upstream_echo()
        if seen is None:
            return f"{response.status} {response.body[:60]!r} instead of reaching the upstream"
        headers = seen["headers"]
        if headers.get("x-user") != ["alice"]:
            return "the upstream got a client's x-user"
        if "x_user" in headers:
            return "the upstream got a client's x_user (the underscore twin of x-user)"
        if position in CARRIED and headers.get(position) != [handed_on(value).decode("latin-1")]:
            return f"{position} not carried as sent"
        return None
    challenge = response.header("www-authenticate") or ""
    if response.status != 401 or response.local_reply() is None:
        return f"{response.status} instead of meshguard's 401"
    if expected == MALFORMED and 'error="invalid_token"' not in challenge:
        return f"401 with {challenge!r}, not invalid_token"
    if expected == MISSING and challenge != 'Bearer realm="api"':
        return f"401 with {challenge!r}, not the missing-token challenge"
    return None


def byte_ranges(values):
    """0x80-0xff, 0x0b: runs of consecutive bytes, for messages."""
    runs = []
    for value in sorted(values):
        if runs and runs[-1][1] == value - 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"0x{a:02x}" if a == b else f"0x{a:02x}-0x{b:02x}" for a, b in runs)


def tag_of(record):
    for candidate in (record.get("request_id"), record.get("request_headers", {}).get("user-agent")):
        if isinstance(candidate, str) and candidate.startswith("tag-"):
            return candidate
    return None


def sweep(envoy, token, byte_values, protocol):
    """Every byte in every position. Returns {fault: {position: [bytes]}} and, for the record,
    {position: [bytes Envoy's codec refused]}."""
    cases = [(position, byte) for position in POSITIONS for byte in byte_values]
    responses = ask(envoy, [placed(position, byte, token) for position, byte in cases], protocol)
    faults, refused = {}, {}
    for (position, byte), response in zip(cases, responses):
        if response.refused_by_codec:
            refused.setdefault(position, []).append(byte)
        fault = problem(position, b"a" + bytes([byte]) + b"b", response)
        if fault:
            faults.setdefault(fault, {}).setdefault(position, []).append(byte)
        if fault == VM_FAILED and FIRST_VM_FAILURE not in faults:
            # Once the VM has failed, FAIL_CLOSED refuses everything after: name the first.
            faults[FIRST_VM_FAILURE] = {position: [byte]}
    # Each logged header is in its request's record, rendered as the table says.
    passed = {case for case, response in zip(cases, responses) if not response.refused_by_codec and response.status != 503}
    expected = {(p, b): logged(handed_on(b"a" + bytes([b]) + b"b")) for p, b in passed if p in LOGGED}
    records = {}

    def all_logged():
        for record in envoy.meshguard_records():
            tag = tag_of(record)
            if tag:
                records[tag] = record.get("request_headers", {})
        return all(f"tag-{p}-{b:02x}" in records for p, b in expected)

    wait_for(all_logged, timeout=10, interval=0.5)
    for (position, byte), value in expected.items():
        record = records.get(f"tag-{position}-{byte:02x}")
        if record is None:
            faults.setdefault("no log record", {}).setdefault(position, []).append(byte)
        elif record.get(position) != value:
            faults.setdefault("logged otherwise than with \\xNN escapes", {}).setdefault(position, []).append(byte)
    return faults, refused


def report(faults, refused, envoy):
    lines = [f"{fault}: {position} with {byte_ranges(values)}" for fault, where in faults.items() for position, values in where.items()]
    lines += [f"(Envoy's codec refused {position} with {byte_ranges(values)})" for position, values in refused.items()]
    return "\n".join(lines + envoy.vm_failures()[:4])


def assert_swept_cleanly(envoy, token, byte_values, protocol):
    failed_before = bool(envoy.vm_failures())
    faults, refused = sweep(envoy, token, byte_values, protocol)
    print(f"\n{protocol}: " + report({}, refused, envoy))
    # And after the sweep, the filter still stands: auth enforced, nothing failed.
    after = (envoy.get("/api", dict([bearer(token)])).status_code, envoy.get("/api").status_code)
    summary = f"after the sweep: valid token {after[0]}, no token {after[1]}\n" + report(faults, refused, envoy)
    if failed_before:
        summary = "(the VM had already failed before this sweep, in an earlier test)\n" + summary
    assert not faults and after == (200, 401) and not envoy.vm_failures(), summary


def test_a_token_that_is_not_utf8_gets_401_invalid_token(envoy):
    sent = [("authorization", b"Bearer \xff\xfe"), ("authorization", b"Bearer caf\xe9.x.y"), ("x-jwt", b"\xff"), ("cookie", b"session=\xff")]
    responses = ask(envoy, [Request("GET", "/api", [("host", HOST), header]) for header in sent])
    for header, response in zip(sent, responses):
        assert response.status == 401 and response.local_reply() is not None, (header, response.describe())
        assert 'error="invalid_token"' in response.header("www-authenticate"), header
    assert not envoy.vm_failures(), envoy.vm_failures()[:4]


def test_a_logged_header_that_is_not_utf8_is_logged_with_each_invalid_byte_as_hex(envoy, token):
    values = {b"caf\xe9": "caf\\xe9", b"a\xff\xfeb": "a\\xff\\xfeb", "café".encode(): "café", b"\xc3\xa9\xe9": "é\\xe9"}
    requests = [Request("GET", "/api", [("host", HOST), ("user-agent", value), ("x-request-id", f"utf8-{i}"), bearer(token)]) for i, value in enumerate(values)]
    responses = ask(envoy, requests)
    assert [r.status for r in responses] == [200] * len(values), [r.describe() for r in responses]
    wanted = {f"utf8-{i}": rendering for i, rendering in enumerate(values.values())}

    def records():
        return {r["request_id"]: r["request_headers"]["user-agent"] for r in envoy.meshguard_records() if r.get("request_id") in wanted}

    wait_for(lambda: len(records()) == len(wanted), timeout=5)
    assert records() == wanted
    assert not envoy.vm_failures(), envoy.vm_failures()[:4]


def test_other_headers_that_are_not_utf8_are_carried_to_the_upstream(envoy, token):
    sent = [("x-junk", b"\xff"), ("user-agent", b"caf\xe9"), ("cookie", b"a=\xff")]
    [response] = ask(envoy, [Request("GET", "/api", [("host", HOST), *sent, bearer(token)])])
    seen = response.upstream_echo()
    assert seen is not None, response.describe()
    assert {name: seen["headers"].get(name) for name, _ in sent} == {name: [value.decode("latin-1")] for name, value in sent}
    assert not envoy.vm_failures(), envoy.vm_failures()[:4]


def test_every_byte_in_every_header_over_http1_is_answered_as_specified(envoy, token):
    assert_swept_cleanly(envoy, token, EVERY_BYTE, "http1")


def test_bytes_in_every_header_over_http2_are_answered_as_specified(envoy, token):
    assert_swept_cleanly(envoy, token, HTTP2_SAMPLE, "http2")


def remote_providers(names):
    return {
        name: {"issuer": ISSUER, "remote_jwks": {"cluster": "idp", "uri": f"http://idp.meshguard.test/{name}.json", "timeout": "1s", "cache_duration": "10m"}}
        for name in names
    }


def test_jwks_answers_with_any_byte_in_their_headers_do_not_fail_the_vm(tmp_path, upstream, signer, token):
    # One provider per byte, each fetching its keys the first time its rule is asked for.
    names = {byte: f"p{byte:02x}" for byte in DEPENDENCY_BYTES}
    config = {
        "providers": remote_providers(names.values()),
        "rules": [{"name": name, "match": {"prefix": f"/{name}/"}, "requires": name} for name in names.values()],
    }
    idp = Idp(jwks(signer)).start()
    try:
        with Envoy(config, {"upstream": upstream.port, "idp": idp.port}, tmp_path) as envoy:
            adopted, refused, faults = [], [], {}
            for byte, name in names.items():
                value = f"a{chr(byte)}b"
                idp.headers = [("content-type", f"application/json; x={value}"), ("x-idp-note", value)]
                response = envoy.get(f"/{name}/orders", dict([bearer(token)]))
                if response.status_code == 200:
                    adopted.append(byte)
                elif response.status_code == 503 and response.headers.get("retry-after", "").isdigit():
                    refused.append(byte)  # Envoy's codec refused the IdP's answer: no keys yet
                else:
                    faults.setdefault(f"{response.status_code} {response.text[:60]!r}", []).append(byte)
            print(f"\nkeys adopted with {byte_ranges(adopted)}; the answer refused by Envoy with {byte_ranges(refused)}")
            # The IdP fixed, every provider gets its keys (a failed fetch is retried after 1 s).
            idp.headers = []
            for byte in refused:
                if not wait_for(lambda: envoy.get(f"/{names[byte]}/orders", dict([bearer(token)])).status_code == 200, timeout=10, interval=0.2):
                    faults.setdefault("no keys once the IdP was fixed", []).append(byte)
            lines = [f"{fault}: {byte_ranges(values)}" for fault, values in faults.items()]
            assert not faults and not envoy.vm_failures(), "\n".join(lines + envoy.vm_failures()[:4])
    finally:
        idp.stop()


def test_rate_limit_service_metadata_with_any_byte_does_not_fail_the_vm(tmp_path, upstream):
    service = {"cluster": "ratelimit", "domain": "meshguard", "timeout": "500ms", "failure_mode_deny": True}
    config = {
        "rate_limits": {"global": {"key": "header:x-api-key", "service": service}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "allow_unauthenticated": True, "rate_limits": ["global"]}],
    }
    rls = Hostile("ok")
    try:
        with Envoy(config, {"upstream": upstream.port, "ratelimit": {"port": rls.port, "http2": True}}, tmp_path) as envoy:
            followed, denied, faults = [], [], {}
            for byte in DEPENDENCY_BYTES:
                rls.metadata = [("x-rls-note", f"a{chr(byte)}b")]
                statuses = []
                for mode in ("ok", "over limit"):
                    rls.mode = mode
                    response = envoy.get("/orders", {"x-api-key": f"key-{byte}"})
                    statuses.append((response.status_code, response.headers.get("retry-after")))
                # The decision follows the answer, or failure_mode_deny if Envoy refused the
                # answer's metadata; never something else, never one then the other.
                if [s for s, _ in statuses] == [200, 429]:
                    followed.append(byte)
                elif statuses == [(503, "1"), (503, "1")]:
                    denied.append(byte)
                else:
                    faults.setdefault(str(statuses), []).append(byte)
            print(f"\nanswer followed with {byte_ranges(followed)}; failure_mode_deny with {byte_ranges(denied)}")
            lines = [f"{fault}: {byte_ranges(values)}" for fault, values in faults.items()]
            assert not faults and not envoy.vm_failures(), "\n".join(lines + envoy.vm_failures()[:4])
    finally:
        rls.stop()
