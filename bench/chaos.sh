#!/usr/bin/env bash
# Chaos benchmark (issue #17): the long version of tests/section_chaos.rs — bounded random
# SIGKILLs of entry leaders, whole process groups and the Postgres postmaster against the real
# binary, for SECS seconds per run, RUNS runs. Each run prints a `chaos-figures {json}` line
# (kills, restarts, status polls answered, transient zombies, recovery time, fd and RSS before
# and after); this script collects them into bench/results-chaos.md (min / median / max).
#
#   bench/chaos.sh [SECS] [RUNS]      (default 180 s, 1 run; needs root and PostgreSQL 15)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-180}
RUNS=${2:-1}
OUT=bench/results-chaos.md
LINES=$(mktemp /tmp/chaos-bench.XXXXXX)
trap 'rm -f "$LINES"' EXIT
export PATH=/usr/lib/postgresql/15/bin:$PATH
for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS: ${SECS}s of chaos" >&2
  DMP_CHAOS_SECS=$SECS cargo test --release --test section_chaos -- --nocapture 2>&1 \
    | tee /dev/stderr | sed -n 's/^chaos-figures //p' >> "$LINES"
done
python3 - "$LINES" "$SECS" "$RUNS" > "$OUT" <<'PY'
import json, statistics, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
secs, runs = sys.argv[2], sys.argv[3]
print(f"## Chaos (`bench/chaos.sh {secs} {runs}`, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)\n")
print(f"{len(rows)} run(s) of {secs} s; Postgres in the table: {all(r['postgres'] for r in rows)}.\n")
print("| figure | min | median | max |\n|---|---|---|---|")
keys = ["kills", "group_kills", "postgres_kills", "restarts", "status_polls", "status_answered",
        "max_transient_zombies", "recovered_in_s", "fd_before", "fd_after", "rss_kb_before", "rss_kb_after"]
for k in keys:
    v = [r[k] for r in rows]
    fmt = (lambda x: f"{x:.2f}") if isinstance(v[0], float) else str
    print(f"| {k} | {fmt(min(v))} | {fmt(statistics.median(v))} | {fmt(max(v))} |")
PY
cat "$OUT"
