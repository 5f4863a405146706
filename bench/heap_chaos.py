#!/usr/bin/env python3
"""Does the supervisor's heap stay flat under churn? (issue #16)

    python3 bench/heap_chaos.py [--secs 120] [--bin target/release/dmp-contained] [--out TSV]
                                [--json FILE]

Starts `dmp-contained up` (not PID 1) with small rings (`log_lines = 50`, so they are full within
seconds and stop growing) and six entries: a chatty one (a line every 10 ms), one that writes a
2,000-line burst per start, two sleepers, a shell with two group workers, and one that exits by
itself every 0.3 s. For SECS seconds it SIGKILLs a random entry's process (one in three times its
whole process group) every 20–80 ms, polls `/status` and `/logs/NAME` and opens and drops
`/logs/chatty?follow` followers, and samples the supervisor's memory once a second (RSS, PSS,
anonymous from /proc/PID/smaps_rollup; resident `[heap]` from /proc/PID/smaps). Prints the
first sample after 15 s (all warm), the max, the last, and the slope of a straight-line fit over
the whole run and over its second half, in kB per minute: a leak keeps growing, a warm heap is
flat. Raw samples: bench/results-heap-chaos.tsv (--out); --json FILE: the same figures and
counts as JSON (for bench/bench.py's heap section). Needs no root."""
import argparse, json, os, random, signal, socket, statistics, subprocess, tempfile, threading, time
import http.client, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--secs", type=int, default=120)
ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "dmp-contained"))
ap.add_argument("--out", default=os.path.join(HERE, "results-heap-chaos.tsv"), help="raw samples")
ap.add_argument("--json", help="the printed figures and counts as JSON")
a = ap.parse_args()

d = tempfile.mkdtemp(prefix="dmp-heap-chaos-")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
R = 'restart = { backoff = "10ms", backoff_max = "100ms", max_restarts = 1000000 }'
entries = {
    "chatty": "i=0; while :; do echo \"chatty line $i\"; i=$((i+1)); sleep 0.01; done",
    "burst": "seq 1 2000; sleep 1000",
    "sleep1": "sleep 1000",
    "sleep2": "sleep 1000",
    "group": "sleep 1000 & sleep 1000 & wait",
    "crashy": "echo up; sleep 0.3; exit 3",
}
cfg = os.path.join(d, "sup.toml")
with open(cfg, "w") as f:
    f.write(f'[supervisor]\napi_listen = "127.0.0.1:{port}"\nsocket = "{d}/s.sock"\n'
            f'cache_dir = "{d}/c"\nlog_lines = 50\n')
    for name, sh in entries.items():
        f.write(f'\n[process.{name}]\ncommand = ["sh", "-c", {json.dumps(sh)}]\n{R}\n')
shim = subprocess.Popen([a.bin, "up", "--config", cfg], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def get(path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_supervisor{path}", timeout=timeout) as r:
        return r.read()


sup = None
for _ in range(200):
    c = children(shim.pid)
    if c:
        sup = c[0]
        break
    time.sleep(0.05)
assert sup, "no supervisor under the shim"
for _ in range(200):
    try:
        get("/status")
        break
    except OSError:
        time.sleep(0.05)


def memory(pid):
    roll = {}
    for l in open(f"/proc/{pid}/smaps_rollup"):
        k, _, v = l.partition(":")
        if v.strip().endswith("kB"):
            roll[k] = int(v.split()[0])
    heap, cur = 0, False
    for l in open(f"/proc/{pid}/smaps"):
        if not l.split()[0].endswith(":"):
            cur = l.rstrip().endswith("[heap]")
        elif cur and l.startswith("Rss:"):
            heap = int(l.split()[1])
    return roll["Rss"], roll["Pss"], roll["Anonymous"], heap


stop = threading.Event()
counts = {"kills": 0, "group_kills": 0, "polls": 0, "poll_errors": 0, "followers": 0}


def follower():
    while not stop.is_set():
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_supervisor/logs/chatty?follow=1", timeout=5) as r:
                counts["followers"] += 1
                end = time.monotonic() + random.uniform(0.2, 2)
                while time.monotonic() < end and r.read1(4096):
                    pass
        except (OSError, http.client.HTTPException):  # the stream ends when chatty is killed
            time.sleep(0.1)


threading.Thread(target=follower, daemon=True).start()
samples = []
t0 = time.monotonic()
next_sample = t0
rng = random.Random(16)
while time.monotonic() - t0 < a.secs:
    now = time.monotonic()
    if now >= next_sample:
        samples.append((round(now - t0, 1), *memory(sup), counts["kills"], counts["followers"]))
        next_sample += 1
        for path in ("/status", "/logs/burst", "/logs/crashy"):
            try:
                get(path)
                counts["polls"] += 1
            except OSError:
                counts["poll_errors"] += 1
    kids = children(sup)
    if kids:
        pid = rng.choice(kids)
        try:
            if rng.random() < 1 / 3:
                os.killpg(pid, signal.SIGKILL)
                counts["group_kills"] += 1
            else:
                os.kill(pid, signal.SIGKILL)
            counts["kills"] += 1
        except OSError:
            pass
    time.sleep(rng.uniform(0.02, 0.08))
stop.set()
st = json.loads(get("/status"))
restarts = sum(e.get("restarts", 0) for e in st["entries"]) if isinstance(st.get("entries"), list) \
    else sum(e.get("restarts", 0) for e in st.get("entries", {}).values())
os.killpg(shim.pid, signal.SIGTERM)
shim.wait(timeout=20)

with open(a.out, "w") as f:
    f.write("s\trss_kb\tpss_kb\tanon_kb\theap_kb\tkills\tfollowers\n")
    for s in samples:
        f.write("\t".join(str(x) for x in s) + "\n")
warm = [s for s in samples if s[0] >= 15] or samples
half = len(warm) // 2
print(f"{a.secs} s: {counts['kills']} SIGKILLs ({counts['group_kills']} of whole groups), "
      f"{restarts} restarts, {counts['polls']} API reads ({counts['poll_errors']} failed), "
      f"{counts['followers']} followers; {len(warm)} samples after 15 s")
print("| kB | first | max | last | slope kB/min | slope, 2nd half |\n|---|---|---|---|---|---|")
memory = {}
for i, name in ((1, "RSS"), (2, "PSS"), (3, "anonymous"), (4, "[heap]")):
    ts, v = [s[0] for s in warm], [s[i] for s in warm]
    slope = statistics.linear_regression(ts, v).slope * 60
    slope2 = statistics.linear_regression(ts[half:], v[half:]).slope * 60
    print(f"| {name} | {v[0]} | {max(v)} | {v[-1]} | {slope:.1f} | {slope2:.1f} |")
    memory[name] = {"first": v[0], "min": min(v), "median": statistics.median(v), "max": max(v),
                    "last": v[-1], "slope_kb_min": slope, "slope2_kb_min": slope2}
if a.json:
    with open(a.json, "w") as f:
        json.dump({"secs": a.secs, "warm_from_s": warm[0][0], "samples": len(warm),
                   "second_half_from_s": warm[half][0], "restarts": restarts, **counts,
                   "memory": memory, "tsv": a.out}, f, indent=1)
