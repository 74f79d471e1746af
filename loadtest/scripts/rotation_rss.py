#!/usr/bin/env python3
"""RSS of a release node before and after N rotations of one key (issue 10 item 1).

    loadtest/scripts/rotation_rss.py [N]    (default 1000; builds nothing: run
                                             `cargo build --release` first)
Starts target/release/miteos-stream on free ports with a fresh data dir, creates a key,
rotates it N times with a one-hour grace over the HTTP API, and prints VmRSS before and
after, and which of the last secrets still authenticate.
"""
import json, os, re, subprocess, sys, tempfile, time, urllib.request, urllib.error

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
data = tempfile.mkdtemp()
proc = subprocess.Popen(
    [os.environ.get("BIN", f"{root}/target/release/miteos-stream"), "--data-dir", data, "--listen", "127.0.0.1:0",
     "--admin-listen", "127.0.0.1:0", "serve"],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
boot = addr = None
for line in proc.stdout:
    if line.startswith("bootstrap key"):
        boot = line.split(": ", 1)[1].strip()
    if line.startswith("listening on http://"):
        addr = line.strip().split("http://", 1)[1]
        break

def call(method, path, key, body=None):
    req = urllib.request.Request(f"http://{addr}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

def rss_kib():
    with open(f"/proc/{proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

try:
    _, key = call("POST", "/v1/api-keys", boot, {"name": "r", "scopes": ["teams.read"]})
    secrets = [key["key"]]
    before = rss_kib()
    for _ in range(N):
        status, body = call("POST", f"/v1/api-keys/{key['id']}/rotate", boot,
                            {"grace_period_seconds": 3600})
        assert status == 201, body
        secrets.append(body["key"])
    time.sleep(0.5)
    after = rss_kib()
    valid = [call("GET", "/v1/api-keys", s)[0] == 200 for s in secrets[-4:]]
    print(json.dumps({"rotations": N, "rss_before_kib": before, "rss_after_kib": after,
                      "last_4_secrets_valid": valid}))
finally:
    proc.terminate()
    proc.wait()
