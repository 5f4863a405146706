#!/usr/bin/env python3
"""Hot-reload benchmark (docs/WATCH.md). Run through bench/watch-bench.sh.

1. Save-to-served latency: a tiny HTTP app serves VERSION from appcode.py (imported at start);
   write a new VERSION, poll HTTP every 2 ms until it is served. RUNS runs per mode
   (native inotify, polling), compared with the app's own start-to-ready time (spawn → first
   200) and, when installed, watchexec (`-r`).
2. Idle cost of watching a 10,000-file tree (100 dirs x 100 files): CPU over IDLE_S seconds and
   RSS of the supervisor (shim + supervisor process), native vs polling, and watchexec.
"""
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

BIN = os.environ.get("DMP_CONTAINED_BIN", "target/release/dmp-contained")
WATCHEXEC = os.environ.get("WATCHEXEC_BIN") or shutil.which("watchexec")
RUNS = int(os.environ.get("RUNS", "20"))
IDLE_S = float(os.environ.get("IDLE_S", "30"))
DEBOUNCE = os.environ.get("DEBOUNCE", "200ms")
POLL = os.environ.get("POLL_INTERVAL", "1s")
TICK = os.sysconf("SC_CLK_TCK")

SERVER = r'''
import sys, http.server
import appcode
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = appcode.VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port, timeout=0.5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
            return r.read().decode()
    except Exception:
        return None


def wait(pred, timeout=30, step=0.002):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError


def write_version(d, v):
    with open(os.path.join(d, "appcode.py"), "w") as f:
        f.write(f"VERSION = {v!r}\n")


def app_dir(root):
    d = os.path.join(root, "app")
    os.makedirs(d)
    with open(os.path.join(d, "server.py"), "w") as f:
        f.write(SERVER)
    write_version(d, "v0")
    return d


def start_sup(root, body, env=None):
    api = free_port()
    cfg = os.path.join(root, "supervisor.toml")
    with open(cfg, "w") as f:
        f.write(f'[supervisor]\napi_listen = "127.0.0.1:{api}"\nsocket = "{root}/ctl.sock"\n'
                f'cache_dir = "{root}/cache"\n{body}')
    e = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    p = subprocess.Popen([BIN, "up", "--config", cfg], stdout=open(f"{root}/out.log", "w"),
                         stderr=open(f"{root}/err.log", "w"), env=e)
    wait(lambda: get_status(api), timeout=20, step=0.05)
    return p, api


def get_status(api):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/_supervisor/status", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return None


def entry(api, name):
    return next(e for e in get_status(api)["entries"] if e["name"] == name)


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def stats(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": round(statistics.median(xs) * 1000, 1),
            "p90_ms": round(xs[int(0.9 * (len(xs) - 1))] * 1000, 1),
            "min_ms": round(xs[0] * 1000, 1), "max_ms": round(xs[-1] * 1000, 1)}


def edit_runs(d, port, settle=0.3):
    out = []
    for i in range(RUNS):
        time.sleep(settle)
        v = f"run-{i}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        write_version(d, v)
        wait(lambda: get(port) == v, timeout=30)
        out.append(time.monotonic() - t0)
    return out


def latency_dmp(mode):
    root = tempfile.mkdtemp(prefix="wbench-")
    d = app_dir(root)
    port = free_port()
    body = f'''
