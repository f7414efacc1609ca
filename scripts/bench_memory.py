#!/usr/bin/env python3
"""Envoy's memory while meshguard rate-limits 1,000,000 distinct keys (shared data has no
delete: the slot design must keep it flat). Envoy runs with two workers; requests carry a
fresh `x-api-key` each. Prints allocated heap (admin /memory) and RSS at checkpoints."""

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.envoy import Envoy  # noqa: E402


def memory(envoy):
    conn = http.client.HTTPConnection("127.0.0.1", envoy.admin_port, timeout=10)
    conn.request("GET", "/memory")
    allocated = int(json.loads(conn.getresponse().read())["allocated"])
    return allocated / 2**20, envoy.rss_mib()


def send(port, start, stop, step):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(start, stop, step):
        conn.request("GET", "/api", headers={"x-api-key": f"key-{i}"})
        conn.getresponse().read()
    conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    bucket = {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1m"}
    config = {
        "rate_limits": {"per_key": {"key": "header:x-api-key", "token_bucket": bucket}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "allow_unauthenticated": True, "rate_limits": ["per_key"]}],
    }
    with tempfile.TemporaryDirectory() as workdir, Envoy(config, {}, workdir, concurrency=2, direct_response=True) as envoy:
        rows = [("start", 0) + memory(envoy)]
        done = 0
        for checkpoint in [args.keys // 10, args.keys // 2, args.keys]:
            started = time.monotonic()
            threads = [threading.Thread(target=send, args=(envoy.listener_port, done + c, checkpoint, args.connections)) for c in range(args.connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done = checkpoint
            rows.append((f"after {done:,} keys ({time.monotonic() - started:.0f}s)", done) + memory(envoy))
            print(rows[-1], flush=True)
        print("\n| point | distinct keys | Envoy allocated (MiB) | Envoy RSS (MiB) |\n|---|---:|---:|---:|")
        for name, keys, allocated, rss in rows:
            print(f"| {name} | {keys:,} | {allocated:.1f} | {rss:.1f} |")


if __name__ == "__main__":
    main()
