#!/usr/bin/env python3
"""Drives headless chromium over the DevTools protocol (stdlib only, hand-made websocket)
against a running dmp-contained dashboard. Usage: cdp.py DEVTOOLS_PORT DASHBOARD_URL TOKEN
MARKER PNG. Exits non-zero with a message on the first failed check."""
import base64, json, os, socket, struct, sys, time, urllib.request

dt_port, url, token, marker, png = sys.argv[1:6]


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




def _targets():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dt_port}/json/list", timeout=2) as r:
            return [t for t in json.load(r) if t.get("type") == "page"]
    except OSError:
        return None


page = wait("a devtools page target", _targets)[0]
ws = WS(page["webSocketDebuggerUrl"])
ws.call("Page.enable")
ws.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
ws.call("Page.navigate", url=url)
wait("dashboard rows", lambda: ws.eval("document.querySelectorAll('#rows tr').length") or None)
ws.eval(f"localStorage.setItem('dmpToken', {json.dumps(token)}); location.reload(); true")
time.sleep(0.5)
wait("dashboard rows after reload", lambda: ws.eval("document.querySelectorAll('#rows tr').length") or None)

status = json.load(urllib.request.urlopen(url + "status", timeout=5))
names = [e["name"] for e in status["entries"]]
listed = ws.eval("[...document.querySelectorAll('#rows tr')].map(r => r.dataset.name)")
if sorted(listed) != sorted(names):
    sys.exit(f"FAIL: dashboard lists {listed}, status has {names}")
print(f"ok: every entry listed: {listed}")

wait(f"log line {marker!r} in the log pane", lambda: marker in (ws.eval("document.getElementById('log').textContent") or ""))
print(f"ok: log line {marker!r} shown")

# The start-up waterfall: one span per started entry, the status's critical path highlighted.
spans = wait("waterfall spans", lambda: ws.eval("[...document.querySelectorAll('#waterfall rect.run')].map(r => r.dataset.name)"))
want_crit = [l["name"] for l in json.load(urllib.request.urlopen(url + "status", timeout=5))["critical_path"]]
crit = ws.eval("[...document.querySelectorAll('#waterfall rect.run.critical')].map(r => r.dataset.name)")
started = [n for n in names if n != "optional-thing"]
if sorted(spans) != sorted(started) or not want_crit or sorted(crit) != sorted(want_crit):
    sys.exit(f"FAIL: waterfall spans {spans} (want {started}), critical {crit} (want {want_crit})")
print(f"ok: waterfall {spans}, critical path {crit}")

sel = "tr[data-name=web] button[data-act=restart]"
before = ws.eval(f"document.querySelector('tr[data-name=web] .restarts').textContent")
enabled = wait("restart button enabled", lambda: ws.eval(f"!document.querySelector('{sel}').disabled") or None)
rect = ws.eval(f"(() => {{ const r = document.querySelector('{sel}').getBoundingClientRect(); return [r.x + r.width/2, r.y + r.height/2]; }})()")
for kind in ("mousePressed", "mouseReleased"):
    ws.call("Input.dispatchMouseEvent", type=kind, x=rect[0], y=rect[1], button="left", clickCount=1)
after = wait("restart count to change", lambda: (lambda v: v if v and v != before else None)(
    ws.eval("document.querySelector('tr[data-name=web] .restarts').textContent")))
print(f"ok: clicked restart on web; restarts {before} -> {after}")
msg = ws.eval("document.getElementById('msg').textContent")
print(f"ok: message: {msg}")
time.sleep(0.5)  # let the event-driven refresh settle before the screenshot
shot = ws.call("Page.captureScreenshot", format="png")
with open(png, "wb") as f:
    f.write(base64.b64decode(shot["data"]))
print(f"ok: screenshot {png}")
