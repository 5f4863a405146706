#!/usr/bin/env python3
"""Control-API benchmark (stdlib only). Called by bench/api-bench.sh with: BIN OUT.md"""
import json, os, re, selectors, socket, subprocess, sys, tempfile, threading, time

BIN, OUT = sys.argv[1], sys.argv[2]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


tmp = tempfile.mkdtemp()
port = free_port()
go = os.path.join(tmp, "go")
RATE, SECS = 10_000, 10
writer = os.path.join(tmp, "writer.py")
open(writer, "w").write(f"""import os, sys, time
while not os.path.exists({go!r}): time.sleep(0.02)
n = 0; t0 = time.monotonic()
while n < {RATE * SECS}:
    due = int((time.monotonic() - t0) * {RATE}) + 100
    chunk = []
    while n < min(due, {RATE * SECS}):
        n += 1; chunk.append(str(n))
    if chunk: sys.stdout.write("\\n".join(chunk) + "\\n"); sys.stdout.flush()
    time.sleep(0.005)
time.sleep(3600)
""")
table = f"""[supervisor]
api_listen = "127.0.0.1:{port}"
socket = "{tmp}/ctl.sock"
cache_dir = "{tmp}/cache"
log_lines = 1000
"""
for i in range(9):
    table += f'[process.svc{i}]\ncommand = "exec sleep 3600"\n'
