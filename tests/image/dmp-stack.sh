#!/usr/bin/env bash
# The shipped supervisor.toml in the image with the dmp-like stand-ins mounted (issue #10):
# tests/fixtures/dmp-like/APP copied into mount/apps-github-repos/digitalmarketplace-APP (app code,
# and the requirement pins and npm files where the fixture has them), plus a mount/.env.  Checks:
#   cold start: the buyer becomes ready after the api (it calls the api at boot), search-api runs
#   without Elasticsearch, / through nginx shows data from Postgres via the api and the value from
#   mount/.env; a broken save of the buyer -> / is 503 naming the error, health red; the fixed save
#   -> 200; a restart -> / held then 307; `docker stop` -> exit code 0; `docker start` (warm) -> the buyer is ready again.
# Env: IMAGE_TAG (dmp-contained-dmp), SKIP_BUILD=1 to reuse the image, WEB_PORT (23300).
# Prints the measured timings.  No Docker engine: prints SKIP and exits 0.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE_TAG:-dmp-contained-dmp}
WEB=${WEB_PORT:-23300}

if ! docker info >/dev/null 2>&1; then
    echo "SKIP: no Docker engine"
    exit 0
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    IMAGE_TAG=$IMAGE "$repo/scripts/build-image.sh"
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "FAIL: $*"; docker logs --tail 60 "$c" 2>&1 || true; exit 1; }

tmp=$(mktemp -d /tmp/dmp-stack.XXXXXX)
c=dmp-stack-dmp-$$
vol=dmp-stack-dmp-cache-$$
cleanup() {
    docker rm -f -v "$c" >/dev/null 2>&1 || true
    docker volume rm "$vol" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/mount/apps-github-repos"
for app in api buyer-frontend search-api; do
    cp -r "$repo/tests/fixtures/dmp-like/$app" "$tmp/mount/apps-github-repos/digitalmarketplace-$app"
    rm -rf "$tmp/mount/apps-github-repos/digitalmarketplace-$app"/{node_modules,app/static}
done
printf 'BUYER_GREETING=Hello from mount/.env\n' >"$tmp/mount/.env"

# state NAME -> the entry's state, from inside the container
state() {
    docker exec "$c" dmp-contained status --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(e["state"] for e in d["entries"] if e["name"]==sys.argv[1]))' "$1" 2>/dev/null || echo unknown
}
# wait_state NAME STATE TIMEOUT_S
wait_state() {
    local t s
    t=$(now)
    while :; do
        s=$(state "$1")
        [ "$s" = "$2" ] && return 0
        awk -v s="$(since "$t")" -v l="$3" 'BEGIN { exit !(s > l) }' && {
            docker exec "$c" dmp-contained status --all 2>&1 | head -40 || true
            fail "$1 is $s, not $2, after $3 s"
        }
        sleep 0.5
    done
}

t=$(now)
docker run -d --name "$c" -p "127.0.0.1:$WEB:80" -v "$tmp/mount:/dmp-contained/mount" \
    -v "$vol:/var/cache/dmp-contained" "$IMAGE" >/dev/null
wait_state buyer-frontend ready 300
cold=$(since "$t")
echo "time: cold start to buyer ready = $cold s"
wait_state search-api ready 60
wait_state nginx ready 30
[ "$(state elasticsearch)" = skipped ] || fail "elasticsearch is $(state elasticsearch)"
echo "ok: search-api ready without Elasticsearch"

page=$(curl -sS "http://127.0.0.1:$WEB/") || fail "/ did not answer"
[[ "$page" == *"G-Cloud 12"* && "$page" == *"Hello from mount/.env"* ]] || fail "/ is not the buyer page with api data and the .env value: $page"
echo "ok: / = buyer -> api -> Postgres, mount/.env applied"

app=$tmp/mount/apps-github-repos/digitalmarketplace-buyer-frontend/application.py
cp "$app" "$tmp/good.py"
printf '\ndef broken(:\n' >>"$app"
wait_state buyer-frontend failed 120
code=$(curl -s -o "$tmp/page" -w '%{http_code}' "http://127.0.0.1:$WEB/")
[ "$code" = 503 ] && grep -q SyntaxError "$tmp/page" || fail "broken save: / answered $code: $(cat "$tmp/page")"
hc=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WEB/_supervisor/health")
[ "$hc" = 503 ] || fail "health is $hc with the buyer failed"
echo "ok: broken save -> / 503 naming the SyntaxError, health 503"
cp "$tmp/good.py" "$app"
wait_state buyer-frontend ready 120
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WEB/")" = 200 ] || fail "fixed save: / is not 200"
echo "ok: fixed save -> / 200"

# A restart behind nginx: the request is held, then retried with a 307 (never a placeholder).
docker exec "$c" dmp-contained restart buyer-frontend >/dev/null
out=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$WEB/?during=restart")
case "$out" in
    "307 http://127.0.0.1:$WEB/?during=restart" | "200 "*) echo "ok: / during a restart -> $out" ;;
    *) fail "/ during a restart answered: $out" ;;
esac
wait_state buyer-frontend ready 60

t=$(now)
docker stop "$c" >/dev/null
stop_s=$(since "$t")
code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || fail "docker stop: exit code $code (a requested stop exits 0)"
echo "ok: docker stop in $stop_s s, exit code 0"

t=$(now)
docker start "$c" >/dev/null
wait_state buyer-frontend ready 180
warm=$(since "$t")
echo "time: warm start (docker start) to buyer ready = $warm s"
echo "PASS: dmp-stack (cold $cold s, warm $warm s, stop $stop_s s)"
