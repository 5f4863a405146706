#!/usr/bin/env bash
# The image's steps (helper scripts and volumes), on the built image:
#   1. make-venv inside a container: the api stand-in's real PyPI pins installed with uv through
#      the image's CA store, cffi/greenlet overridden, the venv isolated from Debian's packages;
#   2. PGDATA on its own volume, the chain marker inside it: container A (cache + pg volumes)
#      seeds and snapshots; container B with the SAME cache volume but a NEW pg volume (the
#      image's empty cluster) gets the snapshot restored (databases present, db-import cached);
#      container C with both of A's volumes keeps the data as is.
#   IMAGE_TAG (default dmp-contained-steps; built with scripts/build-image.sh unless SKIP_BUILD=1).
#   No Docker engine: prints SKIP and exits 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE_TAG:-dmp-contained-steps}
if ! docker info >/dev/null 2>&1; then
    echo "SKIP: no Docker engine"
    exit 0
fi
fail() { echo "FAIL: $*"; exit 1; }
id=$$
vols=(dmp-steps-cache-$id dmp-steps-pg-a-$id dmp-steps-pg-b-$id)
cleanup() {
    docker rm -f "dmp-steps-a-$id" "dmp-steps-b-$id" "dmp-steps-c-$id" >/dev/null 2>&1 || true
    docker volume rm "${vols[@]}" >/dev/null 2>&1 || true
    rm -rf "$mount"
}
mount=$(mktemp -d /tmp/dmp-steps-mount.XXXXXX)
trap cleanup EXIT
# A dump, as a DMp user puts it in mount/: db-import imports it and snapshots Postgres.
mkdir -p "$mount/apps-github-repos"
printf 'CREATE TABLE suppliers (id int PRIMARY KEY, name text);\nINSERT INTO suppliers SELECT g, %s FROM generate_series(1, 5000) g;\n' "'supplier-' || g" >"$mount/test_data.sql"
chmod -R a+rX "$mount"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    IMAGE_TAG=$IMAGE WITH_ELASTICSEARCH=${WITH_ELASTICSEARCH:-0} "$repo/scripts/build-image.sh"
fi

echo "== 1. make-venv in a container (uv, overrides, isolation)"
t0=$(date +%s.%N)
out=$(docker run --rm -v "$repo/tests/fixtures/dmp-like/api:/src:ro" --entrypoint /bin/sh "$IMAGE" -c '
    set -e
    cp -r /src /tmp/api
    /dmp-contained/resources-for-container/bin/make-venv /tmp/api /tmp/venv >/tmp/log 2>&1 || { tail -20 /tmp/log; exit 1; }
    grep -q "uv pip install" /tmp/log
    /tmp/venv/bin/python -W error -c "import cffi, greenlet, flask, sqlalchemy, requests; print(cffi.__version__, greenlet.__version__)"
    grep -qx "include-system-site-packages = false" /tmp/venv/pyvenv.cfg || echo "LEAK: venv sees system site-packages"
') || fail "make-venv in the image: $out"
echo "$out"
[ "$(echo "$out" | tail -1)" = "1.15.1 2.0.2" ] || fail "overrides not applied: $out"
echo "venv in the image: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (container start included)"

status() { docker exec "$1" dmp-contained status --json 2>/dev/null || true; }
state_of() { status "$1" | python3 -c "import json,sys
try: d = json.load(sys.stdin)
except Exception: sys.exit(0)
print(next((e['state'] for e in d['entries'] if e['name'] == '$2'), ''))"; }
wait_state() { # container entry state timeout
    local i
    for i in $(seq 1 $(( $4 * 4 ))); do
        [ "$(state_of "$1" "$2")" = "$3" ] && return 0
        sleep 0.25
    done
    docker logs "$1" 2>&1 | tail -30
    fail "$2 in $1 is not $3 after $4 s (now: $(state_of "$1" "$2"))"
}
dbs() {
    docker exec "$1" psql -h 127.0.0.1 -U postgres -At -c "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'digital%'"
    docker exec "$1" psql -h 127.0.0.1 -U postgres -d digitalmarketplace -At -c "SELECT count(*) FROM suppliers" 2>&1
}

echo "== 2. new container, same cache volume, new PGDATA volume"
docker run -d --name "dmp-steps-a-$id" -v "${vols[0]}:/var/cache/dmp-contained" -v "${vols[1]}:/var/lib/postgresql" -v "$mount:/dmp-contained/mount" "$IMAGE" >/dev/null
wait_state "dmp-steps-a-$id" example-app ready 120
wait_state "dmp-steps-a-$id" db-import done 60
want=$(dbs "dmp-steps-a-$id")
echo "$want" | grep -qx 5000 || fail "no imported data after a cold start: $want"
docker exec "dmp-steps-a-$id" test -f /var/lib/postgresql/data/.dmp-contained-chain.json || fail "no chain marker in PGDATA"
docker stop -t 20 "dmp-steps-a-$id" >/dev/null

docker run -d --name "dmp-steps-b-$id" -v "${vols[0]}:/var/cache/dmp-contained" -v "${vols[2]}:/var/lib/postgresql" -v "$mount:/dmp-contained/mount" "$IMAGE" >/dev/null
wait_state "dmp-steps-b-$id" db-import cached 120
wait_state "dmp-steps-b-$id" example-app ready 60
[ "$(dbs "dmp-steps-b-$id")" = "$want" ] || fail "new PGDATA volume: databases '$(dbs "dmp-steps-b-$id")', want '$want'"
logs_b=$(docker logs "dmp-steps-b-$id" 2>&1); grep -q "restored data snapshot" <<<"$logs_b" || fail "no restore logged"
docker stop -t 20 "dmp-steps-b-$id" >/dev/null

echo "== 3. same volumes: kept"
docker run -d --name "dmp-steps-c-$id" -v "${vols[0]}:/var/cache/dmp-contained" -v "${vols[1]}:/var/lib/postgresql" -v "$mount:/dmp-contained/mount" "$IMAGE" >/dev/null
wait_state "dmp-steps-c-$id" db-import cached 120
[ "$(dbs "dmp-steps-c-$id")" = "$want" ] || fail "same volumes: databases differ"
logs_c=$(docker logs "dmp-steps-c-$id" 2>&1); grep -q "already holds chain" <<<"$logs_c" || fail "data not kept"
echo "PASS: steps in the image (venv with uv + overrides; PGDATA volume and chain marker: $want)"
