#!/usr/bin/env python3
"""Reload benchmark (issue 14). Run through bench/reload-bench.sh.

A request loop (THREADS clients, each one request per THREADS/RATE s at most, RATE req/s in
all, a new connection per request; a late client does not catch up) against an app while SAVES edits are saved one after the other (each waits for the
reload to finish), directly and through nginx, before (the app binds its port; no `listen`)
and after (`listen`: the supervisor holds the socket). Apps: a plain Python server and Debian's
Flask dev server (Werkzeug 2.2), both stopping their server on SIGTERM and joining accepted
requests; and the stock Flask dev server (dies on SIGTERM with what it accepted).
Reports failed requests and latency p50/p99/max (ms) of every request of the run.
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request

BIN = os.environ.get("DMP_CONTAINED_BIN", "target/release/dmp-contained")
SAVES = int(os.environ.get("SAVES", "20"))
RATE = int(os.environ.get("RATE", "250"))
THREADS = int(os.environ.get("THREADS", "5"))
HERE = os.path.dirname(os.path.abspath(__file__))

def fixture(name):
    with open(os.path.join(HERE, "..", "tests", "fixtures", "reload", name)) as f:
        return f.read()

APPS = {
    # name: (script, interpreter)
    "plain": ("server.py", "python3"),
    "flask": ("flaskapp.py", "/usr/bin/python3"),
    "flask-stock": ("flaskapp.py", "/usr/bin/python3"),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
    finally:
        s.close()
    if not (buf.startswith(b"HTTP/1.1 200") or buf.startswith(b"HTTP/1.0 200")):
        raise RuntimeError((buf.split(b"\r\n")[0] or b"empty response").decode())
    return buf.split(b"\r\n\r\n", 1)[1].decode()


def status(api):
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/_supervisor/status", timeout=5) as r:
        return json.load(r)


def entry(api, name):
    return next(e for e in status(api)["entries"] if e["name"] == name)


def wait(what, f, timeout=30, api=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            v = f()
        except Exception:
            v = None
        if v:
            return v
        time.sleep(0.02)
    detail = json.dumps(entry(api, "app"))[:3000] if api else ""
    raise SystemExit(f"timed out waiting for {what} {detail}")


def run(app, held, nginx):
    script, python = APPS[app]
    d = tempfile.mkdtemp(prefix="reload-bench-")
    api, app_port = free_port(), free_port()
    os.makedirs(f"{d}/app")
    text = fixture(script)
    if app == "flask-stock":
        text = text.replace("GRACEFUL = True", "GRACEFUL = False")
    open(f"{d}/app/{script}", "w").write(text)
    open(f"{d}/app/appcode.py", "w").write('VERSION = "v0"\n')
    listen = f'listen = ["127.0.0.1:{app_port}"]' if held else ""
    table = f"""[supervisor]
api_listen = "127.0.0.1:{api}"
socket = "{d}/ctl.sock"
cache_dir = "{d}/cache"

[process.app]
command = ["{python}", "{script}", "{app_port}"]
cwd = "app"
env = {{ PYTHONDONTWRITEBYTECODE = "1" }}
{listen}
ready = {{ http = "http://127.0.0.1:{app_port}/", interval = "20ms" }}
restart = {{ max_restarts = 100, backoff = "50ms" }}
stop_timeout = "5s"
watch = {{ paths = ["."], debounce = "50ms" }}
"""
    front = app_port
    if nginx:
        front = free_port()
        os.makedirs(f"{d}/nginx/tmp")
        open(f"{d}/nginx/nginx.conf", "w").write(
            f"daemon off;\nworker_processes 1;\npid {d}/nginx/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n access_log off;\n"
            + "".join(f" {k}_temp_path {d}/nginx/tmp;\n" for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
            + f" server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://127.0.0.1:{app_port}; }} }}\n}}\n")
        table += f"""
[process.nginx]
command = ["/usr/sbin/nginx", "-c", "{d}/nginx/nginx.conf", "-e", "stderr"]
stop_signal = "SIGQUIT"
ready = {{ http = "http://127.0.0.1:{front}/", interval = "20ms" }}
after = ["app"]
"""
    open(f"{d}/supervisor.toml", "w").write(table)
    log = open(f"{d}/sup.log", "w")
    sup = subprocess.Popen([BIN, "up", "--config", f"{d}/supervisor.toml"], stdout=log, stderr=log)
    try:
        wait("ready", lambda: all(entry(api, n)["state"] == "ready" for n in (["app", "nginx"] if nginx else ["app"])))
        stop = threading.Event()
        lat, fails = [], []
        lock = threading.Lock()

        def client():
            period = THREADS / RATE
            due = time.monotonic()
            while not stop.is_set():
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                # A late client does not catch up: a refused request fails at once, and
                # catching up would count outage time x client speed, not requests lost.
                due = max(due, now) + period
                a = time.monotonic()
                try:
                    get(front)
                    with lock:
                        lat.append(time.monotonic() - a)
                except Exception as e:
                    with lock:
                        fails.append(str(e) or type(e).__name__)

        ts = [threading.Thread(target=client, daemon=True) for _ in range(THREADS)]
        start = time.monotonic()
        for t in ts:
            t.start()
        for i in range(1, SAVES + 1):
            open(f"{d}/app/appcode.py", "w").write(f'VERSION = "v{i}"\n')
            wait(f"reload {i}", lambda: (lambda w: w["reloads"] >= i and not w["reloading"] and w["pending"] == 0)(entry(api, "app")["watch"]), api=api)
        wait("last version", lambda: get(front) == f"v{SAVES}")
        stop.set()
        for t in ts:
            t.join()
        secs = time.monotonic() - start
        lat.sort()
        pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
        kinds = sorted({f.split(":")[0][:40] for f in fails})
        return {
            "app": app, "front": "nginx" if nginx else "direct", "listen": held,
            "requests": len(lat) + len(fails), "rate": round((len(lat) + len(fails)) / secs),
            "failed": len(fails), "min_ms": round(lat[0] * 1000, 1) if lat else None, "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None, "failures": kinds,
        }
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            sup.kill()
        shutil.rmtree(d, ignore_errors=True)


def main():
    rows = []
    for app in APPS:
        for nginx in (False, True):
            for held in (False, True):
                r = run(app, held, nginx)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print(f"\n{SAVES} saves under {RATE} req/s ({THREADS} clients, a new connection per request)\n")
    print("| app | via | failed before | failed after (`listen`) | min before / after ms | p50 before / after ms | p99 before / after ms | max before / after ms |")
    print("|---|---|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        b, a = rows[i], rows[i + 1]
        print(f"| {b['app']} | {b['front']} | {b['failed']} / {b['requests']} | {a['failed']} / {a['requests']} | "
              f"{b['min_ms']} / {a['min_ms']} | {b['p50_ms']} / {a['p50_ms']} | {b['p99_ms']} / {a['p99_ms']} | {b['max_ms']} / {a['max_ms']} |")
    out = os.environ.get("OUT", os.path.join(HERE, "results-reload.json"))
    json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
