"""`make bench` keeps working: a one-round, one-second run of the benchmark harness against real
Envoy and wrk writes its table, chart data and JSON. Nothing here asserts a speed; figures come
from `make bench`, not from timed tests."""

import json
import subprocess
import sys

from support.envoy import REPO


def test_the_benchmark_runs_and_writes_its_results(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--rounds", "1", "--seconds", "1", "--warm-up", "1", "--tokens", "20",
         "--only", "log off", "--no-footprint", "--no-probes", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    ours = results["scenarios"]["meshguard: auth + rate limit, log off"]
    assert ours["rps"] > 0 and ours["cpu_us"] > 0 and ours["p99_ms"] >= ours["p50_ms"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| meshguard: auth + rate limit, log off |" in table
