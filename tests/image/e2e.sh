#!/usr/bin/env bash
# End-to-end test of the dmp-contained image (tier 5 in DESIGN.md).
#
#   1. build it (scripts/build-image.sh; SKIP_BUILD=1 reuses IMAGE_TAG as is)
#   2. run it with nothing mounted: HEALTHCHECK reaches healthy, /_supervisor/status is JSON, the
#      example page through nginx twice (Postgres visits and Redis counter both go up)
#   3. `docker stop` must take < 10 s; start again: Postgres must not need crash recovery
#   4. run it with a tiny Flask app mounted as digitalmarketplace-buyer-frontend (only app.py and
#      requirements.txt): it is served at / through nginx; edit app.py and the new text is served
#   Prints the measured timings.  No Docker engine: prints SKIP and exits 77 (skipped).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE_TAG:-dmp-contained}
export IMAGE_TAG=$IMAGE

if ! docker info >/dev/null 2>&1; then
    echo "SKIP: no Docker engine"
    exit 77
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timings=()
record() { timings+=("$(printf '%-44s %s' "$1" "$2")"); echo "time: $1 = $2"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d /tmp/dmp-e2e.XXXXXX)
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    t=$(now)
    "$repo/scripts/build-image.sh"
    record "image build" "$(since "$t") s"
fi
record "image size" "$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# wait_healthy CONTAINER TIMEOUT_S -> prints seconds taken
wait_healthy() {
    local c=$1 limit=$2 t h
    t=$(now)
    while :; do
        h=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null || echo gone)
        [ "$h" = healthy ] && break
        if [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" != true ]; then
            docker logs --tail 80 "$c" >&2 2>&1; fail "container $c exited while waiting for healthy"
        fi
        if awk -v s="$(since "$t")" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
            docker logs --tail 80 "$c" >&2 2>&1
            docker exec "$c" dmp-contained status 2>&1 | head -60 >&2 || true
            fail "container $c not healthy after ${limit}s (health: $h)"
        fi
        sleep 0.5
    done
    since "$t"
}

host_port() { docker port "$1" "$2/tcp" | head -n1 | sed 's/.*://'; }

counter() { sed -n "s/.*$2: \([0-9][0-9]*\).*/\1/p" <<<"$1" | head -n1; }

# ---------------------------------------------------------------------------------------------
echo "== 1. nothing mounted"
c1=dmp-e2e-bare-$$
containers+=("$c1")
t=$(now)
docker run -d --name "$c1" -p 127.0.0.1::80 -p 127.0.0.1::55000 "$IMAGE" >/dev/null
took=$(wait_healthy "$c1" 180)
record "cold start to healthy (nothing mounted)" "$took s"
web=$(host_port "$c1" 80)

status=$(curl -fsS "http://127.0.0.1:$web/_supervisor/status") || fail "/_supervisor/status did not answer 200"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); s=json.dumps(d); assert "postgres" in s and "nginx" in s, s[:300]' "$status" \
    || fail "/_supervisor/status is not JSON naming postgres and nginx: ${status:0:300}"
echo "ok: /_supervisor/status is JSON (${#status} bytes)"

t=$(now)
p1=$(curl -fsS "http://127.0.0.1:$web/") || fail "example page via nginx did not answer 200"
record "example page through nginx (first)" "$(since "$t") s"
p2=$(curl -fsS "http://127.0.0.1:$web/") || fail "example page via nginx (second) did not answer 200"
v1=$(counter "$p1" "Postgres visits"); v2=$(counter "$p2" "Postgres visits")
r1=$(counter "$p1" "Redis counter"); r2=$(counter "$p2" "Redis counter")
[ -n "$v1" ] && [ -n "$v2" ] && [ "$v2" -gt "$v1" ] || fail "Postgres visits did not go up: '$v1' -> '$v2'"
[ -n "$r1" ] && [ -n "$r2" ] && [ "$r2" -gt "$r1" ] || fail "Redis counter did not go up: '$r1' -> '$r2'"
echo "ok: example page: Postgres visits $v1 -> $v2, Redis counter $r1 -> $r2"

api=$(host_port "$c1" 55000)
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/_status")
[ "$code" = 503 ] || fail ":55000 without the api mounted answered $code, wanted 503"
echo "ok: :55000 without the api -> 503"

