#!/usr/bin/env bash
# Routing test for resources-for-container/nginx.conf.template against a real nginx.
#
# Renders the template exactly as the supervisor would (tests/image/render-template.py), with every
# port shifted to free high ports, starts nginx from a temp dir (no root needed, port 80 untouched),
# starts small Python stand-ins that answer with their own port, and asserts path -> port for every
# route, the fallback chain for an app that is not running, and that an app's own 503 passes through.
#
# Needs: nginx, python3, curl.  Usage: tests/image/nginx-routing.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
template="$repo/resources-for-container/nginx.conf.template"

for tool in nginx python3 curl; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done

tmp=$(mktemp -d /tmp/dmp-nginx-routing.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# 16 free TCP ports, asked from the kernel.
read -r -a P <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(16):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"

export NGINX_PORT=${P[0]} NGINX_API_PROXY_PORT=${P[1]} NGINX_SEARCH_API_PROXY_PORT=${P[2]}
export SUPERVISOR_API_PORT=${P[3]} EXAMPLE_APP_PORT=${P[4]}
export APP_PORT_API=${P[5]} APP_PORT_SEARCH_API=${P[6]} APP_PORT_BUYER_FRONTEND=${P[7]}
export APP_PORT_SUPPLIER_FRONTEND=${P[8]} APP_PORT_ADMIN_FRONTEND=${P[9]}
export APP_PORT_BRIEFS_FRONTEND=${P[10]} APP_PORT_BRIEF_RESPONSES_FRONTEND=${P[11]}
export APP_PORT_USER_FRONTEND=${P[12]}
export STANDIN_UNAVAILABLE=$tmp/unavailable.txt
export NGINX_RUN_DIR=$tmp NGINX_TEMP_DIR=$tmp NGINX_USER=$(id -un) NGINX_WORKERS=1 NGINX_LOG_LEVEL=error

python3 "$here/render-template.py" "$template" "$tmp/nginx.conf"
if grep -v '^[[:space:]]*#' "$tmp/nginx.conf" | grep -n '\${'; then echo "FAIL: unrendered \${...} left in nginx.conf"; exit 1; fi
nginx -t -q -e stderr -p "$tmp" -c "$tmp/nginx.conf"

# Stand-ins: every app except user-frontend (to exercise the fallback), the supervisor API, and
# (separately, so it can be stopped) the example app.
python3 "$here/standin.py" "$APP_PORT_API" "$APP_PORT_SEARCH_API" "$APP_PORT_BUYER_FRONTEND" \
    "$APP_PORT_SUPPLIER_FRONTEND" "$APP_PORT_ADMIN_FRONTEND" "$APP_PORT_BRIEFS_FRONTEND" \
    "$APP_PORT_BRIEF_RESPONSES_FRONTEND" "$SUPERVISOR_API_PORT" >"$tmp/standin.log" 2>&1 &
pids+=($!)
python3 "$here/standin.py" "$EXAMPLE_APP_PORT" >"$tmp/example.log" 2>&1 &
example_pid=$!
pids+=($example_pid)
nginx -e stderr -p "$tmp" -c "$tmp/nginx.conf" >"$tmp/nginx.out" 2>"$tmp/nginx.err" &
pids+=($!)

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "FAIL: nothing listening on $port"; cat "$tmp"/*.log "$tmp/nginx.err" 2>/dev/null; exit 1
}
for p in "$NGINX_PORT" "$NGINX_API_PROXY_PORT" "$NGINX_SEARCH_API_PROXY_PORT" "$APP_PORT_API" "$EXAMPLE_APP_PORT"; do
    wait_port "$p"
done

fails=0
checks=0
# expect LISTEN_PORT PATH EXPECTED_STATUS EXPECTED_BODY_SUBSTRING
expect() {
    local lport=$1 path=$2 want_code=$3 want_body=$4 out code body
    checks=$((checks + 1))
    out=$(curl -s -o - -w '\n%{http_code}' "http://127.0.0.1:$lport$path") || true
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    if [ "$code" = "$want_code" ] && [[ "$body" == *"$want_body"* ]]; then
        printf 'ok   %-40s -> %s %s\n' ":$lport$path" "$code" "$want_body"
    else
        printf 'FAIL %-40s -> %s %q (wanted %s %q)\n' ":$lport$path" "$code" "$body" "$want_code" "$want_body"
        fails=$((fails + 1))
    fi
}

web=$NGINX_PORT
expect "$web" /                                 200 "port=$APP_PORT_BUYER_FRONTEND path=/ "
expect "$web" /search/services                  200 "port=$APP_PORT_BUYER_FRONTEND path=/search/services"
expect "$web" /buyers                           200 "port=$APP_PORT_BRIEFS_FRONTEND path=/buyers "
expect "$web" /buyers/requirements/x            200 "port=$APP_PORT_BRIEFS_FRONTEND path=/buyers/requirements/x"
expect "$web" /buyers/direct-award              200 "port=$APP_PORT_BUYER_FRONTEND path=/buyers/direct-award "
expect "$web" /buyers/direct-award/x            200 "port=$APP_PORT_BUYER_FRONTEND path=/buyers/direct-award/x"
expect "$web" /suppliers                        200 "port=$APP_PORT_SUPPLIER_FRONTEND path=/suppliers "
expect "$web" /suppliers/_status                200 "port=$APP_PORT_SUPPLIER_FRONTEND path=/suppliers/_status"
expect "$web" /suppliers/opportunities          200 "port=$APP_PORT_BRIEF_RESPONSES_FRONTEND path=/suppliers/opportunities "
expect "$web" /suppliers/opportunities/x        200 "port=$APP_PORT_BRIEF_RESPONSES_FRONTEND path=/suppliers/opportunities/x"
expect "$web" /admin/_status                    200 "port=$APP_PORT_ADMIN_FRONTEND path=/admin/_status"
expect "$web" '/admin/suppliers?q=1'            200 "port=$APP_PORT_ADMIN_FRONTEND path=/admin/suppliers?q=1"
expect "$web" /_supervisor/status               200 "port=$SUPERVISOR_API_PORT path=/_supervisor/status"
expect "$web" '/_supervisor/logs/api?follow=1'  200 "port=$SUPERVISOR_API_PORT path=/_supervisor/logs/api?follow=1"
expect "$web" /_supervisor                      301 ""
expect "$web" /_example/                        200 "port=$EXAMPLE_APP_PORT path=/ "
expect "$NGINX_API_PROXY_PORT" /_status         200 "port=$APP_PORT_API path=/_status"
expect "$NGINX_SEARCH_API_PROXY_PORT" /_status  200 "port=$APP_PORT_SEARCH_API path=/_status"
# An error page produced by the app itself is not replaced by the fallback.
expect "$web" /admin/fail503                    503 "port=$APP_PORT_ADMIN_FRONTEND path=/admin/fail503"
# user-frontend is mounted but not answering: the supervisor's route says why (503), told the
# original URI.  Not mounted (the supervisor answers 404): the example app answers (503), told
# which repository is missing.
echo user-frontend >"$STANDIN_UNAVAILABLE"
expect "$web" '/user/login?next=/x'             503 "port=$SUPERVISOR_API_PORT unavailable=user-frontend uri=/user/login?next=/x"
: >"$STANDIN_UNAVAILABLE"
expect "$web" /user/login                       503 "port=$EXAMPLE_APP_PORT path=/_missing missing=digitalmarketplace-user-frontend"

# Without the example app either: a plain 503 naming the repository to clone.
kill "$example_pid"; wait "$example_pid" 2>/dev/null || true
expect "$web" /user/login                       503 "digitalmarketplace-user-frontend is not running"

# Without the APIs: JSON 503s naming the repository (stop the app stand-ins).
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
expect "$NGINX_API_PROXY_PORT" /_status         503 '"digitalmarketplace-api is not running'
expect "$NGINX_SEARCH_API_PROXY_PORT" /_status  503 '"digitalmarketplace-search-api is not running'
expect "$web" /suppliers                        503 "digitalmarketplace-supplier-frontend is not running"
expect "$web" /_supervisor/status               503 "dmp-contained API (127.0.0.1:$SUPERVISOR_API_PORT) is not answering"

if [ "$fails" -ne 0 ]; then
    echo "nginx error log:"; cat "$tmp/nginx.err"
    echo "FAIL: $fails of $checks routing checks failed"
    exit 1
fi
echo "PASS: $checks routing checks"
