#!/usr/bin/env bash
# Control-API benchmark: /_supervisor/status throughput (wrk) and latency at a fixed 2,000 req/s,
# plus the CPU cost of 50 log followers on a service writing 10k lines/s and lines lost.
# Writes bench/results-api.md. Needs a release build: `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DMP_CONTAINED_BIN:-${CARGO_TARGET_DIR:-target}/release/dmp-contained}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 1; }
exec python3 bench/api_bench.py "$BIN" bench/results-api.md
