#!/usr/bin/env bash
# Autobahn TestSuite cases (run by kosoku, PyPI) against the conformance echo endpoint, which
# exists only in a build with the `conformance` feature. Fails on any case whose result is
# worse than tests/conformance/expected.json. Usage: tests/conformance/run.sh [--update]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/conformance
command -v kosoku >/dev/null 2>&1 || python3 -m pip install --quiet kosoku==0.1.0
cargo build --quiet --features conformance --bin miteos-stream
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
target/debug/miteos-stream --data-dir "$work/data" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 serve >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  addr=$(sed -n 's#^listening on http://##p' "$work/server.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "the server did not start"; exit 1; }
# 12.* and 13.* are permessage-deflate, which the server does not offer.
kosoku -m fuzzingclient -o "$work/reports" -x '12.*' -x '13.*' "ws://$addr/conformance/echo" \
  >"$work/kosoku.log" 2>&1 || { cat "$work/kosoku.log"; exit 1; }
python3 "$here/check.py" "$work/reports" "$here/expected.json" "$@"