[process.app]
command = ["python3", "server.py", "{port}"]
cwd = "app"
ready = {{ http = "http://127.0.0.1:{port}/", interval = "10ms" }}
stop_timeout = "2s"
watch = {{ debounce = "{DEBOUNCE}", mode = "{mode}", poll_interval = "{POLL}" }}
'''
    p, api = start_sup(root, body)
    try:
        wait(lambda: get(port), timeout=20)
        wait(lambda: entry(api, "app")["watch"]["mode"], timeout=20, step=0.05)
        time.sleep(1.2)  # first poll scan
        xs = edit_runs(d, port)
        trains = entry(api, "app")["watch"]["trains"]
        durations = [t["duration_s"] for t in trains]
        return {"save_to_served": stats(xs),
                "reload_duration_last10": stats(durations) if durations else None}
    finally:
        stop(p)
        shutil.rmtree(root, ignore_errors=True)


def latency_watchexec(poll):
    root = tempfile.mkdtemp(prefix="wbench-")
    d = app_dir(root)
    port = free_port()
    args = [WATCHEXEC, "-r", "-w", d, "--debounce", DEBOUNCE, "-i", "**/__pycache__/**"]
    if poll:
        args += ["--poll", POLL]
    args += ["--", "python3", "server.py", str(port)]
    p = subprocess.Popen(args, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        wait(lambda: get(port), timeout=20)
        time.sleep(1.2)
        return {"save_to_served": stats(edit_runs(d, port))}
    finally:
        stop(p)
        shutil.rmtree(root, ignore_errors=True)


def app_start_to_ready():
    root = tempfile.mkdtemp(prefix="wbench-")
    d = app_dir(root)
    xs = []
    for _ in range(RUNS):
        port = free_port()
        t0 = time.monotonic()
        p = subprocess.Popen(["python3", "server.py", str(port)], cwd=d,
                             env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        wait(lambda: get(port, timeout=0.2), timeout=20)
        xs.append(time.monotonic() - t0)
        p.terminate()
        p.wait()
    shutil.rmtree(root, ignore_errors=True)
    return stats(xs)


def tree(root, n_dirs=100, per_dir=100):
    t = os.path.join(root, "tree")
    for i in range(n_dirs):
        dd = os.path.join(t, f"d{i:03}")
        os.makedirs(dd)
        for j in range(per_dir):
            with open(os.path.join(dd, f"f{j:03}.py"), "w") as f:
                f.write("x = 1\n")
    return t


def family(pid):
    """pid and its descendants."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def cpu_ticks(pids):
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            n += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return n


def rss_kb(pids):
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def idle(p_pid, exclude_cmd="sleep"):
    time.sleep(3)
    pids = [q for q in family(p_pid) if exclude_cmd not in open(f"/proc/{q}/comm").read()]
    c0, t0 = cpu_ticks(pids), time.monotonic()
    time.sleep(IDLE_S)
    c1, t1 = cpu_ticks(pids), time.monotonic()
    return {"cpu_pct": round(100 * (c1 - c0) / TICK / (t1 - t0), 2),
            "rss_mb": round(rss_kb(pids) / 1024, 1), "processes": len(pids)}


def idle_dmp(mode):
    root = tempfile.mkdtemp(prefix="wbench-")
    tree(root)
    body = f'''
[process.idle]
command = "exec sleep 600"
watch = {{ paths = ["tree"], mode = "{mode}", poll_interval = "{POLL}" }}
'''
    p, api = start_sup(root, body)
    try:
        t0 = time.monotonic()
        wait(lambda: entry(api, "idle")["watch"]["mode"], timeout=60, step=0.01)
        setup = time.monotonic() - t0
        r = idle(p.pid)
        r["setup_s"] = round(setup, 2)
        return r
    finally:
        stop(p)
        shutil.rmtree(root, ignore_errors=True)


def idle_plain():
    root = tempfile.mkdtemp(prefix="wbench-")
    p, api = start_sup(root, '[process.idle]\ncommand = "exec sleep 600"\n')
    try:
        return idle(p.pid)
    finally:
        stop(p)
        shutil.rmtree(root, ignore_errors=True)


def idle_watchexec(poll):
    root = tempfile.mkdtemp(prefix="wbench-")
    t = tree(root)
    args = [WATCHEXEC, "-w", t]
    if poll:
        args += ["--poll", POLL]
    args += ["--", "sleep", "600"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return idle(p.pid)
    finally:
        stop(p)
        shutil.rmtree(root, ignore_errors=True)


def main():
    res = {"config": {"runs": RUNS, "debounce": DEBOUNCE, "poll_interval": POLL,
                      "idle_s": IDLE_S, "bin": BIN, "watchexec": WATCHEXEC,
                      "nproc": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    res["app_start_to_ready"] = app_start_to_ready()
    print("app start-to-ready", res["app_start_to_ready"], flush=True)
    for mode in ["native", "poll"]:
        res[f"dmp_{mode}"] = latency_dmp(mode)
        print(f"dmp {mode}", res[f"dmp_{mode}"], flush=True)
    if WATCHEXEC:
        for poll in [False, True]:
            k = "watchexec_" + ("poll" if poll else "native")
            res[k] = latency_watchexec(poll)
            print(k, res[k], flush=True)
    res["idle_plain"] = idle_plain()
    print("idle, no watch", res["idle_plain"], flush=True)
    for mode in ["native", "poll"]:
        res[f"idle_{mode}"] = idle_dmp(mode)
        print(f"idle {mode} 10k files", res[f"idle_{mode}"], flush=True)
    if WATCHEXEC:
        for poll in [False, True]:
            k = "idle_watchexec_" + ("poll" if poll else "native")
            res[k] = idle_watchexec(poll)
            print(k, res[k], flush=True)
    res["config"]["loadavg_end"] = os.getloadavg()
    out = os.environ.get("OUT", "bench/results-watch.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    sys.exit(main())
