"""Example app bundled with dmp-contained.

Proves the stack works with nothing mounted: every page view writes a row to Postgres (table
`visits`, created if missing) and increments a Redis counter, and shows both.  nginx also sends
here the requests for a Digital Marketplace app that is not running (`/_missing`, with the
repository's name in `X-Dmp-Missing-App`), so the page says what to clone.

Run: flask --app app run --no-reload --host 127.0.0.1 --port 5100
Env: EXAMPLE_APP_PG_DSN    (default host=127.0.0.1 port=5432 user=postgres dbname=dmp_contained_example)
     EXAMPLE_APP_REDIS_URL (default redis://127.0.0.1:6379/0)
"""
import html
import os
import socket
import time

import psycopg2
import redis
from flask import Flask, jsonify, request

PG_DSN = os.environ.get(
    "EXAMPLE_APP_PG_DSN",
    "host=127.0.0.1 port=5432 user=postgres dbname=dmp_contained_example",
)
REDIS_URL = os.environ.get("EXAMPLE_APP_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER_KEY = "dmp-contained:example:counter"

app = Flask(__name__)
_redis = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
_table_ready = False


def record_visit(path):
    """Insert one visit; return (visits in Postgres, Postgres version)."""
    global _table_ready
    conn = psycopg2.connect(PG_DSN, connect_timeout=2)
    try:
        with conn, conn.cursor() as cur:
            if not _table_ready:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS visits ("
                    " id bigserial PRIMARY KEY,"
                    " path text NOT NULL,"
                    " at timestamptz NOT NULL DEFAULT now())"
                )
                _table_ready = True
            cur.execute("INSERT INTO visits (path) VALUES (%s)", (path,))
            cur.execute("SELECT count(*) FROM visits")
            (visits,) = cur.fetchone()
            cur.execute("SHOW server_version")
            (version,) = cur.fetchone()
        return visits, version
    finally:
        conn.close()


def page(missing_app=None, original_uri=None):
    started = time.monotonic()
    errors = []
    visits = counter = pg_version = None
    try:
        visits, pg_version = record_visit(original_uri or request.path)
    except Exception as exc:  # shown on the page: this app exists to diagnose the stack
        errors.append("Postgres: %s" % exc)
    try:
        counter = _redis.incr(COUNTER_KEY)
    except Exception as exc:
        errors.append("Redis: %s" % exc)
    elapsed_ms = (time.monotonic() - started) * 1000

    e = html.escape
    notice = ""
    if missing_app:
        notice = (
            "<div class='notice'><strong>%s is not running.</strong> Nothing answers for "
            "<code>%s</code>. Clone it into <code>mount/apps-github-repos/%s</code> "
            "(bind-mounted at <code>/dmp-contained/mount</code>) and it starts on its own; "
            "see <a href='/_supervisor/'>/_supervisor/</a> for why an app is skipped or not ready.</div>"
            % (e(missing_app), e(original_uri or "?"), e(missing_app))
        )
    rows = "".join("<li class='error'>%s</li>" % e(msg) for msg in errors)
    body = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dmp-contained example app</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; color: #0b0c0c; }}
.notice {{ border-left: 6px solid #d4351c; padding: .5em 1em; background: #fef3f1; }}
dt {{ font-weight: bold; }} .error {{ color: #d4351c; }} code {{ background: #f3f2f1; padding: 0 .2em; }}
</style></head>
<body>
<h1>dmp-contained is running</h1>
{notice}
<p>This page comes from the bundled example app. Every view writes a row to Postgres and
increments a Redis counter.</p>
<dl>
<dt>Postgres visits</dt><dd id="visits">Postgres visits: {visits}</dd>
<dt>Redis counter</dt><dd id="counter">Redis counter: {counter}</dd>
<dt>Postgres version</dt><dd>{pg_version}</dd>
<dt>Served by</dt><dd>{host}, in {elapsed:.1f} ms</dd>
</dl>
<ul>{rows}</ul>
<p>Mount the Digital Marketplace apps with
<code>docker run -p 80:80 -v "$PWD/mount:/dmp-contained/mount" dmp-contained</code>;
status of every service: <a href="/_supervisor/">/_supervisor/</a>.</p>
</body></html>
""".format(
        notice=notice,
        visits="n/a" if visits is None else visits,
        counter="n/a" if counter is None else counter,
        pg_version=e(pg_version or "n/a"),
        host=e(socket.gethostname()),
        elapsed=elapsed_ms,
        rows=rows,
    )
    return body, errors


@app.route("/")
def index():
    body, errors = page()
    return body, (500 if errors else 200), {"Content-Type": "text/html; charset=utf-8"}


@app.route("/_missing")
def missing():
    """nginx's fallback for an app that is not running (see nginx.conf.template)."""
    missing_app = request.headers.get("X-Dmp-Missing-App") or "the app"
    original_uri = request.headers.get("X-Dmp-Original-Uri") or "/"
    body, _ = page(missing_app, original_uri)
    # The home page is this app until buyer-frontend is mounted; any other path is honestly 503.
    status = 200 if original_uri.split("?", 1)[0] == "/" else 503
    return body, status, {"Content-Type": "text/html; charset=utf-8", "Retry-After": "5"}


@app.route("/_status")
def status():
    return jsonify(status="ok", app="example-app")
