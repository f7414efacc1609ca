# meshguard: `make run` shows it working; `make test` checks everything. Both set themselves up.
SHELL := /bin/bash
WASM := target/wasm32-wasip1/release/meshguard.wasm
PYTEST := .venv/bin/pytest

.PHONY: budget all setup build wasm trap-wasm cli rls-server unit lint integration fuzz fuzz-smoke test run bench instructions soak clean schema oci-image

all: build

setup:
	@scripts/setup.sh

# The shipped filter leaves ES256/ES384 to Envoy's verify_signature (Envoy >= 1.31). For older
# Envoy (Istio < 1.23): `make wasm WASM_FEATURES=portable-ecdsa` verifies them in Wasm too.
WASM_FEATURES ?=
wasm: setup
	cargo build --target wasm32-wasip1 --release --lib --no-default-features $(if $(WASM_FEATURES),--features $(WASM_FEATURES))
	scripts/wasm-opt.sh $(WASM)

build: wasm

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib --no-default-features -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib --no-default-features --features test-trap -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib --no-default-features --features portable-ecdsa -- -D warnings
	cargo clippy --lib --tests --no-default-features -- -D warnings

# The unit tests twice: with the default features, and with the shipped module's (no
# `portable-ecdsa`: ES256/ES384 refused with a reason where the host cannot verify them).
unit: setup
	cargo test
	cargo test --lib --no-default-features

rls-server: setup
	cargo build --release --quiet --manifest-path tests/support/rls-server/Cargo.toml

# The test-only build that traps on request (tests/test_vm_failure.py); its own target directory
# so it never replaces the real filter.
trap-wasm: setup
	CARGO_TARGET_DIR=target/test-trap cargo build --quiet --target wasm32-wasip1 --release --lib --no-default-features --features test-trap

cli: setup
	cargo build --quiet --bin meshguard

integration: wasm trap-wasm rls-server cli
	$(PYTEST) -q tests

# Every parser that sees outside input, under libFuzzer (cargo fuzz, nightly toolchain), then
# random requests against real Envoy running the filter (scripts/fuzz_envoy.py, a new seed each
# run). `make fuzz` runs each libFuzzer target and the request fuzzer FUZZ_SECONDS (default 300)
# and grows fuzz/corpus/; `make test` runs each target for 10 s on a copy of the corpus, and the
# request fuzzer for 12 s with a fixed seed (tests/test_request_fuzz.py).
fuzz: setup wasm
	scripts/fuzz.sh $(or $(FUZZ_SECONDS),300)
	.venv/bin/python scripts/fuzz_envoy.py --seconds $(or $(FUZZ_SECONDS),300)

fuzz-smoke: setup
	scripts/fuzz.sh 10 --smoke

test: lint unit integration fuzz-smoke

# The pluginConfig JSON Schema is generated from the Rust types; `make test` fails if the
# committed copy is stale.
schema:
	cargo run --quiet --bin meshguard -- schema > istio/pluginconfig.schema.json

# make oci-image IMAGE=registry.example.com/platform/meshguard:0.1.0 [VARIANT=wasm]
oci-image: wasm
	@test -n "$(IMAGE)" || { echo "usage: make oci-image IMAGE=REGISTRY/REPOSITORY:TAG [VARIANT=compat|wasm]" >&2; exit 2; }
	scripts/oci-image.sh --variant $(or $(VARIANT),compat) $(IMAGE)

run: wasm
	scripts/run.sh

# Steady load with churning tokens, users and signing keys, at --concurrency 2, for
# SOAK_SECONDS (default 600): memory start/peak/end, unexpected statuses, dropped requests.
# Not part of `make test` (a 20 s run of it is). Results in benches/results/soak.md.
SOAK_SECONDS ?= 600
soak: wasm
	.venv/bin/python scripts/soak.py --seconds $(SOAK_SECONDS)

bench: wasm
	scripts/bench.sh

# Instructions per request under valgrind's callgrind: repeatable to ±0.3% whatever the
# neighbours do, where Envoy CPU µs move by ±2 µs (about 4 minutes; benches/results/budget-draft.md).
instructions: wasm
	cd benches/noop-filter && cargo build --quiet --target wasm32-wasip1 --release
	.venv/bin/python scripts/instructions.py

# The per-request budget in instructions: each callback Envoy enters and each call into Envoy on
# meshguard's hot path, measured one at a time under callgrind (about 5 minutes).
budget: setup
	cd benches/noop-filter && cargo build --quiet --target wasm32-wasip1 --release
	cd benches/hostcall-probe && cargo build --quiet --target wasm32-wasip1 --release
	.venv/bin/python scripts/budget.py

clean:
	cargo clean
	rm -rf .run
