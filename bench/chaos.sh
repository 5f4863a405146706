#!/usr/bin/env bash
# Chaos benchmark (issue #17): the long version of tests/section_chaos.rs — bounded random
# SIGKILLs of entry leaders, whole process groups and the Postgres postmaster against the real
# binary, for SECS seconds per run, RUNS runs. Each run prints a `chaos-figures {json}` line
# (kills, restarts, status polls answered, transient zombies, recovery time, fd and RSS before
# and after); this script collects them into bench/results-chaos.md (min / median / max).
# Beside each run, a sampler reads the supervisor's memory once a second (issue #16: "the heap
# stays flat over a chaos run"): RSS, PSS and anonymous memory from /proc/PID/smaps_rollup and
# the resident `[heap]` from /proc/PID/smaps, of every process of this tree's binary whose
# parent is that binary too (the supervisor under the test's shim). The table gets the first
# sample after 10 s (all entries up, the chaos started), the maximum, the last, and the slope of
# a straight-line fit over the run and over its second half (kB per minute; a leak keeps
# growing, while rings and allocator caches that fill up flatten out). Raw samples:
# bench/results-chaos-memory.tsv.
#
#   bench/chaos.sh [SECS] [RUNS]      (default 180 s, 1 run; needs root and PostgreSQL 15)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-180}
RUNS=${2:-1}
OUT=bench/results-chaos.md
BIN=$PWD/target/release/dmp-contained
LINES=$(mktemp /tmp/chaos-bench.XXXXXX)
MEM=bench/results-chaos-memory.tsv   # the raw samples: run, s, pid, rss, pss, anon, heap (kB)
: >"$MEM"
trap 'rm -f "$LINES"' EXIT
export PATH=/usr/lib/postgresql/15/bin:$PATH

# Samples `run secs pid rss pss anon heap` (kB) once a second until killed.
sample_memory() {
  python3 - "$BIN" "$1" <<'PY'
import os, sys, time
binary, run = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
def exe(pid):
    try: return os.readlink(f"/proc/{pid}/exe")
    except OSError: return None
def ppid(pid):
    with open(f"/proc/{pid}/stat") as f: return int(f.read().rsplit(")", 1)[1].split()[1])
while True:
    for p in os.listdir("/proc"):
        if not p.isdigit() or exe(p) != binary:
            continue
        try:
            if exe(ppid(p)) != binary:
                continue
            roll = {}
            for l in open(f"/proc/{p}/smaps_rollup"):
                k, _, v = l.partition(":")
                if v.strip().endswith("kB"): roll[k] = int(v.split()[0])
            heap, cur = 0, None
            for l in open(f"/proc/{p}/smaps"):
                if not l.split()[0].endswith(":"):  # a mapping's header line
                    cur = l.rstrip().endswith("[heap]")
                elif cur and l.startswith("Rss:"):
                    heap = int(l.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        print(run, round(time.monotonic() - t0, 1), p, roll.get("Rss", 0), roll.get("Pss", 0),
              roll.get("Anonymous", 0), heap, flush=True)
    time.sleep(1)
PY
}

for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS: ${SECS}s of chaos" >&2
  sample_memory "$run" >>"$MEM" &
  sampler=$!
  DMP_CHAOS_SECS=$SECS cargo test --release --test section_chaos -- --nocapture 2>&1 \
    | tee /dev/stderr | sed -n 's/^chaos-figures //p' >> "$LINES"
  kill "$sampler"
done
python3 - "$LINES" "$SECS" "$RUNS" "$MEM" > "$OUT" <<'PY'
import json, statistics, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
secs, runs = sys.argv[2], sys.argv[3]
print(f"## Chaos (`bench/chaos.sh {secs} {runs}`, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)\n")
print(f"{len(rows)} run(s) of {secs} s; Postgres in the table: {all(r['postgres'] for r in rows)}.\n")
print("| figure | min | median | max |\n|---|---|---|---|")
keys = ["kills", "group_kills", "postgres_kills", "restarts", "status_polls", "status_answered",
        "max_transient_zombies", "recovered_in_s", "fd_before", "fd_after", "rss_kb_before", "rss_kb_after"]
def row(k, v):
    fmt = (lambda x: f"{x:.2f}") if isinstance(v[0], float) else str
    print(f"| {k} | {fmt(min(v))} | {fmt(statistics.median(v))} | {fmt(max(v))} |")
for k in keys:
    row(k, [r[k] for r in rows])
# Memory samples: per run, the supervisor (the pid sampled longest).
runs_mem = {}
for l in open(sys.argv[4]):
    run, t, pid, rss, pss, anon, heap = l.split()
    runs_mem.setdefault(run, {}).setdefault(pid, []).append(
        (float(t), int(rss), int(pss), int(anon), int(heap)))
per = {}
for run, pids in runs_mem.items():
    s = max(pids.values(), key=len)
    s0 = [x for x in s if x[0] >= s[0][0] + 10] or s
    ts = [x[0] for x in s0]
    half = len(s0) // 2
    for i, name in ((1, "rss"), (2, "pss"), (3, "anon"), (4, "heap")):
        v = [x[i] for x in s0]
        def slope(ts, v):
            return statistics.linear_regression(ts, v).slope * 60 if len(set(ts)) > 1 else 0.0
        for k, x in ((f"{name}_kb_first", v[0]), (f"{name}_kb_max", max(v)),
                     (f"{name}_kb_last", v[-1]), (f"{name}_kb_per_min", round(slope(ts, v), 1)),
                     (f"{name}_kb_per_min_2nd_half", round(slope(ts[half:], v[half:]), 1))):
            per.setdefault(k, []).append(x)
    per.setdefault("memory_samples", []).append(len(s0))
for k, v in per.items():
    row(k, v)
PY
cat "$OUT"
