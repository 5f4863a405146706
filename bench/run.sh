#!/usr/bin/env bash
# Benchmark harness: dmp-contained side by side with supervisord, Horust and tini (DESIGN.md §8),
# plus venv creation uv vs pip, the warm start critical path and the heap over a chaos run: one
# report with min/median/max, ratios, the issue's targets and each section's reproducing command.
#
#   bench/run.sh [--wait-horust] [bench.py options...]
#       e.g. bench/run.sh --only logs,restart --runs 5
#            bench/run.sh --only venv,critical,heap --venv-runs 1 --critical-runs 1 --heap-secs 20
#
# Installs missing peers (supervisor, tini, gcc from Debian; Horust with `cargo install horust
# --locked` into bench/.tools, started first in the background at low priority because it
# compiles for minutes), builds the C fixtures from tests/fixtures into bench/.tools/bin, then
# runs bench/bench.py. A benchmark that reaches Horust before its build finished skips it and
# says so (or pass --wait-horust). Results: stdout, bench/results-latest.md and .json.
# Our binary: $DMP_CONTAINED_BIN or target/release/dmp-contained (not built here unless
# --build is given). Needs root (unshare --pid for the PID-1 benchmark; Postgres for the critical
# path); venv needs uv and real PyPI. Sections whose prerequisites are missing are skipped, with
# the reason in the report. Whole run ~20 min on 2 cores (venv 2-4 min, heap 10 min, the rest ~6).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/bench/.tools
mkdir -p "$TOOLS/bin"
export BENCH_COMMAND="bench/run.sh $*"

wait_horust=false
build=false
args=()
for a in "$@"; do
    case "$a" in
        --wait-horust) wait_horust=true ;;
        --build) build=true ;;
        *) args+=("$a") ;;
    esac
done

log() { printf '[run.sh] %s\n' "$*" >&2; }

# 1. Horust: start compiling early, in the background, niced, one job.
horust_pid=""
HORUST=$(command -v horust || true)
[ -z "$HORUST" ] && [ -x "$TOOLS/bin/horust" ] && HORUST=$TOOLS/bin/horust
if [ -z "$HORUST" ]; then
    if [ -f "$TOOLS/horust-install.pid" ] && kill -0 "$(cat "$TOOLS/horust-install.pid")" 2>/dev/null; then
        horust_pid=$(cat "$TOOLS/horust-install.pid")
        log "horust install already running (pid $horust_pid)"
    elif command -v cargo >/dev/null; then
        log "installing horust in the background (log: $TOOLS/horust-install.log)"
        (
            CARGO_BUILD_JOBS=1 nice -n 19 cargo install horust --locked --root "$TOOLS" \
                >"$TOOLS/horust-install.log" 2>&1
            echo $? >"$TOOLS/horust-install.rc"
        ) &
        horust_pid=$!
        echo "$horust_pid" >"$TOOLS/horust-install.pid"
    else
        log "no cargo: horust will be skipped"
    fi
    HORUST=$TOOLS/bin/horust
fi

# 2. Debian peers and build tools.
need=()
command -v supervisord >/dev/null || need+=(supervisor)
command -v tini >/dev/null || need+=(tini)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v unshare >/dev/null || need+=(util-linux)
command -v pgrep >/dev/null || need+=(procps)
if [ "${#need[@]}" -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}"
fi
# supervisor's package starts a system supervisord; it is not needed for the benchmark.
service supervisor stop >/dev/null 2>&1 || true

# 3. C fixtures (the log benchmark's consumer lives in bench/).
for f in line-producer start-stamp line-sink; do
    src=tests/fixtures/$f.c
    [ -f "$src" ] || src=bench/$f.c
    if [ ! -x "$TOOLS/bin/$f" ] || [ "$src" -nt "$TOOLS/bin/$f" ]; then
        cc -O2 -Wall -o "$TOOLS/bin/$f" "$src"
    fi
done

# 4. Our binary.
BIN=${DMP_CONTAINED_BIN:-$ROOT/target/release/dmp-contained}
if $build; then
    nice cargo build --release
fi
[ -x "$BIN" ] || log "warning: $BIN not found: dmp-contained rows will be skipped (use --build)"

if $wait_horust && [ -n "$horust_pid" ]; then
    log "waiting for the horust build to finish..."
    while kill -0 "$horust_pid" 2>/dev/null; do sleep 5; done
fi

exec python3 bench/bench.py --tools-dir "$TOOLS" --bin "$BIN" --horust "$HORUST" \
    ${horust_pid:+--horust-install-pid "$horust_pid"} "${args[@]}"
