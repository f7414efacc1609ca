#!/usr/bin/env bash
# `make run`: Envoy with meshguard in front of a demo upstream and a demo identity provider.
# Prints curl lines that show allow (200), no token (401), a bad token (401), wrong audience
# (403), no matching rule (403) and a rate limit (429 from the 4th call in a minute, with its
# Retry-After and RateLimit headers). With
# --check, runs them, compares statuses and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
rm -f .run/tokens.env .run/access.log

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

.venv/bin/python scripts/demo_servers.py .run/tokens.env &
pids+=($!)
for _ in $(seq 100); do [ -s .run/tokens.env ] && break; sleep 0.1; done
# shellcheck disable=SC1091
source .run/tokens.env

.venv/bin/envoy -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart -l info \
  --file-flush-interval-msec 200 --log-path .run/envoy.log &
pids+=($!)
for _ in $(seq 300); do
  curl -sf -o /dev/null http://127.0.0.1:9901/ready && break
  if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "Envoy exited; see .run/envoy.log" >&2; exit 1; fi
  sleep 0.1
done

declare -a names=(allowed no-token expired wrong-audience no-rule rate-limited rate-limit-headers
  missing-scope delete-denied delete-as-admin dry-run cors-preflight)
declare -A expect=([allowed]=200 [no-token]=401 [expired]=401 [wrong-audience]=403 [no-rule]=403
  [rate-limited]="200 200 200 429" [rate-limit-headers]=429 [missing-scope]=403 [delete-denied]=403
  [delete-as-admin]=200 [dry-run]=200 [cors-preflight]=200)
declare -A lines=(
  [allowed]="curl -i http://127.0.0.1:10000/api/orders -H 'Authorization: Bearer $VALID_TOKEN'"
  [no-token]="curl -i http://127.0.0.1:10000/api/orders"
  [expired]="curl -i http://127.0.0.1:10000/api/orders -H 'Authorization: Bearer $EXPIRED_TOKEN'"
  [wrong-audience]="curl -i http://127.0.0.1:10000/api/orders -H 'Authorization: Bearer $WRONG_AUDIENCE_TOKEN'"
  [no-rule]="curl -i http://127.0.0.1:10000/admin"
  [rate-limited]="for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:10000/api/reports -H 'Authorization: Bearer $VALID_TOKEN'; done; echo"
  [rate-limit-headers]="curl -i http://127.0.0.1:10000/api/reports -H 'Authorization: Bearer $VALID_TOKEN'"
  [missing-scope]="curl -i http://127.0.0.1:10000/api/reports/q3 -H 'Authorization: Bearer $PROFILE_ONLY_TOKEN'"
  [delete-denied]="curl -i -X DELETE http://127.0.0.1:10000/api/orders/7 -H 'Authorization: Bearer $VALID_TOKEN'"
  [delete-as-admin]="curl -i -X DELETE http://127.0.0.1:10000/api/orders/7 -H 'Authorization: Bearer $ADMIN_TOKEN'"
  [dry-run]="curl -i http://127.0.0.1:10000/api/orders -H 'Authorization: Bearer $PROFILE_ONLY_TOKEN'"
  [cors-preflight]="curl -i -X OPTIONS http://127.0.0.1:10000/api/orders -H 'Origin: https://app.example' -H 'Access-Control-Request-Method: GET'"
)
declare -A notes=(
  [missing-scope]="WWW-Authenticate: Bearer error=\"insufficient_scope\", scope=\"reports:read\""
  [delete-denied]="a deny rule wins over the allow rule: only groups=admin may DELETE"
  [dry-run]="let through, but the access log's authz record says dry_run_denied (scope orders:read)"
  [cors-preflight]="bypass_cors_preflight: a browser's preflight needs no token"
)

echo
echo "meshguard is running: Envoy on http://127.0.0.1:10000 (admin :9901)"
echo "meshguard's records: .run/envoy.log; Envoy's access log with meshguard's decision: .run/access.log"
echo "metrics: curl -s http://127.0.0.1:9901/stats/prometheus | grep ^meshguard"
echo "Try these (expected status in brackets):"
for name in "${names[@]}"; do
  echo
  echo "# ${name} [${expect[$name]}]${notes[$name]:+ — ${notes[$name]}}"
  echo "${lines[$name]}"
done
echo

if [ "${1:-}" = "--check" ]; then
  failed=0
  for name in "${names[@]}"; do
    if [ "${lines[$name]#curl -i }" != "${lines[$name]}" ]; then
      args="${lines[$name]#curl -i }"
      status=$(eval "curl -s -o /dev/null -w '%{http_code}' $args")
    else
      status=$(eval "${lines[$name]}" | xargs)
    fi
    if [ "$status" = "${expect[$name]}" ]; then
      echo "ok   ${name}: ${status}"
    else
      echo "FAIL ${name}: got ${status}, expected ${expect[$name]}"
      failed=1
    fi
  done
  sleep 0.5 # let Envoy flush its access log
  exit "$failed"
fi
echo "Press Ctrl-C to stop."
wait "${pids[1]}"
