#!/usr/bin/env bash
# Warm start of a DMp-like stack, critical path vs the sum of its links (issue: "no waiting that the
# graph does not require"). The stack: real PostgreSQL 15 (data_dir) <- seed (snapshotted) <- migrate;
# venv (the shipped make-venv on tests/fixtures/dmp-like/api, uv) and frontend (the shipped
# build-frontend on tests/fixtures/dmp-like/buyer-frontend) in parallel; an app (Flask from that
# venv, ready on HTTP) after all of them. One cold start first (not counted), then RUNS warm starts.
# For each warm start, from the supervisor's own log: the critical path is walked back from the
# last entry to become ready, taking at each entry the dependency that finished last; its wall
# time (supervisor start -> app ready) is compared with the sum of the links' own durations
# (start -> ready/done/cached of each entry on the path).
#
#   bench/critical-path.sh [--json FILE] [--md FILE] [RUNS]
#       RUNS default 5; root, PostgreSQL 15, uv, npm, real PyPI for the cold start. --json FILE: each
#       warm run's figures, for bench/bench.py's critical section; --md FILE: the table's file
#       instead of bench/results-critical-path.md.
# Results: stdout and bench/results-critical-path.md.
set -euo pipefail
. "$(dirname "$0")/out-args.sh" "$@"
set -- ${REST[@]+"${REST[@]}"}
cd "$(dirname "$0")/.."
MD=${MD:-bench/results-critical-path.md}
ROOT=$PWD
RUNS=${1:-5}
BIN=${DMP_CONTAINED_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dmp-contained}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
PG_BIN=/usr/lib/postgresql/15/bin
W=$(mktemp -d /tmp/critical-path.XXXXXX)
chmod 755 "$W"
[ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PG=$(port) APP=$(port) API=$(port)
mkdir "$W/pg" && chown postgres:postgres "$W/pg"
cp -r tests/fixtures/dmp-like/api "$W/api"
cp -r tests/fixtures/dmp-like/buyer-frontend "$W/buyer"
rm -rf "$W/buyer/node_modules" "$W/buyer/app/static"
cat >"$W/app.py" <<'PY'
from flask import Flask
app = Flask(__name__)
@app.get("/_status")
def status():
    return "ok"
PY
echo "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100000);" >"$W/seed.sql"
psql="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PG -U postgres"
cat >"$W/t.toml" <<TOML
[supervisor]
api_listen = "127.0.0.1:$API"
socket = "$W/ctl.sock"
cache_dir = "$W/cache"

[process.postgres]
command = "[ -f data/PG_VERSION ] || $PG_BIN/initdb -D data -U postgres -A trust >/dev/null; exec $PG_BIN/postgres -D data -p $PG -k $W/pg -c listen_addresses=127.0.0.1"
cwd = "$W/pg"
user = "postgres"
stop_signal = "SIGINT"
stop_timeout = "20s"
data_dir = "$W/pg/data"
ready = { postgres = "host=127.0.0.1 port=$PG user=postgres dbname=postgres", interval = "100ms", start_period = "60s" }

[step.seed]
command = "$psql -c 'CREATE DATABASE app' && $psql -d app -f seed.sql"
cwd = "$W"
after = ["postgres"]
cache = { inputs = ["seed.sql"], snapshot = "postgres" }

[step.migrate]
command = "$psql -d app -c 'ALTER TABLE t ADD COLUMN IF NOT EXISTS y int DEFAULT 7'"
after = ["seed"]

[step.venv]
command = ["$ROOT/resources-for-container/bin/make-venv", ".", "$W/venv"]
cwd = "$W/api"
cache = { inputs = ["requirements*.txt", "$ROOT/resources-for-container/python-overrides.txt"], outputs = ["$W/venv/bin/python"] }

[step.frontend]
command = ["$ROOT/resources-for-container/bin/build-frontend", ".", "frontend-build:development"]
cwd = "$W/buyer"
cache = { inputs = ["package*.json"], outputs = ["node_modules", "app/static"] }

[process.app]
command = ["$W/venv/bin/python", "-m", "flask", "--app", "app", "run", "--port", "$APP"]
cwd = "$W"
after = ["migrate", "venv", "frontend", "postgres"]
ready = { http = "http://127.0.0.1:$APP/_status", status = 200, interval = "50ms" }
TOML

run() { # $1 = label; starts, waits for app ready, stops; leaves the supervisor's stderr in $W/err.$1
    "$BIN" up --config "$W/t.toml" >"$W/out.$1" 2>"$W/err.$1" &
    local pid=$! i
    for i in $(seq 1 2400); do
        grep -q "app: ready after" "$W/err.$1" && break
        grep -q ": failed:" "$W/err.$1" && { cat "$W/err.$1" >&2; kill "$pid"; exit 1; }
        sleep 0.05
    done
    kill -TERM "$pid"; wait "$pid" || true
}
echo "cold start (not counted) ..." >&2
run cold
for r in $(seq 1 "$RUNS"); do run "warm$r"; done

python3 - "$W" "$RUNS" "$JSON" <<'PY' | tee "$MD"
import re, statistics, sys, datetime, json
W, runs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deps = {"postgres": [], "seed": ["postgres"], "migrate": ["seed"], "venv": [], "frontend": [], "app": ["migrate", "venv", "frontend", "postgres"]}
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
rows = []
for r in range(1, runs + 1):
    start, end, t0, cached = {}, {}, None, []
    for line in open(f"{W}/err.warm{r}"):
        m = re.match(r"(\S+Z)\s+\w+\s+(.*)", line)
        if not m: continue
        t, msg = ts(m.group(1)), m.group(2)
        t0 = t0 or t
        m2 = re.match(r"([\w-]+): (started|done|ready after|cached)", msg)
        if not m2: continue
        n, what = m2.groups()
        if what == "cached": cached.append(n)
        if what == "started": start.setdefault(n, t)
        else:
            end.setdefault(n, t)
            start.setdefault(n, t)   # cached: no process, a zero-length link
    path, n = [], "app"
    while True:
        path.append(n)
        if not deps[n]: break
        n = max(deps[n], key=lambda d: end[d])
    links = sum(end[p] - start[p] for p in path)
    wall = end["app"] - t0
    rows.append((wall, links, wall / links, " <- ".join(path), {p: end[p] - start[p] for p in path}))
def mmm(v, f="%.2f"): return " / ".join(f % x for x in (min(v), statistics.median(v), max(v)))
print(f"## Warm start critical path ({runs} runs, {datetime.date.today()})\n")
print("| figure | min / median / max |\n|---|---|")
print(f"| warm start, supervisor start -> app ready (s) | {mmm([r[0] for r in rows])} |")
print(f"| sum of the critical path's links (s) | {mmm([r[1] for r in rows])} |")
print(f"| wall / sum of links | {mmm([r[2] for r in rows])} |")
print(f"\nCritical path (last run): {rows[-1][3]}; links: " + ", ".join(f"{k} {v:.3f} s" for k, v in rows[-1][4].items()))
print(f"Cached in the last run (not run): {', '.join(cached)}.")
print(f"\nReproduce: `bench/critical-path.sh {runs}`.")
if out:
    with open(out, "w") as f:
        json.dump({"runs": runs, "wall_s": [r[0] for r in rows], "links_s": [r[1] for r in rows],
                   "wall_over_links": [r[2] for r in rows], "path": rows[-1][3],
                   "links": rows[-1][4], "cached": cached}, f, indent=1)
PY
