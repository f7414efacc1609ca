"""A fuzzer of whole requests against real Envoy running meshguard with every feature on: random
methods (lower-case, made-up tokens), random paths (`..`, `//`, `%2F`, query parameters, the
`access_token` parameter), random header names and raw header bytes (any byte value, repeated
headers, values of tens of kilobytes within Envoy's limits), over HTTP/1.1 raw sockets and
HTTP/2 (h2c).

The oracle, for every request:
- an answer comes (no hang), and it is not Envoy's empty 503 of a failed VM;
- no 5xx comes from the filter (meshguard's own 500/503, which this configuration never needs);
- every refusal by meshguard is a well-formed local reply: a JSON body `{"error", "reason"}`
  naming the status's error, a `WWW-Authenticate: Bearer ...` on a 401, `insufficient_scope` on
  a 403 that has a challenge, `Retry-After` and the rate-limit headers on a 429, no token part
  in the body;
- what reaches the upstream carries no client-sent copy of a header meshguard writes (`x-user`,
  `x-jwt-payload`), nor of their underscore twins (`x_user`, `x_jwt_payload`);
- Envoy's codec refusing a request before any filter runs is recognised as such, and fine;
and, at the end, Envoy's log shows no VM failure.

Request number `i` of a run is made from `Random(f"{seed}:{i}")` alone, so a failure prints the
seed and the index, and `Fuzzer.request(i)` (`scripts/fuzz_envoy.py --seed S --replay I`)
makes the same request again: the same bytes, but for the tokens, which are signed afresh for
each run with keys of the same kinds (a valid token stays valid, an expired one expired)."""

import random
import string
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

from .envoy import QUICK_CLOSE, Envoy
from .jose import AUDIENCE, ISSUER, Signer, jwks
from .wire import Http1, Http2

# Token characters (RFC 9110 tchar), for methods and header names.
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# Visible ASCII and the space: what a header value holds that no codec refuses.
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE", b"PROPFIND"]
# Envoy's HTTP/1 codec refuses these (its HTTP/2 codec takes all but CONNECT).
ODD_METHODS = [b"CONNECT", b"get", b"post", b"Post", b"pOsT", b"delete", b"M-SEARCH", b"BREW"]
SEGMENTS = [b"api", b"orders", b"admin", b"t", b"healthz", b"w", b"..", b".", b"", b"%2F", b"%2f", b"%2e%2e", b"%2E", b"API", b"api;x=1", b"~", b"%", b"%zz", b"caf%C3%A9"]
# Paths the rules are about.
ROUTES = [b"/api/orders", b"/api/", b"/api", b"/healthz", b"/t/x", b"/t/", b"/admin/x", b"/admin", b"/w"]
# Envoy refuses these in a path: seldom.
ODD_SEGMENTS = [b"%00", "caf\u00e9".encode(), b"a b", b"<x>", b"a\\b", b"{x}"]
HOSTS = [b"svc", b"admin.example.com", b"ADMIN.example.com", b"admin.example.com.", b"admin.example.com:8443", b"admin.example.com.:8443", b"admin.example.com:", b"[::1]:80", b"", b"a" * 300]
# Header names meshguard reads or writes, and some it does not.
NAMES = [
    b"authorization", b"x-jwt", b"cookie", b"x-tenant", b"x-api-key", b"user-agent", b"x-request-id", b"traceparent", b"x-b3-traceid",
    b"x-user", b"x_user", b"X-User", b"x-jwt-payload", b"x_jwt_payload", b"accept", b"te", b"connection", b"upgrade", b"expect", b"via",
    b"x-forwarded-for", b"forwarded", b"content-type", b"Authorization", b"COOKIE",
]
# Values for the headers above that mean something to a rule or a key; a client's x-user
# value is never a subject meshguard writes.
WORDS = [b"public", b"acme", b"acme,public", b"public ", b"root", b"key-1", b"key-2", b"-", b""]
# Connection-specific headers: HTTP/2 forbids them (Envoy's codec refuses the request).
CONNECTION_SPECIFIC = {b"connection", b"upgrade", b"te", b"keep-alive", b"proxy-connection", b"transfer-encoding"}
# Headers that frame an HTTP/1.1 message: sent at random they would leave Envoy waiting for a
# body that never comes (a hang of the client, not a finding).
FRAMING = {b"content-length", b"transfer-encoding"}
# meshguard writes these upstream; a client's copy must never get there, nor one under the
# underscore twin of the name (an upstream reading headers loosely takes x_user for x-user).
WRITTEN = {"x-user", "x_user", "x-jwt-payload", "x_jwt_payload"}
SUBJECTS = ["alice", "bob"]
# Status -> the `error` of meshguard's local reply.
REFUSALS = {401: "unauthenticated", 403: "forbidden", 429: "rate_limited"}


