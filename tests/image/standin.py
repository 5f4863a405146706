#!/usr/bin/env python3
"""Tiny HTTP stand-ins for the apps: one thread per port, each answers
`port=<port> path=<path> missing=<X-Dmp-Missing-App header>`.
A path ending in /fail503 answers 503 (an error produced by the app itself); /_missing
answers 503 like the example app's "this app is not mounted" page.
/_supervisor/unavailable/NAME stands in for the supervisor's route (src/api/unavailable.rs): 503
`unavailable=NAME uri=<X-Dmp-Original-Uri>` when NAME is listed (one per line) in the file named
by $STANDIN_UNAVAILABLE, else 404 (not mounted).

Usage: standin.py PORT [PORT...]
"""
import http.server
import os
import sys
import threading


def unavailable():
    path = os.environ.get("STANDIN_UNAVAILABLE")
    try:
        with open(path or "/nonexistent") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def handler_for(port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = "port=%d path=%s missing=%s\n" % (
                port, self.path, self.headers.get("X-Dmp-Missing-App", ""))
            code = 503 if self.path.endswith("/fail503") or self.path == "/_missing" else 200
            prefix = "/_supervisor/unavailable/"
            if self.path.startswith(prefix):
                name = self.path[len(prefix):].split("?")[0]
                code = 503 if name in unavailable() else 404
                body = "port=%d unavailable=%s uri=%s\n" % (
                    port, name, self.headers.get("X-Dmp-Original-Uri", ""))
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


servers = []
for arg in sys.argv[1:]:
    port = int(arg)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler_for(port))
    servers.append(srv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("listening", " ".join(sys.argv[1:]), flush=True)
threading.Event().wait()
