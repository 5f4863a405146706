#!/usr/bin/env python3
"""Drives headless chromium over the DevTools protocol (stdlib only, hand-made websocket)
against a running dmp-contained dashboard on the table of tests/dashboard.sh. Usage: cdp.py
DEVTOOLS_PORT DASHBOARD_URL TOKEN MARKER PNG APP_DIR. Exits non-zero with a message on the first
failed check."""
import base64, json, os, socket, struct, sys, time, urllib.request, zlib

dt_port, url, token, marker, png, app_dir = sys.argv[1:7]


class WS:
    def __init__(self, ws_url):
        assert ws_url.startswith("ws://")
        hostport, path = ws_url[5:].split("/", 1)
        host, port = hostport.split(":")
        self.s = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            sys.exit(f"websocket handshake failed: {head!r}")
        self.next_id = 0
        self.errors = []  # uncaught exceptions in the page (Runtime.exceptionThrown)

    def _recv_exact(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b

    def send(self, text):
        data = text.encode()
        hdr = bytearray([0x81])
        n = len(data)
        if n < 126:
            hdr.append(0x80 | n)
        elif n < 65536:
            hdr.append(0x80 | 126); hdr += struct.pack(">H", n)
        else:
            hdr.append(0x80 | 127); hdr += struct.pack(">Q", n)
        mask = os.urandom(4)
        hdr += mask
        self.s.sendall(bytes(hdr) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            op = b0 & 0x0F
            if op in (0x9, 0xA):
                continue  # ping/pong
            msg += payload
            if b0 & 0x80:
                return msg.decode()

    def call(self, method, **params):
        self.next_id += 1
        i = self.next_id
        self.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            m = json.loads(self.recv())
            if m.get("method") == "Runtime.exceptionThrown":
                d = m["params"]["exceptionDetails"]
                self.errors.append(d.get("exception", {}).get("description") or d.get("text"))
            if m.get("id") == i:
                if "error" in m:
                    sys.exit(f"{method}: {m['error']}")
                return m["result"]

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            sys.exit(f"JS error in {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")


def wait(what, f, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    sys.exit(f"FAIL: timed out waiting for {what}")




def status():
    return json.load(urllib.request.urlopen(url + "status", timeout=5))


def decode_png(data):
    """(width, height, rows of RGB tuples) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and not interlace, f"PNG type {depth}/{ctype}/{interlace}"
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return w, h, rows


def _targets():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dt_port}/json/list", timeout=2) as r:
            return [t for t in json.load(r) if t.get("type") == "page"]
    except OSError:
        return None


page = wait("a devtools page target", _targets)[0]
ws = WS(page["webSocketDebuggerUrl"])
ws.call("Page.enable")
ws.call("Runtime.enable")
W, H = 1280, 900
ws.call("Emulation.setDeviceMetricsOverride", width=W, height=H, deviceScaleFactor=1, mobile=False)
ws.call("Page.navigate", url=url)
wait("dashboard rows", lambda: ws.eval("document.querySelectorAll('tr[data-name]').length") or None)

# Read-only without a token: every action button disabled.
enabled = ws.eval("[...document.querySelectorAll('button[data-act], button.needs-token')].filter(b => !b.disabled).length")
if enabled:
    sys.exit(f"FAIL: {enabled} action buttons enabled without a token")
print("ok: buttons disabled without a token")
ws.eval(f"localStorage.setItem('dmpToken', {json.dumps(token)}); location.reload(); true")
time.sleep(0.3)
st = wait("the stack ready (critical path in status)", lambda: (lambda s: s if s["critical_path"] else None)(status()))
names = [e["name"] for e in st["entries"]]
wait("every entry listed", lambda: sorted(ws.eval("[...document.querySelectorAll('tr[data-name]')].map(r => r.dataset.name)") or []) == sorted(names))
print(f"ok: every entry listed: {names}")

# Groups: an app's service with its steps; all-skipped groups closed, skipped rows hidden.
groups = ws.eval("""Object.fromEntries([...document.querySelectorAll('details.group')].map(d =>
  [d.dataset.group, {open: d.open, rows: [...d.querySelectorAll('tr[data-name]')].map(r => r.dataset.name)}]))""")
want = {"db": ["db-init", "db"], "web": ["venv-web", "web-migrate", "web"], "ghost": ["venv-ghost", "ghost"], "steps": ["optional-thing"]}
got = {g: sorted(v["rows"]) for g, v in groups.items()}
if got != {g: sorted(v) for g, v in want.items()}:
    sys.exit(f"FAIL: groups {got}, want {want}")
opened = {g for g, v in groups.items() if v["open"]}
if opened != {"db", "web"}:
    sys.exit(f"FAIL: open groups {opened}, want db and web (ghost and steps are all skipped: collapsed)")
print(f"ok: groups {got}, collapsed: {sorted(set(got) - opened)}")

# Waterfall: one bar per entry not skipped, the status's critical path highlighted.
started = sorted(e["name"] for e in st["entries"] if e["state"] != "skipped")
want_crit = sorted(l["name"] for l in st["critical_path"])
def wf():
    bars = ws.eval("[...document.querySelectorAll('#waterfall g.bar')].map(g => g.dataset.name)")
    crit = ws.eval("[...document.querySelectorAll('#waterfall g.bar.critical')].map(g => g.dataset.name)")
    return (sorted(bars), sorted(crit)) if sorted(bars) == started and sorted(crit) == want_crit else None
wait(f"waterfall bars {started}, critical {want_crit}", wf)
print(f"ok: waterfall bars {started}, critical path {want_crit}")

# Dependency graph: a node per entry coloured by state, an edge per dependency.
nodes = ws.eval("Object.fromEntries([...document.querySelectorAll('#graph g.node')].map(g => [g.dataset.name, getComputedStyle(g.querySelector('rect')).fill]))")
edges = sorted(ws.eval("[...document.querySelectorAll('#graph path.edge')].map(p => p.dataset.from + '>' + p.dataset.to)"))
want_edges = sorted(f"{d.split(':')[0].rstrip('?')}>{e['name']}" for e in st["entries"] for d in e["after"])
if sorted(nodes) != sorted(names) or edges != want_edges:
    sys.exit(f"FAIL: graph nodes {sorted(nodes)} edges {edges}, want {sorted(names)} / {want_edges}")
if nodes["web"] == nodes["ghost"] or nodes["web"] != nodes["db"]:
    sys.exit(f"FAIL: node colours by state: web {nodes['web']}, db {nodes['db']}, ghost {nodes['ghost']}")
print(f"ok: graph {len(nodes)} nodes, {len(edges)} edges, ready {nodes['web']}, skipped {nodes['ghost']}")

# Log pane: open web's, its line shown; the search box filters.
ws.eval("document.querySelector('a[data-log=web]').click(); true")
pane = "document.querySelector('.pane[data-name=web]')"
wait(f"log line {marker!r} in web's pane", lambda: marker in (ws.eval(f"{pane} && {pane}.querySelector('pre').textContent") or ""))
def search(q):
    return ws.eval(f"(() => {{ const f = {pane}.querySelector('.filter'); f.value = {json.dumps(q)}; f.dispatchEvent(new Event('input')); return {pane}.querySelectorAll('pre .line').length; }})()")
if search("no-such-line-xyz") != 0 or search(marker) != 1 or ws.eval(f"{pane}.querySelector('mark').textContent") != marker:
    sys.exit("FAIL: log search does not filter to the matching line")
search("")
print(f"ok: log line {marker!r} in web's pane; search filters it")

# Cache: the cached step's record (GET /cache, refreshed on the step's event).
wait("venv-web's cache record", lambda: ws.eval("!!document.querySelector('#cache tr.record[data-step=venv-web]')"))
print("ok: cache record of venv-web shown")

# No polling: 2.5 s idle, no request for status.
ws.eval("performance.clearResourceTimings(); true")
time.sleep(2.5)
polled = ws.eval("performance.getEntriesByType('resource').filter(r => /status|cache/.test(r.name)).length")
if polled:
    sys.exit(f"FAIL: {polled} status/cache requests while nothing changed (a poll timer?)")
print("ok: no request while idle")

# A reload train: a saved file shows up under reloads with its name.
with open(os.path.join(app_dir, "views.py"), "w") as f:
    f.write("x = 1\n")
wait("web's reload train naming views.py", lambda: ws.eval("[...document.querySelectorAll('#reloads tr.train[data-name=web] .files')].some(t => t.textContent.includes('views.py'))"))
print("ok: reload train with views.py shown")

# Restart by a click: the pid in /status changes, and the page shows the new one.
pid0 = next(e["pid"] for e in status()["entries"] if e["name"] == "web")
sel = "tr[data-name=web] button[data-act=restart]"
wait("restart button enabled", lambda: ws.eval(f"!document.querySelector('{sel}').disabled") or None)
ws.eval(f"document.querySelector('{sel}').scrollIntoView({{block: 'center'}}); true")
rect = ws.eval(f"(() => {{ const r = document.querySelector('{sel}').getBoundingClientRect(); return [r.x + r.width/2, r.y + r.height/2]; }})()")
for kind in ("mousePressed", "mouseReleased"):
    ws.call("Input.dispatchMouseEvent", type=kind, x=rect[0], y=rect[1], button="left", clickCount=1)
def new_pid():
    e = next(e for e in status()["entries"] if e["name"] == "web")
    return e["pid"] if e["pid"] and e["pid"] != pid0 and e["state"] == "ready" else None
pid1 = wait("web's pid to change in /status", new_pid)
wait("the page to show the new pid", lambda: ws.eval("document.querySelector('tr[data-name=web] .pid').textContent") == str(pid1))
msg = ws.eval("document.getElementById('msg').textContent")
print(f"ok: clicked restart on web: pid {pid0} -> {pid1}; message: {msg}")

# A stopped entry in a group with live ones: its row collapsed, a button shows it.
ws.eval("document.querySelector('tr[data-name=web] button[data-act=stop]').click(); true")
wait("web stopped in /status", lambda: next(e for e in status()["entries"] if e["name"] == "web")["state"] == "stopped")
wait("web's row hidden", lambda: ws.eval("document.querySelector('tr[data-name=web]').closest('tbody').hidden && !!document.querySelector('button[data-off=web]')"))
ws.eval("document.querySelector('button[data-off=web]').click(); true")
wait("web's row shown by the button", lambda: ws.eval("!document.querySelector('tr[data-name=web]').closest('tbody').hidden"))
print("ok: a stopped entry collapsed in its group, shown on request")

# Screenshot of the top of the page: right size, not blank, the critical bars and a ready node
# in their colours where the page says they are.
ws.eval("window.scrollTo(0, 0); true")
time.sleep(0.3)
shot = base64.b64decode(ws.call("Page.captureScreenshot", format="png")["data"])
with open(png, "wb") as f:
    f.write(shot)
w, h, rows = decode_png(shot)
if (w, h) != (W, H):
    sys.exit(f"FAIL: screenshot {w}x{h}, want {W}x{H}")
colours = {}
for r in rows[::4]:
    for p in r[::4]:
        colours[p] = colours.get(p, 0) + 1
bg = max(colours.values()) / sum(colours.values())
if len(colours) < 50 or bg > 0.9:
    sys.exit(f"FAIL: screenshot looks blank: {len(colours)} colours, background {bg:.0%}")
def pixel_of(q, left=None):  # the centre, or `left` px in from the left edge (before a label)
    x, y = ws.eval(f"(() => {{ const r = document.querySelector({json.dumps(q)}).getBoundingClientRect(); return [Math.round({'r.x + r.width/2' if left is None else f'r.x + {left}'}), Math.round(r.y + r.height/2)]; }})()")
    if not (0 <= x < W and 0 <= y < H):
        sys.exit(f"FAIL: {q} is off screen at {x},{y}")
    return rows[y][x]
crit = pixel_of("#waterfall g.bar.critical rect.start")
node = pixel_of("#graph g.node[data-name=db] rect", left=3)
if crit != (0xD2, 0x69, 0x1E):
    sys.exit(f"FAIL: a critical bar's pixel is {crit}, want chocolate (210,105,30)")
if node != (0x81, 0xC7, 0x84):
    sys.exit(f"FAIL: db's (ready) node pixel is {node}, want (129,199,132)")
ws.eval("true")
if ws.errors:
    sys.exit(f"FAIL: uncaught exceptions in the page: {ws.errors}")
print(f"ok: screenshot {png} {w}x{h}, {len(colours)} colours, critical bar and ready node pixels right")