table += f'[process.noisy]\ncommand = ["python3", "{writer}"]\n'
open(f"{tmp}/supervisor.toml", "w").write(table)
sup = subprocess.Popen([BIN, "up", "--config", f"{tmp}/supervisor.toml"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def get(path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    b = b""
    while True:
        c = s.recv(65536)
        if not c: break
        b += c
    return b.split(b"\r\n\r\n", 1)[1]


for _ in range(200):
    try:
        st = json.loads(get("/_supervisor/status"))
        if all(e["state"] == "ready" for e in st["entries"]): break
    except Exception:
        pass
    time.sleep(0.05)
sup_pid = st["supervisor"]["pid"]
status_bytes = len(get("/_supervisor/status"))


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


res = {}
# 1. Max throughput with wrk.
url = f"http://127.0.0.1:{port}/_supervisor/status"
w = subprocess.run(["wrk", "-c", "20", "-t", "2", "-d", "10s", "--latency", url], capture_output=True, text=True).stdout
res["wrk"] = w
m = re.search(r"Requests/sec:\s+([\d.]+)", w)
res["max_rps"] = float(m.group(1)) if m else 0.0

# 2. Fixed 2,000 req/s, open loop, latency from the scheduled send time.
TARGET, DUR, THREADS = 2000, 10, 4
lat, errors = [], [0]
lock = threading.Lock()
c0 = cpu_s(sup_pid)


def paced(k):
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"GET /_supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n"
    per = THREADS / TARGET
    t0 = time.monotonic() + k * per / THREADS
    mine = []
    for i in range(int(DUR * TARGET / THREADS)):
        due = t0 + i * per
        now = time.monotonic()
        if due > now: time.sleep(due - now)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf: buf += s.recv(65536)
        head, body = buf.split(b"\r\n\r\n", 1)
        n = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        while len(body) < n: body += s.recv(65536)
        mine.append(time.monotonic() - due)
    with lock: lat.extend(mine)


ts = [threading.Thread(target=paced, args=(k,)) for k in range(THREADS)]
t_start = time.monotonic()
[t.start() for t in ts]; [t.join() for t in ts]
elapsed = time.monotonic() - t_start
c1 = cpu_s(sup_pid)
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000
res["paced"] = dict(n=len(lat), achieved=len(lat) / elapsed, p50=pct(50), p90=pct(90), p99=pct(99), max=lat[-1] * 1000,
                    cpu=(c1 - c0) / elapsed * 100)

# 3. 50 followers on a service writing 10k lines/s for 10 s.
FOLLOWERS, TOTAL = 50, RATE * SECS
sel = selectors.DefaultSelector()
state = {}
for i in range(FOLLOWERS):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /_supervisor/logs/noisy?follow=1&tail=0 HTTP/1.0\r\nHost: x\r\n\r\n")
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    state[i] = {"buf": b"", "head": False, "next": 1, "bad": 0}
time.sleep(0.5)
c0 = cpu_s(sup_pid); t0 = time.monotonic()
open(go, "w").close()
done = 0
while done < FOLLOWERS and time.monotonic() - t0 < SECS + 30:
    for key, _ in sel.select(timeout=1):
        st_ = state[key.data]
        c = key.fileobj.recv(1 << 20)
        if not c: continue
        st_["buf"] += c
        if not st_["head"]:
            if b"\r\n\r\n" not in st_["buf"]: continue
            st_["buf"] = st_["buf"].split(b"\r\n\r\n", 1)[1]; st_["head"] = True
        *lines, st_["buf"] = st_["buf"].split(b"\n")
        for l in lines:
            if l == str(st_["next"]).encode(): st_["next"] += 1
            else: st_["bad"] += 1
        if st_["next"] > TOTAL and not st_.get("done"):
            st_["done"] = True; done += 1
t_follow = time.monotonic() - t0
c1 = cpu_s(sup_pid)
lost = sum(TOTAL - (s["next"] - 1) for s in state.values())
bad = sum(s["bad"] for s in state.values())
res["follow"] = dict(followers=FOLLOWERS, lines=TOTAL, secs=t_follow, cpu=(c1 - c0) / t_follow * 100, lost=lost,
                     out_of_order=bad, complete=done)
for key in list(sel.get_map().values()): key.fileobj.close()

# Baseline: the same writer with no follower (restart noisy, writes again).
os.unlink(go)
r = subprocess.run([BIN, "--socket", f"{tmp}/ctl.sock", "restart", "noisy"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
time.sleep(1)
noisy_lines = lambda: next(e for e in json.loads(get("/_supervisor/status"))["entries"] if e["name"] == "noisy")["log_lines"]
l0 = noisy_lines()
c0 = cpu_s(sup_pid); t0 = time.monotonic(); open(go, "w").close()
while noisy_lines() < l0 + TOTAL and time.monotonic() - t0 < 30:
    time.sleep(0.2)
tb = time.monotonic() - t0; c1 = cpu_s(sup_pid)
res["baseline"] = dict(secs=tb, cpu=(c1 - c0) / tb * 100)
sup.terminate(); sup.wait(timeout=20)

p, f, b = res["paced"], res["follow"], res["baseline"]
lat_lines = "\n".join(l for l in res["wrk"].splitlines() if re.match(r"\s+(50|75|90|99)%", l))
md = f"""# Control API benchmark

Command: `bench/api-bench.sh` (release build, `{os.path.relpath(BIN)}`), {os.cpu_count()} cores shared with other
work, loopback. Table: 10 longruns (9 `sleep`, 1 numbered-line writer). `/_supervisor/status` body:
{status_bytes} bytes of pretty JSON.

## `/_supervisor/status`

| measurement | result |
|---|---|
| max rate, `wrk -c 20 -t 2 -d 10s` | {res['max_rps']:.0f} req/s |
| fixed {TARGET} req/s, {DUR} s, open loop ({THREADS} keep-alive connections, latency from scheduled send) | achieved {p['achieved']:.0f} req/s, {p['n']} requests |
| p50 / p90 / p99 / max | {p['p50']:.2f} / {p['p90']:.2f} / {p['p99']:.2f} / {p['max']:.2f} ms |
| supervisor CPU at {TARGET} req/s | {p['cpu']:.0f} % of one core |

wrk latency distribution at max rate:
```
{lat_lines}
```

## Log followers

| measurement | result |
|---|---|
| service output | {TOTAL} numbered lines at {RATE}/s |
| followers | {FOLLOWERS} (`follow=1&tail=0`), all on loopback |
| lines lost / out of order (all followers) | {f['lost']} / {f['out_of_order']} ({f['complete']}/{FOLLOWERS} followers got every line) |
| supervisor CPU with {FOLLOWERS} followers | {f['cpu']:.0f} % of one core over {f['secs']:.1f} s |
| supervisor CPU, same writer, no follower | {b['cpu']:.0f} % of one core over {b['secs']:.1f} s |

Note: the python load generators share the same 2 cores, so the numbers are upper bounds for the
supervisor's latency and CPU.
"""
open(OUT, "w").write(md)
print(md)
