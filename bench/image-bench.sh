#!/usr/bin/env bash
# Image benchmark: `docker run` of the dmp-contained image to ready, cold vs cached, `docker stop`,
# image size, and the critical path of the services as the supervisor measured it.
#
#   bench/image-bench.sh [RUNS]          (default 5; needs a Docker engine and the image)
#
# Scenarios (a new container every run, as `docker run` users get):
#   cold-bare    nothing mounted, fresh cache volume
#   cached-bare  nothing mounted, the same named volume ($CACHE_VOLUME, default dmp-cache) on
#                /var/cache/dmp-contained, primed by the cold runs
#   cold-dump    a generated test_data.sql ($DUMP_ROWS rows, default 200000) in the mount, fresh
#                cache volume: db-import imports it and the postgres chain is snapshotted
#   cached-dump  same dump, same volume: the snapshot is restored, db-create/db-import `cached`
# "ready" = first 200 from /_supervisor/health through nginx on the published port (polled every
# 50 ms from the host); "docker healthy" = Docker's own HEALTHCHECK status (5 s interval, so it is
# quantised to 5 s).  Critical path: longest `after` chain in /_supervisor/status
# (`docker exec C dmp-contained status --json`), weights = time_to_ready_s for longruns and run
# time (last_exit.at - started_at) for oneshots; a `:started` dependency counts up to its spawn.
#
# Env: IMAGE_TAG (dmp-contained), CACHE_VOLUME (dmp-cache; removed and recreated for cold runs),
# DUMP_ROWS.  Results: stdout and bench/results-image.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROOT=$PWD RUNS=${1:-5} IMAGE=${IMAGE_TAG:-dmp-contained} VOLUME=${CACHE_VOLUME:-dmp-cache}
export DUMP_ROWS=${DUMP_ROWS:-200000}
docker info >/dev/null 2>&1 || { echo "SKIP: no Docker engine"; exit 0; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "no image $IMAGE: scripts/build-image.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/image-bench.XXXXXX)
export WORK
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

python3 - <<'EOF'
import json, os, statistics, subprocess, sys, time, urllib.request

ROOT, RUNS, IMAGE, VOLUME, WORK = (os.environ[k] for k in ("ROOT", "RUNS", "IMAGE", "VOLUME", "WORK"))
RUNS, DUMP_ROWS = int(RUNS), int(os.environ["DUMP_ROWS"])
PREFIX = f"dmp-image-bench-{os.getpid()}"
live = []


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


def cleanup():
    for c in live:
        sh("docker", "rm", "-f", "-v", c, check=False)
    live.clear()


def fresh_volume():
    sh("docker", "volume", "rm", VOLUME, check=False)
    if sh("docker", "volume", "inspect", VOLUME, check=False).returncode == 0:
        sys.exit(f"volume {VOLUME} is in use: set CACHE_VOLUME")
    sh("docker", "volume", "create", VOLUME)


# A dump for the -dump scenarios: one table, DUMP_ROWS rows via COPY.
mount = os.path.join(WORK, "mount")
os.makedirs(os.path.join(mount, "apps-github-repos"))
with open(os.path.join(mount, "test_data.sql"), "w") as f:
    f.write("CREATE TABLE bench_items (id integer PRIMARY KEY, name text, payload text);\n")
    f.write("COPY bench_items (id, name, payload) FROM stdin;\n")
    for i in range(DUMP_ROWS):
        f.write(f"{i}\titem-{i}\t{'x' * 40}{i}\n")
    f.write("\\.\n")
os.chmod(mount, 0o755)
dump_mb = os.path.getsize(os.path.join(mount, "test_data.sql")) / 1e6


def poll(fn, limit, every):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        r = fn()
        if r:
            return r
        time.sleep(every)
    return None


def critical_path(entries):
    es = {e["name"]: e for e in entries if e["state"] not in ("skipped",)}

    def weight(e):
        if e["kind"] == "longrun":
            return e.get("time_to_ready_s") or 0.0
        le = e.get("last_exit") or {}
        if e.get("started_at") and le.get("at"):
            return (le["at"] - e["started_at"]) / 1000
        return 0.0

    memo = {}

    def finish(n):  # (seconds until n is ready/done, path)
        if n not in memo:
            s, p = start(n)
            memo[n] = (s + weight(es[n]), p + [n])
        return memo[n]

    def start(n):
        best = (0.0, [])
        for dep in es[n]["after"]:
            name, _, cond = dep.partition(":")
            if name not in es:
                continue
            cand = start(name) if cond == "started" else finish(name)
            if cond == "started":
                cand = (cand[0], cand[1] + [name + ":started"])
            if cand[0] > best[0]:
                best = cand
        return best

    total, path = max((finish(n) for n in es), key=lambda x: x[0])
    steps = [f"{p} {weight(es[p]):.2f}" if p in es else p for p in path]
    return total, " → ".join(steps)


def one_run(scenario, i):
    c = f"{PREFIX}-{scenario}-{i}"
    live.append(c)
    args = ["docker", "run", "-d", "--name", c, "-p", "127.0.0.1::80",
            "-v", f"{VOLUME}:/var/cache/dmp-contained"]
    if scenario.endswith("dump"):
        args += ["-v", f"{mount}:/dmp-contained/mount"]
    t0 = time.monotonic()
    sh(*args, IMAGE)
    port = sh("docker", "port", c, "80/tcp").stdout.split("\n")[0].rsplit(":", 1)[1]

    def healthy():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_supervisor/health", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    if not poll(healthy, 300, 0.05):
        print(sh("docker", "logs", "--tail", "60", c, check=False).stdout)
        sys.exit(f"{c}: not ready after 300 s")
    ready = time.monotonic() - t0
    status = json.loads(sh("docker", "exec", c, "dmp-contained", "status", "--json").stdout)
    dh = poll(lambda: sh("docker", "inspect", "-f", "{{.State.Health.Status}}", c).stdout.strip() == "healthy",
              60, 0.1)
    docker_healthy = time.monotonic() - t0 if dh else float("nan")
    entries = status["entries"]
    active = [e for e in entries if e["state"] != "skipped"]
    starts = [e["started_at"] for e in active if e.get("started_at")]
    ends = [e.get("ready_at") or (e.get("last_exit") or {}).get("at") for e in active]
    makespan = (max(x for x in ends if x) - min(starts)) / 1000
    cp, cp_path = critical_path(entries)
    t = time.monotonic()
    sh("docker", "stop", c)
    stop = time.monotonic() - t
    code = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", c).stdout.strip()
    cached = sorted(e["name"] for e in entries if e["state"] == "cached")
    logs = sh("docker", "logs", c, check=False)
    restored = [l for l in (logs.stdout + logs.stderr).splitlines() if "restor" in l.lower() or "snapshot" in l.lower()]
    sh("docker", "rm", "-v", c)
    live.remove(c)
    r = dict(ready=ready, docker_healthy=docker_healthy, makespan=makespan, cp=cp, cp_path=cp_path,
             stop=stop, exit=code, cached=cached,
             active=sorted(e["name"] for e in active),
             durations={e["name"]: (e.get("time_to_ready_s") if e["kind"] == "longrun" else
                                    (((e.get("last_exit") or {}).get("at") or 0) - (e.get("started_at") or 0)) / 1000)
                        for e in active},
             snapshot_lines=restored[:6],
             stop_warnings=[l.strip() for l in (logs.stdout + logs.stderr).splitlines()
                            if "SIGKILL" in l or "did not stop" in l][:3])
    print(f"  {scenario} #{i + 1}: ready {ready:.2f}s, docker healthy {docker_healthy:.1f}s, "
          f"supervisor makespan {makespan:.2f}s, critical path {cp:.2f}s, stop {stop:.2f}s (exit {code}), "
          f"cached: {', '.join(cached) or '-'}", flush=True)
    return r


results = {}
try:
    for base in ("bare", "dump"):
        fresh_volume()
        for scenario in (f"cold-{base}", f"cached-{base}"):
            print(f"== {scenario}", flush=True)
            results[scenario] = []
            for i in range(RUNS):
                if scenario.startswith("cold") and i > 0:
                    fresh_volume()
                results[scenario].append(one_run(scenario, i))
    cache_ls = sh("docker", "run", "--rm", "-v", f"{VOLUME}:/var/cache/dmp-contained", "--entrypoint",
                  "du", IMAGE, "-sh", "/var/cache/dmp-contained", check=False).stdout.strip()
finally:
    cleanup()

size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
image_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()[7:19]
nproc = os.cpu_count()


def mmm(xs):
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


rows = []
for sc, rs in results.items():
    rows.append(f"| {sc} | {len(rs)} | {mmm([r['ready'] for r in rs])} | {mmm([r['docker_healthy'] for r in rs])} "
                f"| {mmm([r['makespan'] for r in rs])} | {mmm([r['cp'] for r in rs])} | "
                f"{', '.join(rs[-1]['cached']) or '—'} |")
stops = [r["stop"] for rs in results.values() for r in rs]
codes = sorted({r["exit"] for rs in results.values() for r in rs})
stop_rows = [f"| {sc} | {mmm([r['stop'] for r in rs])} |" for sc, rs in results.items()]
last = {sc: rs[-1] for sc, rs in results.items()}
dur_names = sorted({n for r in last.values() for n in r["durations"]})
dur_rows = [f"| {n} | " + " | ".join(
    (f"{last[sc]['durations'][n]:.2f}" if n in last[sc]["durations"] and last[sc]["durations"][n] is not None
     else "—") for sc in last) + " |" for n in dur_names]
med_ready = {sc: statistics.median(r["ready"] for r in rs) for sc, rs in results.items()}
med_cp = {sc: statistics.median(r["cp"] for r in rs) for sc, rs in results.items()}
med_mk = {sc: statistics.median(r["makespan"] for r in rs) for sc, rs in results.items()}

md = f"""# Image benchmark

`bench/image-bench.sh {RUNS}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {nproc} CPUs shared with
other work (absolute numbers are noisy), image `{IMAGE}` ({image_id}), Docker storage driver
`{sh('docker', 'info', '-f', '{{.Driver}}').stdout.strip()}`. A new container for every run (`docker run -d -p 127.0.0.1::80`).

## docker run → ready (seconds, min / median / max)

"ready" = first HTTP 200 from `/_supervisor/health` through nginx on the published port, polled
every 50 ms from the host (every required entry ready/done *and* nginx serving). "docker healthy" =
Docker's HEALTHCHECK (`dmp-contained health`, 5 s interval), so it is quantised to the 5 s grid.
"makespan" = the supervisor's own first start → last ready/done, and "critical path" = the longest
`after` chain summed from `/_supervisor/status` (`time_to_ready_s` of longruns, run time of
oneshots), both read with `docker exec C dmp-contained status --json`.

| scenario | runs | ready | docker healthy | makespan | critical path | `cached` entries (last run) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- cold-* = fresh `{VOLUME}` volume on `/var/cache/dmp-contained`; cached-* = the same volume again
  (primed by the cold runs), new container. -dump = a generated `mount/test_data.sql`
  ({DUMP_ROWS:,} rows, {dump_mb:.1f} MB) bind-mounted with an empty `apps-github-repos/`.
- cache volume after the dump runs: `{cache_ls}`.
- critical path (last run of each): {"; ".join(f"**{sc}**: {r['cp_path']}" for sc, r in last.items())}

### Entry durations, last run of each scenario (s)

| entry | {" | ".join(last)} |
|---|{"---|" * len(last)}
{chr(10).join(dur_rows)}

## docker stop (seconds, min / median / max)

| scenario | docker stop |
|---|---|
{chr(10).join(stop_rows)}

All {len(stops)} stops: {mmm(stops)} s, exit codes {', '.join(codes)} (Docker's SIGKILL would be 137 at 10 s).

## Image

Size: {size / 1e6:.0f} MB (`docker image inspect -f '{{{{.Size}}}}'`, uncompressed).

## Against the old stack and the critical path

| | old stack (as stated in issue 6) | dmp-contained image |
|---|---|---|
| to a working environment | 35 minutes | {med_ready['cold-bare']:.1f} s median cold (nothing mounted), {med_ready['cold-dump']:.1f} s with a {dump_mb:.0f} MB dump, {med_ready['cached-dump']:.1f} s with it cached |
| size | 6 GB | {size / 1e9:.2f} GB |

- Start-up overhead (median ready − median makespan: container creation, the supervisor's start and
  config load, the 50 ms host poll): {"; ".join(f"{sc} {med_ready[sc] - med_mk[sc]:.2f} s" for sc in results)}.
- Makespan − critical path (median): {"; ".join(f"{sc} {med_mk[sc] - med_cp[sc]:.2f} s" for sc in results)}.
  ≈ 0 means every entry started the moment its `after` was satisfied. In cold-dump the gap is the
  chain snapshot of postgres after db-import (postgres and example-app stopped, PGDATA copied to
  the volume, both started again), which the per-entry durations do not include.
- Stops slower than 1.5 s and their supervisor warnings: {"; ".join(f"{sc} #{i + 1} {r['stop']:.2f} s: {' / '.join(r['stop_warnings']) or 'no SIGKILL warning in docker logs'}" for sc, rs in results.items() for i, r in enumerate(rs) if r['stop'] > 1.5) or "none"}.
"""
open(os.path.join(WORK, "results.md"), "w").write(md)
json.dump(results, open(os.path.join(WORK, "results.json"), "w"), indent=1)
print(md)
EOF
cp "$WORK/results.md" "$ROOT/bench/results-image.md"
echo "written: bench/results-image.md"
