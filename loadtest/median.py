#!/usr/bin/env python3
"""Run a loadtest scenario N times (each against a fresh server, via loadtest/bench.sh) and
print every run's JSON line plus the median of the chosen metrics.

    loadtest/median.py --runs 3 --metric results.deliveries_per_sec -- fanout --clients 10000
"""
import argparse, json, statistics, subprocess, sys, os

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=3)
p.add_argument("--metric", action="append", default=[])
p.add_argument("args", nargs=argparse.REMAINDER)
a = p.parse_args()
args = a.args[1:] if a.args[:1] == ["--"] else a.args
here = os.path.dirname(os.path.abspath(__file__))
runs = []
for i in range(a.runs):
    out = subprocess.run([os.path.join(here, "bench.sh"), *args], capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        sys.exit(f"run {i + 1} failed:\n{out.stderr[-2000:]}")
    print(line, flush=True)
    runs.append(json.loads(line))

def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d

for m in a.metric:
    values = [get(r, m) for r in runs]
    if any(v is None or isinstance(v, (dict, list, str)) for v in values):
        print(f"median {m}: not a number in every run ({values})")
        continue
    print(f"median {m} = {statistics.median(values)}  (runs: {values})")