t=$(now)
docker stop "$c1" >/dev/null
stop_s=$(since "$t")
record "docker stop (nothing mounted)" "$stop_s s (exit code $(docker inspect -f '{{.State.ExitCode}}' "$c1"))"
awk -v s="$stop_s" 'BEGIN { exit !(s < 10) }' || fail "docker stop took ${stop_s}s (>= 10 s: SIGKILLed)"
# Logs captured first: `docker logs | grep -q` under pipefail fails whenever grep exits before
# docker logs has written everything (SIGPIPE).
logs1=$(docker logs "$c1" 2>&1)
grep -q 'database system is shut down' <<<"$logs1" || fail "no clean Postgres shutdown in the logs"

t=$(now)
docker start "$c1" >/dev/null
took=$(wait_healthy "$c1" 180)
record "restart to healthy" "$took s"
if docker logs "$c1" 2>&1 | grep -E 'database system was not properly shut down|automatic recovery in progress|database system was interrupted'; then
    fail "Postgres needed crash recovery after docker stop"
fi
p3=$(curl -fsS "http://127.0.0.1:$(host_port "$c1" 80)/") || fail "example page after restart"
v3=$(counter "$p3" "Postgres visits")
[ -n "$v3" ] && [ "$v3" -gt "$v2" ] || fail "visits lost across restart: $v2 -> '$v3'"
echo "ok: restart without crash recovery; data kept (visits $v2 -> $v3)"
t=$(now)
docker stop "$c1" >/dev/null
record "docker stop (after restart)" "$(since "$t") s"

# ---------------------------------------------------------------------------------------------
# search-api: its only hard dependencies are its venv and Redis (Elasticsearch is an optional edge),
# so a tiny Flask app stands for it alone; a frontend would be skipped without the api (its
# `api:ready` edge) and needs its npm asset build. nginx serves search-api on :55009.
echo "== 2. a tiny app mounted as digitalmarketplace-search-api"
app="$tmp/mount/apps-github-repos/digitalmarketplace-search-api"
mkdir -p "$app"
cat >"$app/app.py" <<'PY'
from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "tiny search-api version-1\n"


@app.route("/healthcheck")
def healthcheck():
    return {"status": "ok"}
PY
echo flask >"$app/requirements.txt"
chmod -R a+rX "$tmp"

c2=dmp-e2e-app-$$
containers+=("$c2")
docker run -d --name "$c2" -p 127.0.0.1::80 -p 127.0.0.1::55009 \
    -v "$tmp/mount:/dmp-contained/mount" "$IMAGE" >/dev/null
took=$(wait_healthy "$c2" 180)
record "cold start to healthy (tiny app mounted)" "$took s"
web=$(host_port "$c2" 55009)
body=$(curl -fsS "http://127.0.0.1:$web/") || {
    docker exec "$c2" dmp-contained status 2>&1 | head -30
    fail "tiny app via nginx did not answer 200"
}
[[ "$body" == *version-1* ]] || fail "/ is not served by the mounted app: ${body:0:200}"
echo "ok: / served by the mounted app"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$web/no/such/page")
[ "$code" = 404 ] || fail "/no/such/page should reach the tiny app (404 from Flask), got $code"

sed -i 's/version-1/version-2/' "$app/app.py"
t=$(now)
while :; do
    body=$(curl -s "http://127.0.0.1:$web/" || true)
    [[ "$body" == *version-2* ]] && break
    awk -v s="$(since "$t")" 'BEGIN { exit !(s > 30) }' && {
        docker logs --tail 40 "$c2" 2>&1; fail "edit not served after 30 s (still: ${body:0:100})"; }
    sleep 0.1
done
record "save-to-served reload" "$(since "$t") s"

t=$(now)
docker stop "$c2" >/dev/null
stop_s=$(since "$t")
record "docker stop (tiny app mounted)" "$stop_s s (exit code $(docker inspect -f '{{.State.ExitCode}}' "$c2"))"
awk -v s="$stop_s" 'BEGIN { exit !(s < 10) }' || fail "docker stop took ${stop_s}s"

echo
echo "timings ($IMAGE):"
printf '  %s\n' "${timings[@]}"
echo "PASS: image end-to-end"
