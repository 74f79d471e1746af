#!/usr/bin/env bash
# Runs one loadtest scenario against a fresh release server (embedded, or Redis with
# BENCH_REDIS_URL) and prints the loadtest JSON line. Usage:
#   loadtest/bench.sh idle --clients 19000
#   BENCH_REDIS_URL=redis://127.0.0.1:6390/ loadtest/bench.sh fanout --clients 10000 --mode burst
#   BENCH_REDIS_CLUSTER=redis://127.0.0.1:7000 loadtest/bench.sh fanout --clients 10000
# BENCH_SERVER and BENCH_CONFIG pick another binary and config (e.g. an older build).
# LOADTEST_HISTORY=1 (Redis mode) publishes through the history function instead of PUBLISH
# (resume always does: its missed events need offsets).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=$1; shift
dir=$(mktemp -d)
extra=()
[ -n "${BENCH_REDIS_URL:-}" ] && extra+=(--redis-url "$BENCH_REDIS_URL")
# A Redis Cluster's seeds instead (comma-separated); events are published through the admin
# endpoint (the loadtest's own Redis publisher speaks to one Redis only).
[ -n "${BENCH_REDIS_CLUSTER:-}" ] && extra+=(--redis-cluster "$BENCH_REDIS_CLUSTER") && BENCH_PUBLISH_ADMIN=1
"${BENCH_SERVER:-./target/release/miteos-stream}" --config "${BENCH_CONFIG:-loadtest/bench.toml}" --data-dir "$dir" "${extra[@]}" serve \
  > "$dir/server.out" 2> "$dir/server.err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q '^admin listening' "$dir/server.out" 2>/dev/null && break; sleep 0.1; done
public=$(grep -o 'listening on http://[0-9.:]*' "$dir/server.out" | head -1 | cut -d/ -f3)
# Ready = broker connected (Redis mode) and store answering.
for _ in $(seq 100); do curl -sf "http://$public/readyz" > /dev/null && break; sleep 0.1; done
token=$(grep -o 'mt_test_sk_[A-Za-z0-9]*' "$dir/server.out" || true)
if [ -z "$token" ]; then
  # Redis mode on a non-empty Redis: no bootstrap key; create one through the CLI.
  token=$(./target/release/miteos-stream --data-dir "$dir" "${extra[@]}" keys create --account acct_local \
    --env test --name bench --scopes tasks.read | grep -o '"key":"mt_test_sk_[A-Za-z0-9]*' | cut -d'"' -f4)
fi
if [ -n "${BENCH_SCOPES:-}" ]; then
  # A key with only these scopes (e.g. tasks.read: one topic per socket), made with the API.
  scopes=$(printf '"%s",' ${BENCH_SCOPES//,/ }); scopes="[${scopes%,}]"
  token=$(curl -sf -X POST "http://$public/v1/api-keys" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench\",\"scopes\":$scopes}" | grep -o '"key":"mt_test_sk_[A-Za-z0-9]*' | cut -d'"' -f4)
fi
pub=()
[ -n "${BENCH_REDIS_URL:-}" ] && [ "$scenario" != idle ] && [ "$scenario" != storm ] && [ "$scenario" != churn ] \
  && [ -z "${BENCH_PUBLISH_ADMIN:-}" ] && pub+=(--redis-url "$BENCH_REDIS_URL")
case "$scenario" in
  fanout|slow|resume) pub+=(--data-dir "$dir") ;;
esac
LOADTEST_TOKEN=$token ./target/release/loadtest "$scenario" --pid "$pid" "${pub[@]}" "$@"
