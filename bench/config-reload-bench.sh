#!/usr/bin/env bash
# Config reload latency (`dmp-contained reload`, answered once the reload settled) on a table of
# N sleeping entries: a no-op reload (nothing changed) and a reload that changes one entry
# (stopped, started again, ready). Prints min/median/max in ms.
# Usage: bench/config-reload-bench.sh [--entries 40] [--runs 20]
set -euo pipefail
entries=40 runs=20
while [ $# -gt 0 ]; do
    case "$1" in
        --entries) entries=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: $0 [--entries N] [--runs N]" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${DMP_CONTAINED_BIN:-$here/target/release/dmp-contained}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
table() { # $1: the changing entry's version
    printf '[supervisor]\napi_listen = "127.0.0.1:%s"\nsocket = "%s/ctl.sock"\ncache_dir = "%s/cache"\n' "$port" "$tmp" "$tmp"
    for i in $(seq 1 "$entries"); do printf '[process.s%03d]\ncommand = ["sleep", "100000"]\n' "$i"; done
    printf '[process.changing]\ncommand = ["sh", "-c", "echo %s; exec sleep 100000"]\n' "$1"
}
table v0 > "$tmp/t.toml"
"$bin" up --config "$tmp/t.toml" > "$tmp/out.log" 2>&1 &
sup=$!
trap 'kill $sup 2>/dev/null; wait $sup 2>/dev/null; rm -rf "$tmp"' EXIT
ctl() { "$bin" --config "$tmp/t.toml" --socket "$tmp/ctl.sock" "$@"; }
for _ in $(seq 1 200); do ctl wait --timeout 1s >/dev/null 2>&1 && break; sleep 0.1; done
ctl wait --timeout 30s >/dev/null 2>&1
measure() { # $1: label, then a command run before each reload
    local label=$1; shift
    local ts=()
    for r in $(seq 1 "$runs"); do
        "$@" "$r"
        local a b
        a=$(date +%s%N)
        ctl reload >/dev/null
        b=$(date +%s%N)
        ts+=($(( (b - a) / 1000 )))
    done
    printf '%s\n' "${ts[@]}" | python3 -c "
import sys, statistics
v = sorted(int(x) / 1000 for x in sys.stdin)
print(f'$label: min {v[0]:.1f} ms, median {statistics.median(v):.1f} ms, max {v[-1]:.1f} ms ({len(v)} runs, $entries + 1 entries)')"
}
noop() { :; }
edit() { table "v$1" > "$tmp/t.new" && mv "$tmp/t.new" "$tmp/t.toml"; }
measure "no-op reload" noop
measure "one changed entry" edit