def plugin_config(signers):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline": jwks(*signers)},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-jwt"}],
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        "rate_limits": {
            "per_key": {"key": "header:x-api-key", "token_bucket": {"max_tokens": 20, "tokens_per_fill": 10, "fill_interval": "1s"}},
        },
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "allow_unauthenticated": True},
            {"name": "public", "match": {"prefix": "/t/", "headers": {"x-tenant": "public"}}, "allow_unauthenticated": True},
            {"name": "admin", "match": {"prefix": "/admin", "hosts": ["admin.example.com"]}, "requires": "corp"},
            {"name": "writes", "match": {"prefix": "/api/", "methods": ["POST", "PUT", "DELETE"]}, "requires": "corp", "rate_limits": ["per_key"]},
            {"name": "api", "match": {"prefix": "/api/"}, "requires": "corp", "rate_limits": ["per_key"]},
            {"name": "tenants", "match": {"prefix": "/t/"}, "allow_missing": True, "requires": "corp"},
        ],
        "unmatched": "deny",
        "access_log": {"enabled": True, "sample_rate": 1.0, "request_headers": ["user-agent", "x-request-id", "x-api-key", "x-tenant", "x-jwt", "authorization", "x-user"]},
    }


class Target:
    """The Envoy under fuzz (meshguard with the configuration above, FAIL_CLOSED as Envoy's
    default) and tokens of every kind for it."""

    def __init__(self, workdir, upstream_port):
        signers = [Signer("ES256"), Signer("RS256")]
        self.envoy = Envoy(plugin_config(signers), {"upstream": upstream_port}, workdir, hcm_options=QUICK_CLOSE)
        now = int(time.time())
        stranger = Signer("ES256")
        # Valid for a day: a long run never sees them expire.
        self.tokens = [signer.sign(sub=sub, exp=now + 86400) for signer in signers for sub in SUBJECTS]
        self.tokens += [
            signers[0].sign(exp=now - 3600),  # expired
            signers[0].sign(aud="another-api"),  # 403
            signers[1].sign(nbf=now + 3600),  # not yet valid
            stranger.sign(),  # unknown key
            signers[0].sign()[:-6] + "AAAAAA",  # bad signature
            signers[0].sign(iss="https://elsewhere.test"),
        ]
        self.payloads = {token.split(".")[1] for token in self.tokens}

    def __enter__(self):
        self.envoy.start()
        return self

    def __exit__(self, *exc):
        self.envoy.stop()


@dataclass
class Case:
    index: int
    protocol: str
    method: bytes
    target: bytes
    headers: list  # [(name bytes, value bytes)]; over HTTP/2 the whole block, pseudo-headers too
    body: bytes = b""

    @property
    def one_shot(self):
        """CR or LF inside the request line or a value can end Envoy's reading of this request
        early, and what follows becomes another request: send it on a connection of its own."""
        if self.protocol != "http1":
            return False
        return any(b"\r" in part or b"\n" in part for part in [self.method, self.target] + [v for h in self.headers for v in h])

    def describe(self, full=False):
        """The request, values cut short unless `full` (the replay prints every byte)."""
        def cut(value, size):
            return value if full or len(value) <= size else value[:size] + b"..."

        headers = [(cut(name, 40), cut(value, 80)) for name, value in self.headers]
        more = "" if full or len(headers) <= 12 else f" and {len(headers) - 12} more"
        headers = headers if full else headers[:12]
        return f"#{self.index} {self.protocol} {self.method!r} {cut(self.target, 200)!r} headers={headers}{more} body={cut(self.body, 40)!r}"


