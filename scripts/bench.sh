#!/usr/bin/env bash
# `make bench`: meshguard against Envoy's native filters, side by side, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The floor any proxy-wasm filter pays, measured beside meshguard.
(cd benches/noop-filter && cargo build --quiet --target wasm32-wasip1 --release)
.venv/bin/python scripts/bench_auth.py "$@"
