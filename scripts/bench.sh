#!/usr/bin/env bash
# `make bench`: meshguard against Envoy's native filters, side by side, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/bench_auth.py "$@"
