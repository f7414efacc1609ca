#!/usr/bin/env bash
# Optimises the filter with binaryen's wasm-opt -O3, in place, once per build (after dropping the
# exports of callbacks it does not implement): 13% smaller (V8
# compiles every function before the first request, so start-up and memory follow size) and
# ~3% fewer instructions per request under callgrind (benches/results/budget.md). The features
# are the module's own (Rust's wasm32-wasip1 defaults): the stripped module carries no
# target_features section for wasm-opt to read, and enabling more can make a module Envoy
# refuses.
set -euo pipefail
wasm=${1:?usage: scripts/wasm-opt.sh path/to/module.wasm}
stamp="$wasm.optimised"
if [ -f "$stamp" ] && [ "$(sha256sum < "$wasm")" = "$(cat "$stamp")" ]; then
  exit 0 # this build is optimised already
fi
# First the exports of callbacks meshguard leaves to the SDK's defaults (scripts/drop_exports.py):
# Envoy then skips them, and wasm-opt drops the code behind them.
cp "$wasm" "$wasm.tmp"
python3 "$(dirname "$0")/drop_exports.py" "$wasm.tmp"
wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int "$wasm.tmp" -o "$wasm.tmp"
# A new file in place of cargo's (a hard link into deps/ that cargo keeps as its own output).
mv "$wasm.tmp" "$wasm"
sha256sum < "$wasm" > "$stamp"
