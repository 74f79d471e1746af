#!/usr/bin/env bash
# Three release nodes on one Redis, each holding N subscribed sockets (one loadtest
# process per node: a process may hold at most 20,000 open files here); one publisher
# sends E events at R/s through node 0's admin endpoint (`FCALL mt_publish` by the node, as
# with history on: PUBLISH on one Redis, SPUBLISH on a cluster's shard); every listener must
# receive every event.
#   loadtest/three-nodes.sh redis://127.0.0.1:6390/ 19000 100 50
# On a Redis Cluster, give its seeds after --cluster:
#   loadtest/three-nodes.sh --cluster redis://127.0.0.1:7000 19000 100 50
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$1" = --cluster ]; then shift; redis=(--redis-cluster "$1"); else redis=(--redis-url "$1"); fi
url=$1; n=${2:-19000}; events=${3:-100}; rate=${4:-50}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for i in 0 1 2; do
  port=$((8180 + 10 * i))
  mkdir -p "$work/node$i"
  ./target/release/miteos-stream --config loadtest/bench.toml --data-dir "$work/node$i" "${redis[@]}" \
    --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$((port + 1)) serve > "$work/node$i/out" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 100); do grep -q '^admin listening' "$work/node$i/out" && break; sleep 0.1; done
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((8180 + 10 * i))/readyz" > /dev/null && break; sleep 0.1; done
done
token=$(./target/release/miteos-stream --data-dir "$work" "${redis[@]}" keys create --account acct_local \
  --env test --name bench3 --scopes tasks.read | grep -o '"key":"mt_test_sk_[A-Za-z0-9]*' | cut -d'"' -f4)
export LOADTEST_TOKEN=$token
for i in 0 1 2; do
  ./target/release/loadtest fanout --listen-only --addr 127.0.0.1:$((8180 + 10 * i)) --clients "$n" \
    --events "$events" --timeout-secs 300 --src-first $((1 + 20 * i)) --src-last $((20 + 20 * i)) \
    > "$work/listener$i.json" 2> "$work/listener$i.err" &
  pids+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 1200); do
    grep -q '^ramped' "$work/listener$i.err" 2>/dev/null && break
    kill -0 "${pids[$((3 + i))]}" 2>/dev/null || break # it exited: say why below
    sleep 0.25
  done
  grep -q '^ramped' "$work/listener$i.err" || { echo "listener $i did not ramp"; cat "$work/listener$i.err"; exit 1; }
done
echo "rss per node after ramp (MiB): $(for p in "${pids[@]:0:3}"; do echo -n "$(( $(grep VmRSS /proc/$p/status | awk '{print $2}') / 1024 )) "; done)" >&2
./target/release/loadtest fanout --addr 127.0.0.1:8180 --clients 1 --events "$events" --rate "$rate" \
  --admin 127.0.0.1:8181 --data-dir "$work/node0" --src-first 100 --src-last 100 > "$work/publisher.json" 2> "$work/publisher.err"
for i in 0 1 2; do wait "${pids[$((3 + i))]}" || true; cat "$work/listener$i.json"; done
