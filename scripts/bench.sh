#!/usr/bin/env bash
# `make bench`: meshguard against Envoy's native filters, side by side, in one run; start-up
# and footprint; criterion micro-benchmarks of the cores. Results in benches/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The load generator (wrk) and wasm-opt (binaryen: `make wasm` runs it), from Debian.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v wasm-opt >/dev/null || missing+=(binaryen)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt

# The floor any proxy-wasm filter pays, measured beside meshguard.
for floor in noop-filter hostcall-probe; do
  (cd "benches/$floor" && cargo build --quiet --target wasm32-wasip1 --release)
done
.venv/bin/python scripts/bench.py "$@"
# Its own target directory: the library is also a cdylib, and a native release build with other
# features would write the same libmeshguard.so (cargo#6313).
CARGO_TARGET_DIR=target/bench-cores cargo bench --quiet --features testkeys --bench cores -- --noplot --warm-up-time 1 --measurement-time 3 2>&1 \
  | grep -E "^[a-zA-Z:].*|time:" | grep -v "^Benchmarking\|^Found\|^Gnuplot" | tee benches/results/cores.txt
