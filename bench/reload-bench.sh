#!/usr/bin/env bash
# Reload benchmark (issue 14): failed requests and latency p50/p99/max during 20 saves of a
# watched app under a 250 req/s request loop, before (no `listen`) and after (`listen`), for a
# plain Python server, Debian's Flask dev server (graceful and stock), directly and via nginx.
#
#   bench/reload-bench.sh [--build]      SAVES=20 RATE=250 THREADS=5 OUT=...
#
# Needs Debian's python3-flask (/usr/bin/python3) and nginx. Results: stdout (the table in
# BENCHMARKS.md) and bench/results-reload.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--build" ]; then
    cargo build --release
fi
export DMP_CONTAINED_BIN=${DMP_CONTAINED_BIN:-${CARGO_TARGET_DIR:-target}/release/dmp-contained}
[ -x "$DMP_CONTAINED_BIN" ] || { echo "no binary at $DMP_CONTAINED_BIN (pass --build)" >&2; exit 2; }
exec python3 bench/reload_bench.py
