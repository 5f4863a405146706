#!/usr/bin/env bash
# Hot-reload benchmark: save-to-served latency (native vs polling, vs the app's own start time,
# vs watchexec when installed) and the idle cost of watching a 10,000-file tree.
#
#   bench/watch-bench.sh [--build]
#       RUNS=20 IDLE_S=30 DEBOUNCE=200ms POLL_INTERVAL=1s WATCHEXEC_BIN=... OUT=...
#
# Our binary: $DMP_CONTAINED_BIN or target/release/dmp-contained (built with --build).
# watchexec: $WATCHEXEC_BIN, or `watchexec` on PATH, or bench/.tools/bin/watchexec; without one
# the comparison is skipped (install: `nice cargo install watchexec-cli --root bench/.tools`).
# Results: stdout and bench/results-watch.json; bench/results-watch.md is written by hand from it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--build" ]; then
    cargo build --release
fi
export DMP_CONTAINED_BIN=${DMP_CONTAINED_BIN:-${CARGO_TARGET_DIR:-target}/release/dmp-contained}
[ -x "$DMP_CONTAINED_BIN" ] || { echo "no binary at $DMP_CONTAINED_BIN (pass --build)" >&2; exit 2; }
if [ -z "${WATCHEXEC_BIN:-}" ] && ! command -v watchexec >/dev/null && [ -x bench/.tools/bin/watchexec ]; then
    export WATCHEXEC_BIN=$PWD/bench/.tools/bin/watchexec
fi
exec python3 bench/watch_bench.py
