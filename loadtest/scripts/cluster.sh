#!/usr/bin/env bash
# Starts a Redis Cluster for the benchmarks on free ports (never 6379): M masters (default 3)
# and R replicas per master (default 0), every redis-server in DIR, and prints the seed URL
# once `cluster_state:ok`. Stop it with `loadtest/scripts/cluster.sh stop DIR`.
#   loadtest/scripts/cluster.sh start /tmp/bench-cluster 3 0   # prints redis://127.0.0.1:PORT
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?DIR}
if [ "$cmd" = stop ]; then
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  exit 0
fi
masters=${3:-3}; replicas=${4:-0}
mkdir -p "$dir"
free_port() { # a port whose cluster-bus port (+10000) is free too
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p < 55000:
        try:
            b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close(); print(p); break
        except OSError:
            pass
PY
}
addrs=()
for _ in $(seq $((masters * (1 + replicas)))); do
  p=$(free_port)
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --cluster-enabled yes --cluster-config-file "$dir/n$p.conf" --cluster-node-timeout 2000 \
    --daemonize yes --pidfile "$dir/$p.pid" --logfile "$dir/$p.log"
  for _ in $(seq 100); do redis-cli -p "$p" ping > /dev/null 2>&1 && break; sleep 0.05; done
  addrs+=("127.0.0.1:$p")
done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes > "$dir/create.log"
first=${addrs[0]#127.0.0.1:}
for _ in $(seq 200); do
  redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
done
redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok' || { echo "cluster not ok" >&2; exit 1; }
echo "redis://127.0.0.1:$first"
