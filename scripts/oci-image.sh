#!/usr/bin/env bash
# Builds the filter into an OCI image (Istio's Wasm image specification) and pushes it with
# skopeo, without Docker. Prints the pushed manifest digest: the WasmPlugin's `sha256`.
#
#   scripts/oci-image.sh [--variant compat|wasm] [--insecure] REGISTRY/REPOSITORY:TAG
#
#   --variant compat  (default) a single-layer container image holding plugin.wasm, pushed with
#                     Docker's media types: every registry and every Istio version takes it
#   --variant wasm    the OCI artifact with the Wasm media types (config
#                     application/vnd.module.wasm.config.v1+json, layer ...content.layer.v1+wasm)
#   --insecure        plain HTTP / unverified TLS to the registry (a local test registry)
#
# Registry credentials: `skopeo login REGISTRY` first. The module is MESHGUARD_WASM, by default
# target/wasm32-wasip1/release/meshguard.wasm (`make wasm`).
set -euo pipefail
cd "$(dirname "$0")/.."

variant=compat
tls=()
while [ $# -gt 1 ]; do
  case "$1" in
    --variant) variant="$2"; shift 2 ;;
    --insecure) tls=(--dest-tls-verify=false); shift ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ] || [[ "$1" == -* ]] || { [ "$variant" != compat ] && [ "$variant" != wasm ]; }; then
  sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
reference="${1#oci://}"
wasm="${MESHGUARD_WASM:-target/wasm32-wasip1/release/meshguard.wasm}"
[ -f "$wasm" ] || { echo "oci-image: $wasm not found; run 'make wasm' first" >&2; exit 1; }
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

layout="target/oci/${variant}"
rm -rf "$layout"
"$python" scripts/oci_image.py "$variant" "$wasm" "$layout" meshguard >/dev/null
format=()
[ "$variant" = compat ] && format=(--format v2s2) # Docker's media types, as `docker push` writes them
digest_file="$layout.digest"
skopeo copy --quiet "${tls[@]}" "${format[@]}" --digestfile "$digest_file" \
  "oci:$layout:meshguard" "docker://$reference"
digest=$(cat "$digest_file")
echo "pushed $reference ($variant) as $digest" >&2
echo "WasmPlugin: url: oci://$reference  sha256: ${digest#sha256:}" >&2
echo "$digest"
