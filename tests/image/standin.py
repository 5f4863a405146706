#!/usr/bin/env python3
"""Tiny HTTP stand-ins for the apps: one thread per port, each answers
`port=<port> path=<path> missing=<X-Dmp-Missing-App header>`.
A path ending in /fail503 answers 503 (an error produced by the app itself); /_missing
answers 503 like the example app's "this app is not mounted" page.

Usage: standin.py PORT [PORT...]
"""
import http.server
import sys
import threading


def handler_for(port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = "port=%d path=%s missing=%s\n" % (
                port, self.path, self.headers.get("X-Dmp-Missing-App", ""))
            code = 503 if self.path.endswith("/fail503") or self.path == "/_missing" else 200
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
