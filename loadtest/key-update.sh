#!/usr/bin/env bash
# Issue 13: time from a PATCH's answer on node A to the last stream's change on node B.
# Starts a private redis-server on a free port and two release nodes on it, then runs
# `loadtest key-update` (RUNS updates, STREAMS streams of the key on B each).
#   cargo build --release --workspace && loadtest/key-update.sh [RUNS] [STREAMS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}; streams=${2:-100}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/redis.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping > /dev/null 2>&1 && break; sleep 0.05; done
url="redis://127.0.0.1:$rport/"
ports=()
for i in 0 1; do
  port=$(free_port); admin=$(free_port); ports+=("$port")
  mkdir -p "$work/node$i"
  ./target/release/miteos-stream --config loadtest/bench.toml --data-dir "$work/node$i" --redis-url "$url" \
    --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin serve > "$work/node$i/out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^admin listening' "$work/node$i/out" && break; sleep 0.1; done
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
done
token=$(grep -o 'mt_test_sk_[A-Za-z0-9]*' "$work/node0/out" | head -1)
[ -n "$token" ] || { echo "no bootstrap key from node A"; cat "$work/node0/out"; exit 1; }
LOADTEST_TOKEN=$token ./target/release/loadtest key-update --patch-addr "127.0.0.1:${ports[0]}" \
  --addr "127.0.0.1:${ports[1]}" --runs "$runs" --streams "$streams"
