#!/usr/bin/env python3
"""The per-request budget in instructions (issue 15): what each callback Envoy enters and each
call into Envoy costs, measured under callgrind as scripts/instructions.py measures a filter.

Callbacks: the do-nothing SDK filter (benches/noop-filter) with one callback at a time switched
off by Envoy's `capability_restriction_config` (a missing capability makes Envoy skip the export,
as if the module did not have it): the difference is what entering that callback costs, SDK
dispatch included. Host calls: benches/hostcall-probe making one call 1 and 10 times per request
against making none: the first call's cost (what meshguard pays, each call being made once on the
hot path) and the cost of each repeat.

usage: scripts/budget.py [--requests N] [--only SUBSTRING]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from instructions import NOOP_WASM, measure  # noqa: E402
from support.envoy import meshguard_filter  # noqa: E402
from support.jose import Signer  # noqa: E402
from wasm_sections import exports, imports  # noqa: E402

PROBE_WASM = REPO / "benches/hostcall-probe/target/wasm32-wasip1/release/hostcall_probe.wasm"

# The callbacks an HTTP stream can enter, in the order Envoy enters them.
STREAM_CALLBACKS = ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers",
                    "proxy_on_response_body", "proxy_on_done", "proxy_on_log", "proxy_on_delete"]
# benches/hostcall-probe's calls, as meshguard's hot path makes them.
CALLS = [
    ("time", "proxy_get_current_time_nanoseconds", "the decision's clock"),
    ("header", "proxy_get_header_map_value", "one request header (the token)"),
    ("header_map", "proxy_get_header_map_pairs", "the whole request header map"),
    ("property", "proxy_get_property", "source.address (client_ip keys, source.ip conditions)"),
    ("shared_get", "proxy_get_shared_data", "a bucket slot read"),
    ("shared_cas", "proxy_get_shared_data + proxy_set_shared_data", "a bucket slot read and compare-and-swap"),
    ("set_property", "proxy_set_property", "the filter-state export"),
    ("remove_header", "proxy_remove_header_map_value", "the token removed (forward: false)"),
    ("set_header", "proxy_replace_header_map_value", "a claim header the client also sent"),
    ("add_header", "proxy_add_header_map_value", "a claim header the client did not send"),
    # meshguard's own access log, at the end of the stream (the probe makes these in on_log).
    ("response_property", "proxy_get_property", "response.code (and request/response.total_size) in on_log"),
    ("log", "proxy_log", "one access-log line, info"),
]


def without(wasm, callbacks):
    """Plugin options that let `wasm` import all it imports and export all but `callbacks`."""
    allowed = [name for _, name in imports(wasm)]
    allowed += [name for name in exports(wasm) if name.startswith("proxy_on_") and name not in callbacks]
    return {"capability_restriction_config": {"allowed_capabilities": {name: {} for name in allowed}}}


def scenarios():
    yield "noop: every callback", meshguard_filter("", wasm=NOOP_WASM)
    for callback in STREAM_CALLBACKS[2:6]:
        yield f"noop: without {callback}", meshguard_filter("", wasm=NOOP_WASM, plugin_options=without(NOOP_WASM, {callback}))
    yield "noop: only context_create, request_headers, delete", meshguard_filter(
        "", wasm=NOOP_WASM, plugin_options=without(NOOP_WASM, set(STREAM_CALLBACKS[2:6])))
    yield "probe: no call", meshguard_filter("nothing 0", wasm=PROBE_WASM)
    for call, _, _ in CALLS:
        for repeat in (1, 10):
            yield f"probe: {call} x{repeat}", meshguard_filter(f"{call} {repeat}", wasm=PROBE_WASM)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm-up", type=int, default=100)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    token = Signer("RS256").sign(exp=int(time.time()) + 86400)
    per_request = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, wasm_filter in scenarios():
            if args.only and args.only not in name:
                continue
            instructions, _ = measure(name, [wasm_filter], workdir, args.requests, token, args.warm_up)
            per_request[name] = instructions / args.requests
            print(f"{name}: {per_request[name]:,.0f} instructions/request", flush=True)
    print()
    print(f"| callback (do-nothing SDK filter, {args.requests} requests, callgrind) | instructions/request |")
    print("|---|---:|")
    every = per_request.get("noop: every callback")
    for callback in STREAM_CALLBACKS[2:6]:
        less = per_request.get(f"noop: without {callback}")
        if every and less:
            print(f"| `{callback}` | {every - less:,.0f} |")
    least = per_request.get("noop: only context_create, request_headers, delete")
    if every and least:
        print(f"| the four together | {every - least:,.0f} |")
    print()
    print("| call into Envoy (benches/hostcall-probe) | what for | first call | each repeat |")
    print("|---|---|---:|---:|")
    none = per_request.get("probe: no call")
    for call, host_call, what in CALLS:
        once, ten = per_request.get(f"probe: {call} x1"), per_request.get(f"probe: {call} x10")
        if none and once and ten:
            print(f"| `{host_call}` | {what} | {once - none:,.0f} | {(ten - once) / 9:,.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
