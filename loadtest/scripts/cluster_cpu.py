#!/usr/bin/env python3
"""Redis CPU per event: one Redis vs a 3-master Redis Cluster (issue 14, BENCHMARKS.md).

Starts its own redis-servers on free ports (never 6379): one plain Redis, and a cluster of
3 masters. Loads the server's function library (src/broker/redis/publish.lua; `sharded`
true on the cluster), subscribes every channel the way a node does (SUBSCRIBE on one Redis,
SSUBSCRIBE on each channel's master), publishes EVENTS events of ~200 bytes round-robin over
CHANNELS channels through `FCALL mt_publish` (pipelined, as a busy producer would), and reads
each Redis process's CPU (INFO cpu, user+sys) before and after. Then, on the cluster, the
same number of raw PUBLISH vs SPUBLISH to show that a plain PUBLISH costs every shard.

Needs redis-py (pip install redis==5.2.1). Usage: cluster_cpu.py [EVENTS] [CHANNELS]
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis
from redis.cluster import RedisCluster

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
CHANNELS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
BATCH = 500


def free_pair():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port < 55000:
            try:
                b = socket.socket()
                b.bind(("127.0.0.1", port + 10000))
                b.close()
                return port
            except OSError:
                pass


def start(port, d, cluster):
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", d]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"{d}/n{port}.conf"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return p
        except redis.ConnectionError:
            time.sleep(0.02)
    raise SystemExit(f"redis-server on {port} did not start")


def library(sharded):
    src = open(os.path.join(ROOT, "src/broker/redis/publish.lua")).read()
    line = next(l for l in src.splitlines() if l.endswith("-- @settings"))
    return src.replace(line, "local SETTINGS = { size = 1000, ttl_ms = 600000, max_bytes = "
                             f"65536, sharded = {'true' if sharded else 'false'} }} -- @settings")


def cpu(port):
    i = redis.Redis(port=port).info("cpu")
    return i["used_cpu_user"] + i["used_cpu_sys"]


def drain(conn, stop):
    """A node's subscription: read and discard every message."""
    while not stop.is_set():
        conn.get_message(timeout=0.1)


def channel(i):
    return f"mt:live:acct_{i:04d}:tasks"


def payload(n):
    return json.dumps({"event": "bench.tick", "data": {"n": n, "pad": "p" * 150}})


def publish_fcall(client, events):
    for start_n in range(0, events, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start_n, min(events, start_n + BATCH)):
            c = channel(n % CHANNELS)
            pipe.fcall("mt_publish", 2, "{" + c + "}:h", "{" + c + "}:m", payload(n))
        pipe.execute()


def measure(ports, fn):
    before = {p: cpu(p) for p in ports}
    t = time.time()
    fn()
    wall = time.time() - t
    return {p: cpu(p) - before[p] for p in ports}, wall


def main():
    d = tempfile.mkdtemp()
    procs = []
    try:
        # One Redis.
        single = free_pair()
        procs.append(start(single, d, False))
        r = redis.Redis(port=single)
        r.function_load(library(False), replace=True)
        ps = r.pubsub()
        ps.subscribe(*[channel(i) for i in range(CHANNELS)])
        stop = threading.Event()
        threading.Thread(target=drain, args=(ps, stop), daemon=True).start()
        used, wall = measure([single], lambda: publish_fcall(r, EVENTS))
        stop.set()
        one = used[single] / EVENTS * 1e6
        print(f"one Redis: {EVENTS} FCALL mt_publish over {CHANNELS} channels in {wall:.1f} s, "
              f"{one:.1f} us CPU per event")

        # A cluster of three masters.
        ports = [free_pair() for _ in range(3)]
        for p in ports:
            procs.append(start(p, d, True))
        subprocess.run(["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports]
                       + ["--cluster-yes"], check=True, stdout=subprocess.DEVNULL)
        for _ in range(200):
            if all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER INFO")
                   for p in ports):
                break
            time.sleep(0.05)
        c = RedisCluster(host="127.0.0.1", port=ports[0])
        for p in ports:
            redis.Redis(port=p).function_load(library(True), replace=True)
        owner = {}
        for i in range(CHANNELS):
            slot = c.keyslot(channel(i))
            owner[i] = c.nodes_manager.get_node_from_slot(slot).port
        stop = threading.Event()
        for p in ports:
            mine = [channel(i) for i in range(CHANNELS) if owner[i] == p]
            if mine:
                sub = redis.Redis(port=p).pubsub()
                for ch in mine:  # one channel per SSUBSCRIBE: channels of two slots are CROSSSLOT
                    sub.ssubscribe(ch)
                threading.Thread(target=drain, args=(sub, stop), daemon=True).start()
        spread = {p: sum(1 for i in owner if owner[i] == p) for p in ports}
        direct = {p: redis.Redis(port=p) for p in ports}

        def publish_sharded():
            # A cluster-aware producer: each event's FCALL pipelined to its channel's master.
            for start_n in range(0, EVENTS, BATCH):
                pipes = {p: direct[p].pipeline(transaction=False) for p in ports}
                for n in range(start_n, min(EVENTS, start_n + BATCH)):
                    i = n % CHANNELS
                    ch = channel(i)
                    pipes[owner[i]].fcall("mt_publish", 2, "{" + ch + "}:h", "{" + ch + "}:m",
                                          payload(n))
                for pipe in pipes.values():
                    pipe.execute()

        used, wall = measure(ports, publish_sharded)
        per = {p: used[p] / EVENTS * 1e6 for p in ports}
        total = sum(per.values())
        print(f"cluster: channels per master {list(spread.values())}; {wall:.1f} s; CPU per "
              f"event (all events) by shard: "
              + ", ".join(f"{per[p]:.1f}" for p in ports)
              + f" us; sum {total:.1f} us = {total / one:.2f}x one Redis")

        # Raw PUBLISH (broadcast over the cluster bus) vs SPUBLISH (the owner only).
        n = EVENTS // 4
        target = ports[0]
        client = redis.Redis(port=target)
        ch = next(channel(i) for i in range(CHANNELS) if owner[i] == target)

        def raw(cmd):
            for s in range(0, n, BATCH):
                pipe = client.pipeline(transaction=False)
                for k in range(s, min(n, s + BATCH)):
                    pipe.execute_command(cmd, ch, payload(k))
                pipe.execute()

        for cmd in ["PUBLISH", "SPUBLISH"]:
            used, wall = measure(ports, lambda: raw(cmd))
            print(f"cluster {cmd} x{n} to one channel: CPU per message by shard: "
                  + ", ".join(f"{used[p] / n * 1e6:.1f}" for p in ports) + " us")
        stop.set()
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
