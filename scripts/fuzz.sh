#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 300) and prints executions per target.
#   scripts/fuzz.sh [SECONDS] [--smoke]
# `make fuzz` grows the corpus in fuzz/corpus/ (commit what it adds); `--smoke` (make test) runs
# on a copy, so the repository does not change. A crash fails the run; libFuzzer leaves the input
# in fuzz/artifacts/TARGET/ — turn it into a unit test, then fix.
# cargo fuzz needs a nightly Rust toolchain (sanitizers and libFuzzer's instrumentation).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
smoke="${2:-}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: cargo fuzz needs a nightly Rust toolchain; install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz 0.13.2 (crates.io)"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi

cd fuzz
build_log=$(mktemp)
if ! cargo +nightly fuzz build >"$build_log" 2>&1; then
  cat "$build_log" >&2
  exit 1
fi
rm -f "$build_log"
targets=$(cargo +nightly fuzz list)
summary=()
for target in $targets; do
  corpus="corpus/$target"
  if [ "$smoke" = --smoke ]; then
    corpus="../target/fuzz-smoke/$target"
    rm -rf "$corpus" && mkdir -p "$corpus" && cp -r "corpus/$target/." "$corpus/"
  fi
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  summary+=("$(printf '%-12s %12s executions in %ss, corpus %s inputs' "$target" "$runs" "$seconds" "$(ls "$corpus" | wc -l)")")
  rm -f "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"
