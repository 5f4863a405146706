#!/usr/bin/env bash
# The example table (examples/minimal.toml) exported with `dmp-contained export compose` and run
# for real with docker-compose: Postgres, Redis, the example app and nginx come up healthy as four
# containers (plus the pg-init and db-create steps, which complete), nginx serves the page backed
# by Postgres and Redis, `docker-compose stop` stops every service with exit code 0, and
# `docker-compose down -v` leaves nothing behind.
#
#   tests/export-compose.sh            # one run
#   RUNS=5 tests/export-compose.sh     # figures: up-to-healthy and stop times, min/median/max
#
# Needs a Docker engine, docker-compose and an image made by scripts/build-image.sh
# (BASE_IMAGE, default dmp-contained; it is built when missing).  A thin image on top of it gets
# this checkout's binary and examples/ (the table's path inside it: /dmp-contained/examples/).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
BASE_IMAGE=${BASE_IMAGE:-${IMAGE_TAG:-dmp-contained}}
IMAGE=${EXPORT_IMAGE:-dmp-contained-export-test:$$}
RUNS=${RUNS:-1}
project="dmpexport$$"
work=$(mktemp -d /tmp/dmp-export-compose.XXXXXX)
compose=(docker-compose -p "$project" -f "$work/compose.yaml")
log() { printf 'export-compose: %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    [ -z "${EXPORT_IMAGE:-}" ] && docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

[ -x target/release/dmp-contained ] || fail "build first: cargo build --release"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE is missing: scripts/build-image.sh"
    IMAGE_TAG="$BASE_IMAGE" WITH_ELASTICSEARCH=0 SKIP_CARGO=1 scripts/build-image.sh >&2
fi
log "image $IMAGE: $BASE_IMAGE + this checkout's binary and examples/"
# Retried: an engine shared with parallel builds now and then loses a fresh layer.
dockerfile="FROM $BASE_IMAGE
COPY resources-for-container/ /dmp-contained/resources-for-container/
COPY examples/ /dmp-contained/examples/
COPY target/release/dmp-contained /usr/local/bin/dmp-contained"
for attempt in 1 2 3; do
    echo "$dockerfile" | docker build -q -t "$IMAGE" -f - . >/dev/null 2>"$work/build.log" && break
    [ "$attempt" = 3 ] && { cat "$work/build.log" >&2; fail "docker build"; }
done

target/release/dmp-contained --config examples/minimal.toml export compose \
    --image "$IMAGE" --image-config /dmp-contained/examples/minimal.toml --publish random \
    -o "$work/compose.yaml" 2>"$work/notes.txt"
grep -q "example-app: hot reload" "$work/notes.txt" || fail "export did not list what it cannot carry over"
"${compose[@]}" config -q || fail "docker-compose config rejects the exported file"

now_ms() { date +%s%3N; }
services=(postgres redis example-app nginx)
up_ms=() stop_ms=() down_ms=()
for run in $(seq 1 "$RUNS"); do
    since=$(date +%s.%N)
    t0=$(now_ms)
    # `up -d` itself waits for service_healthy / service_completed_successfully dependencies.
    "${compose[@]}" up -d --quiet-pull >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; "${compose[@]}" logs >&2; fail "docker-compose up"; }
    up_d_ms=$(( $(now_ms) - t0 ))
    # Then the last one, nginx: wait for its health_status event (no polling).
    exec {events}< <(timeout 120 docker events --since "$since" \
        --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=nginx" \
        --filter "event=health_status" --format '{{.Status}}')
    events_pid=$!
    healthy=$(grep -m1 -x 'health_status: healthy' <&"$events") || true
    kill "$events_pid" 2>/dev/null || true
    exec {events}<&-
    [ -n "$healthy" ] || { "${compose[@]}" logs >&2; fail "nginx did not become healthy"; }
    up_ms+=($(( $(now_ms) - t0 )))
    log "run $run: docker-compose up -d returned after ${up_d_ms} ms"
    for s in "${services[@]}"; do
        st=$(docker inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" ps -q "$s")")
        [ "$st" = healthy ] || fail "$s is $st"
    done
    for s in pg-init db-create; do
        code=$(docker inspect -f '{{.State.ExitCode}} {{.State.Status}}' "$("${compose[@]}" ps -q "$s")")
        [ "$code" = "0 exited" ] || fail "step $s: $code"
    done
    [ "$("${compose[@]}" ps -q | wc -l)" -eq 6 ] || fail "expected 6 containers"

    port=$("${compose[@]}" port nginx 18080 | sed 's/.*://')
    page=$(curl -fsS "http://127.0.0.1:$port/")
    echo "$page" | grep -Eq 'Postgres visits: [0-9]+' || { echo "$page" >&2; fail "page without Postgres visits"; }
    echo "$page" | grep -Eq 'Redis counter: [0-9]+' || { echo "$page" >&2; fail "page without Redis counter"; }
    # The app runs in its own container: the page names its host, not nginx's.
    app_host=$(docker inspect -f '{{.Config.Hostname}}' "$("${compose[@]}" ps -q example-app)")
    echo "$page" | grep -q "$app_host" || fail "page not served by the example-app container"

    t0=$(now_ms)
    "${compose[@]}" stop >/dev/null 2>&1
    stop_ms+=($(( $(now_ms) - t0 )))
    for s in "${services[@]}"; do
        code=$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -q "$s")")
        [ "$code" = 0 ] || { "${compose[@]}" logs "$s" >&2; fail "$s exited with $code on stop"; }
    done
    t0=$(now_ms)
    "${compose[@]}" down -v >/dev/null 2>&1
    down_ms+=($(( $(now_ms) - t0 )))
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project" | wc -l)
    vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$project" | wc -l)
    [ "$left" -eq 0 ] && [ "$vols" -eq 0 ] || fail "down left $left containers, $vols volumes"
    log "run $run: up to healthy ${up_ms[-1]} ms, stop ${stop_ms[-1]} ms, down -v ${down_ms[-1]} ms, page served, nothing left"
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %d ms, median %d ms, max %d ms (n=%d)", a[1], a[int((NR+1)/2)], a[NR], NR}'; }
log "up to healthy: $(stats "${up_ms[@]}")"
log "stop (every service exit 0): $(stats "${stop_ms[@]}")"
log "down -v after stop: $(stats "${down_ms[@]}")"
echo "PASS"
