#!/usr/bin/env bash
# Step cache benchmark (docs/CACHE.md): time from `dmp-contained up` to all-ready for the seeded
# stack of tests/section_cache.rs — real PostgreSQL 15 (200,000-row test_data.sql imported into
# two databases, a migration) and the search STAND-IN (tests/fixtures/search-standin.py, an
# index step) — cold (empty cache, empty data dirs) vs cached (same cache dir, empty data dirs:
# the "new container" case, restore + skip) vs kept (data dirs still hold the chain). For
# reference, the same seeding done sequentially with psql, as the old stack did.
#
#   bench/cache-bench.sh [RUNS]        (default 5; needs root and PostgreSQL 15)
#
# Binary: $DMP_CONTAINED_BIN or $CARGO_TARGET_DIR/release/dmp-contained (built with --release
# beforehand). Results: stdout and bench/results-cache.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-5}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export BIN=${DMP_CONTAINED_BIN:-$TARGET/release/dmp-contained}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
export PG_BIN=/usr/lib/postgresql/15/bin
export RUNS ROOT
WORK=$(mktemp -d /tmp/cache-bench.XXXXXX)
export WORK
chmod 755 "$WORK"
[ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT

python3 - <<'EOF'
import json, os, re, shutil, socket, statistics, subprocess, sys, time

BIN, PG_BIN, WORK, ROOT = os.environ["BIN"], os.environ["PG_BIN"], os.environ["WORK"], os.environ["ROOT"]
RUNS = int(os.environ["RUNS"])
FIX = os.path.join(ROOT, "tests/fixtures")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

PG, ES, API = free_port(), free_port(), free_port()
pgdir = os.path.join(WORK, "pg")
os.makedirs(pgdir)
shutil.chown(pgdir, "postgres", "postgres")

with open(os.path.join(WORK, "test_data.sql"), "w") as f:
    f.write("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);\n")
    f.write("COPY items (id, name, price) FROM stdin;\n")
    for i in range(1, 200_001):
        f.write("%d\titem-%d\t%d.%02d\n" % (i, i, i % 1000, i % 100))
    f.write("\\.\n")
with open(os.path.join(WORK, "migrate.sql"), "w") as f:
    f.write("ALTER TABLE items ADD COLUMN slug text;\nUPDATE items SET slug = 'item-' || id;\n"
            "CREATE INDEX items_slug ON items (slug);\n")

PSQL = "%s/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U postgres" % (PG_BIN, PG)
CREATEDBS = PSQL + " -c 'DROP DATABASE IF EXISTS app' -c 'DROP DATABASE IF EXISTS app_test' -c 'CREATE DATABASE app' -c 'CREATE DATABASE app_test'"
IMPORT_APP = PSQL + " -d app -f test_data.sql"
IMPORT_TEST = PSQL + " -d app_test -f test_data.sql"
MIGRATE = PSQL + " -d app -f migrate.sql"
INDEX = PSQL + " -At -d app -c 'SELECT id, slug FROM items WHERE id % 20 = 0 ORDER BY id' | python3 " + FIX + "/index-items.py http://127.0.0.1:%d items" % ES
PG_CMD = ("[ -f data/PG_VERSION ] || %s/initdb -D data -U postgres -A trust >/dev/null; exec %s/postgres -D data -p %d -k %s "
          "-c listen_addresses=127.0.0.1 -c fsync=off") % (PG_BIN, PG_BIN, PG, pgdir)

table = f'''[supervisor]
api_listen = "127.0.0.1:{API}"
socket = "{WORK}/ctl.sock"
cache_dir = "{WORK}/cache"

[process.postgres]
command = "{PG_CMD}"
cwd = "{pgdir}"
user = "postgres"
stop_signal = "SIGINT"
stop_timeout = "20s"
data_dir = "{pgdir}/data"
ready = {{ postgres = "host=127.0.0.1 port={PG} user=postgres dbname=postgres", interval = "50ms", start_period = "60s" }}

[process.search]
command = ["python3", "{FIX}/search-standin.py", "{ES}", "{WORK}/search"]
data_dir = "{WORK}/search"
ready = {{ http = "http://127.0.0.1:{ES}/", interval = "50ms" }}

[step.createdbs]
command = "{CREATEDBS}"
after = ["postgres"]

[step.import_app]
command = "{IMPORT_APP}"
after = ["createdbs"]
cache = {{ inputs = ["test_data.sql"] }}

[step.import_test]
command = "{IMPORT_TEST}"
after = ["createdbs"]
cache = {{ inputs = ["test_data.sql"] }}

[step.migrate]
command = "{MIGRATE}"
after = ["import_app", "import_test"]
cache = {{ inputs = ["migrate.sql"], snapshot = "postgres" }}

[step.index]
command = ["bash", "-o", "pipefail", "-c", "{INDEX}"]
after = ["migrate", "search"]
cache = {{ key_extra = ["index-v1"], snapshot = "search" }}
'''
cfg = os.path.join(WORK, "supervisor.toml")
open(cfg, "w").write(table)

def api(path):
    s = socket.create_connection(("127.0.0.1", API), timeout=5)
    s.sendall(("GET /_supervisor/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body

def up_once(label):
    err = open(os.path.join(WORK, "stderr-%s.log" % label), "w")
    t0 = time.monotonic()
    p = subprocess.Popen([BIN, "up", "--config", cfg], stdout=subprocess.DEVNULL, stderr=err, cwd=WORK)
    while True:
        try:
            code, body = api("status")
            st = json.loads(body)
            failed = [e for e in st["entries"] if e["state"] == "failed"]
            if failed:
                e = failed[0]
                raise SystemExit("%s failed (%s):\n%s\nsee %s" % (e["name"], e["reason"], "\n".join(e.get("log_tail") or []), err.name))
            if st["supervisor"]["state"] == "running":
                break
        except (OSError, ValueError, IndexError):
            pass
        if p.poll() is not None:
            raise SystemExit("supervisor exited early, see %s" % err.name)
        time.sleep(0.02)
    took = time.monotonic() - t0
    states = {e["name"]: e["state"] for e in st["entries"]}
    subprocess.run([BIN, "--config", cfg, "shutdown"], stdout=subprocess.DEVNULL, check=True)
    p.wait(timeout=60)
    err.close()
    return took, states, open(err.name).read()

def reset(cache, data):
    if cache: shutil.rmtree(os.path.join(WORK, "cache"), ignore_errors=True)
    if data:
        shutil.rmtree(os.path.join(pgdir, "data"), ignore_errors=True)
        shutil.rmtree(os.path.join(WORK, "search"), ignore_errors=True)

results, restore_s = {}, []
for mode in ["cold", "cached", "kept"]:
    times = []
    for r in range(RUNS):
        if mode == "cold": reset(True, True)
        elif mode == "cached": reset(False, True)
        took, states, log = up_once("%s-%d" % (mode, r))
        want = "done" if mode == "cold" else "cached"
        bad = {n: s for n, s in states.items() if n in ("createdbs", "import_app", "import_test", "migrate", "index") and s != want}
        if bad: raise SystemExit("%s run %d: unexpected states %s" % (mode, r, bad))
        m = re.search(r"postgres: restored data snapshot \w+ into \S+ in ([0-9.]+)s", log)
        if mode == "cached" and m: restore_s.append(float(m.group(1)))
        times.append(took)
        print("%-6s run %d: %.2fs" % (mode, r + 1, took), flush=True)
    results[mode] = times

# Snapshot size.
snaps = os.path.join(WORK, "cache/snapshots/postgres")
keydir = [d for d in os.listdir(snaps) if os.path.isdir(os.path.join(snaps, d))][0]
size = int(subprocess.run(["du", "-sb", os.path.join(snaps, keydir, "data")], capture_output=True, text=True).stdout.split()[0])
sql_size = os.path.getsize(os.path.join(WORK, "test_data.sql"))

# Reference: the old stack's sequential seeding (initdb, start, psql one after the other).
def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, cwd=WORK, stdout=subprocess.DEVNULL)
seq = []
for r in range(RUNS):
    reset(False, True)
    t0 = time.monotonic()
    sh("runuser -u postgres -- %s/initdb -D %s/data -U postgres -A trust" % (PG_BIN, pgdir))
    sh("runuser -u postgres -- %s/pg_ctl -D %s/data -w -o \"-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off\" -l %s/pg.log start" % (PG_BIN, pgdir, PG, pgdir, pgdir))
    es = subprocess.Popen(["python3", FIX + "/search-standin.py", str(ES), WORK + "/search"], stdout=subprocess.DEVNULL)
    for c in (CREATEDBS, IMPORT_APP, IMPORT_TEST, MIGRATE):
        sh(c)
    while subprocess.run(["curl", "-sf", "http://127.0.0.1:%d/" % ES], stdout=subprocess.DEVNULL).returncode: time.sleep(0.02)
    sh("bash -o pipefail -c \"%s\"" % INDEX.replace('"', '\\"'))
    took = time.monotonic() - t0
    sh("runuser -u postgres -- %s/pg_ctl -D %s/data -m fast -w stop" % (PG_BIN, pgdir))
    es.terminate(); es.wait()
    seq.append(took)
    print("sequential psql run %d: %.2fs" % (r + 1, took), flush=True)

def mmm(v): return "%.2f / %.2f / %.2f" % (min(v), statistics.median(v), max(v))
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
md = f"""# Step cache benchmark

`bench/cache-bench.sh {RUNS}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu} CPUs (shared with other
work: absolute numbers are noisy, the ratios are what matters), PostgreSQL 15 (`fsync=off`),
release build.

Stack (same as `tests/section_cache.rs`): postgres (`data_dir`), search STAND-IN (`data_dir`),
`createdbs` → `import_app` ∥ `import_test` (200,000-row COPY, {sql_size/1e6:.1f} MB of SQL) → `migrate`
(`snapshot = "postgres"`) → `index` (10,000 docs into the stand-in, `snapshot = "search"`).
Time = from `dmp-contained up` to `status` = running (every entry ready/done/cached).

| start | runs | min / median / max (s) |
|---|---|---|
| cold: empty cache dir, empty data dirs (everything runs, snapshots taken) | {RUNS} | {mmm(results['cold'])} |
| cached: same cache dir, empty data dirs (new container: restore + skip) | {RUNS} | {mmm(results['cached'])} |
| kept: same cache dir, data dirs still hold the chain (skip, no copy) | {RUNS} | {mmm(results['kept'])} |
| reference: the old way, sequential initdb + pg_ctl + psql steps + index, no supervisor, no cache | {RUNS} | {mmm(seq)} |

- postgres chain snapshot: {size/1e6:.1f} MB (`cp -a` of the data dir after `migrate`)
- restore of that snapshot (copy + swap, from the supervisor log): {mmm(restore_s) if restore_s else 'n/a'} s
- cold includes taking both snapshots (postgres is stopped, copied and started again before `index`).
"""
open(os.path.join(ROOT, "bench/results-cache.md"), "w").write(md)
print(md)
EOF