@dataclass
class Outcome:
    requests: int = 0
    seconds: float = 0.0
    kinds: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # [(case, problem, response)]
    log_failures: list = field(default_factory=list)  # Envoy's lines saying the VM failed

    @property
    def rate(self):
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self):
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.kinds.items(), key=lambda item: -item[1]))
        return f"{self.requests} requests in {self.seconds:.1f} s ({self.rate:.0f}/s): {kinds}"

    @property
    def failed(self):
        return bool(self.failures or self.log_failures)

    def report(self, seed):
        lines = [f"seed {seed}: {len(self.failures)} failed requests (replay one: scripts/fuzz_envoy.py --seed {seed} --replay INDEX)"]
        for case, problem, response in self.failures[:10]:
            lines.append(f"{problem}: {case.describe()}\n    answer: {response.describe()}")
        return "\n".join(lines + [f"Envoy's log: {line}" for line in self.log_failures[:4]])


class Fuzzer:
    def __init__(self, target, seed):
        self.target = target
        self.seed = seed

    # -- making requests --------------------------------------------------------------------

    def request(self, index):
        rng = random.Random(f"{self.seed}:{index}")
        protocol = "http2" if rng.random() < 0.3 else "http1"
        method = self._method(rng, protocol)
        target = self._target(rng, protocol)
        headers = [self._header(rng, protocol) for _ in range(rng.choice([0, 0, 1, 2, 3, 4, 6, 10, 40]))]
        # Most requests look like traffic (one credential, a key, a tenant), so that they get past
        # the rules to the tokens, the buckets and the upstream.
        if rng.random() < 0.6:
            target = self._credential(rng, target, headers)
        if rng.random() < 0.3:
            headers.append((b"x-api-key", rng.choice([b"key-1", b"key-2", b"key-3"])))
        if rng.random() < 0.15:
            headers.append((b"x-tenant", rng.choice([b"public", b"acme"])))
        rng.shuffle(headers)
        body = rng.randbytes(rng.choice([1, 10, 1000])) if rng.random() < 0.1 else b""
        host = rng.choice(HOSTS) if rng.random() < 0.97 else rng.randbytes(rng.randint(1, 20))
        if protocol == "http2" and not host and rng.random() < 0.9:
            host = b"svc"  # HTTP/2 refuses an empty :authority: seldom
        if protocol == "http1":
            headers = [(b"host", host)] + [h for h in headers if h[0].lower() not in FRAMING]
            if body:
                headers.append((b"content-length", str(len(body)).encode()))
            if rng.random() < 0.2:
                rng.shuffle(headers)
        else:
            headers = self._pseudo_headers(rng, method, target, host) + headers
            if body and rng.random() < 0.7:
                headers.append((b"content-length", str(len(body)).encode()))
        return Case(index, protocol, method, target, headers, body)

    def _credential(self, rng, target, headers):
        """Adds one token where the provider looks for it; returns the target (the query may
        carry it)."""
        token = rng.choice(self.target.tokens).encode()
        where = rng.random()
        if where < 0.6:
            headers.append((b"authorization", b"Bearer " + token))
        elif where < 0.75:
            headers.append((b"x-jwt", token))
        elif where < 0.9:
            headers.append((b"cookie", b"session=" + token))
        else:
            return target + (b"&" if b"?" in target else b"?") + b"access_token=" + token
        return target

    def _method(self, rng, protocol):
        roll = rng.random()
        if roll < (0.8 if protocol == "http2" else 0.9):
            return rng.choice(METHODS)
        if roll < 0.95:
            return rng.choice(ODD_METHODS)
        if roll < 0.99:
            return "".join(rng.choice(TCHAR) for _ in range(rng.randint(1, 12))).encode()
        return rng.randbytes(rng.randint(1, 8))

    def _target(self, rng, protocol):
        roll = rng.random() * (1 if protocol == "http1" else 5)  # HTTP/2 refuses both: seldom
        if roll < 0.02:
            return b"*"
        if roll < 0.05:
            return b"http://admin.example.com/admin/x"
        segments = [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.03:
            segments.append(rng.choice(ODD_SEGMENTS) if rng.random() < 0.7 else self._raw_value(rng, 12))
        path = b"/" + (b"//" if rng.random() < 0.1 else b"/").join(segments)
        if rng.random() < 0.6:
            path = rng.choice(ROUTES) + (path if rng.random() < 0.3 else b"")
        if rng.random() < 0.4:
            params = []
            for _ in range(rng.randint(1, 4)):
                name = rng.choice([b"access_token", b"a", b"access_token", b"q", b"ACCESS_TOKEN", b"access%5Ftoken"])
                params.append(name + b"=" + self._query_value(rng))
            path += b"?" + b"&".join(params)
        if rng.random() < 0.02:
            path += b"#" + self._raw_value(rng, 8)
        return path

    def _query_value(self, rng):
        value = self._value(rng)
        if rng.random() < 0.05:
            return value  # as it is: Envoy's codec refuses most bytes a URL cannot hold
        return quote_from_bytes(value, safe=rng.choice(["", "/", "/:@!$'()*+,;="])).encode()

    def _pseudo_headers(self, rng, method, target, host):
        scheme = b"http" if rng.random() < 0.9 else rng.choice([b"https", b"ftp", b"HTTP", b""])
        block = [(b":method", method), (b":scheme", scheme), (b":authority", host), (b":path", target)]
        roll = rng.random()
        if roll < 0.05:
            block.pop(rng.randrange(len(block)))  # a pseudo-header missing
        elif roll < 0.08:
            block.append(rng.choice(block))  # one repeated
        elif roll < 0.1:
            rng.shuffle(block)
        return block

    def _header(self, rng, protocol):
        roll = rng.random()
        if roll < 0.8:
            name = rng.choice(NAMES)
            if protocol == "http2" and rng.random() < 0.9:
                # What the HTTP/2 codec refuses (upper case, connection-specific): now and then.
                name = name.lower()
                if name in CONNECTION_SPECIFIC:
                    name = b"x-" + name
        elif roll < 0.99:
            name = "".join(rng.choice(TCHAR) for _ in range(rng.randint(1, 20))).encode()
            if protocol == "http2" and rng.random() < 0.9:
                name = name.lower()
        else:
            name = rng.randbytes(rng.randint(1, 10))
        return name, self._value(rng, name)

    def _value(self, rng, name=b""):
        token = rng.choice(self.target.tokens).encode()
        roll = rng.random()
        if roll < 0.35:
            forms = {b"authorization": [b"Bearer " + token, b"bearer " + token, b"Basic " + token, token], b"cookie": [b"session=" + token, b"a=1; session=" + token + b"; b=2", b"session=" + token + b"; session=x"]}
            return rng.choice(forms.get(name.lower(), [token]))
        if roll < 0.45:
            return rng.choice(WORDS)
        if roll < 0.47:
            return self._raw_value(rng, rng.choice([1000, 10_000, 30_000]))  # huge, within Envoy's 60 KiB
        return self._raw_value(rng, 40)

    @staticmethod
    def _raw_value(rng, longest):
        size = rng.randint(0, longest)
        roll = rng.random()
        # Any byte value, or ASCII with CR, LF, VT, FF: Envoy's codec refuses most such values,
        # and one in a request is enough, so they come seldom.
        if roll < 0.015:
            return rng.randbytes(size)
        if roll < 0.03:
            return "".join(rng.choice(string.printable) for _ in range(size)).encode()
        if roll < 0.3:
            return bytes(rng.choice(range(0x80, 0x100)) for _ in range(size))  # not UTF-8 (mostly)
        if roll < 0.4:
            return "".join(rng.choice("é☃𝄞ü") for _ in range(size // 3)).encode()
        return "".join(rng.choice(PRINTABLE) for _ in range(size)).encode()

    # -- judging answers --------------------------------------------------------------------

    def problem(self, case, response):
        """What is wrong with this answer, or None."""
        if response.timed_out:
            return "no answer: the request hung"
        if response.refused_by_codec:
            return None
        # An answer to HEAD has no body: meshguard's replies are known by their content-type.
        head = case.method == b"HEAD"
        json_typed = response.header("content-type") == "application/json"
        if response.status >= 500 and (response.body == b"" if not head else response.header("content-type") is None):
            return "Envoy's empty 5xx: the VM failed"
        reply = response.local_reply() if not head else ({"error": REFUSALS.get(response.status), "reason": "-"} if json_typed else None)
        if response.status >= 500:
            return f"a {response.status} from meshguard" if reply is not None else None  # Envoy's or the upstream's
        body = response.body.decode("latin-1")
        if reply is not None and any(payload in body for payload in self.target.payloads):
            return "a token in a refusal's body"
        seen = response.upstream_echo()
        if seen is not None:
            return self._upstream_problem(seen)
        if response.status in REFUSALS:
            return self._refusal_problem(response, reply)
        return None  # Envoy's own answer (404, 400 for a path it cannot normalise, ...)

    def _upstream_problem(self, seen):
        headers = seen["headers"]
        for name in WRITTEN & set(headers):
            values = headers[name]
            if name == "x-user" and all(value in SUBJECTS for value in values) and len(values) == 1:
                continue  # written by meshguard from a verified token
            if name == "x-jwt-payload" and len(values) == 1 and values[0] in self.target.payloads:
                continue
            return f"the upstream got a client's {name}"
        return None

    @staticmethod
    def _refusal_problem(response, reply):
        status = response.status
        if reply is None:
            return f"a {status} that is not meshguard's JSON reply"
        if reply["error"] != REFUSALS[status] or not isinstance(reply["reason"], str) or not reply["reason"]:
            return f"a {status} whose body says {reply}"
        if (response.header("content-type") or "") != "application/json":
            return f"a {status} without content-type application/json"
        challenge = response.header("www-authenticate")
        if status == 401 and not (challenge or "").startswith("Bearer "):
            return f"a 401 with WWW-Authenticate {challenge!r}"
        if status == 403 and challenge is not None and challenge != 'Bearer error="insufficient_scope"':
            return f"a 403 with WWW-Authenticate {challenge!r}"
        if status == 429:
            retry_after = response.header("retry-after") or ""
            missing = [name for name in ("ratelimit-policy", "ratelimit", "x-ratelimit-limit") if response.header(name) is None]
            if not retry_after.isdigit() or missing:
                return f"a 429 with Retry-After {retry_after!r}, without {missing}"
        return None

    # -- running --------------------------------------------------------------------------

    def send(self, case, connections):
        if case.protocol == "http2":
            return connections["http2"].request(case.headers, case.body)
        if case.one_shot:
            with Http1(self.target.envoy.listener_port) as connection:
                return connection.request(case.method, case.target, case.headers, case.body)
        return connections["http1"].request(case.method, case.target, case.headers, case.body)

    def run(self, seconds, workers=4, first=0, max_failures=10):
        """Sends requests first, first+1, ... from `workers` threads for `seconds`."""
        outcome = Outcome()
        lock = threading.Lock()
        counter = iter(range(first, first + 10**9))
        deadline = time.monotonic() + seconds
        port = self.target.envoy.listener_port

        def worker():
            connections = {"http1": Http1(port), "http2": Http2(port)}
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if len(outcome.failures) >= max_failures:
                            return
                        index = next(counter)
                    case = self.request(index)
                    response = self.send(case, connections)
                    problem = self.problem(case, response)
                    with lock:
                        outcome.requests += 1
                        kind = "failure" if problem else self.kind(case, response)
                        outcome.kinds[kind] = outcome.kinds.get(kind, 0) + 1
                        if problem:
                            outcome.failures.append((case, problem, response))
            finally:
                for connection in connections.values():
                    connection.close()

        started = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcome.seconds = time.monotonic() - started
        outcome.log_failures = self.target.envoy.vm_failures()
        return outcome

    @staticmethod
    def kind(case, response):
        if response.refused_by_codec:
            return "refused by Envoy's codec"
        if response.upstream_echo() is not None or (case.method == b"HEAD" and response.status == 200):
            return "reached the upstream"
        if response.local_reply() is not None or (case.method == b"HEAD" and response.header("content-type") == "application/json"):
            return f"meshguard {response.status}"
        return f"Envoy or upstream {response.status}"
