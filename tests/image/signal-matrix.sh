#!/usr/bin/env bash
# The signal matrix of tests/section_signals.rs inside the image (issue #17): the binary is the
# container's real PID 1 (the image's ENTRYPOINT), with real Postgres in the table. Every
# catchable signal is sent with `docker kill -s`, and its documented effect (README "Signals")
# is awaited in `docker logs`; the container must keep running through all of them. Then
# SIGQUIT (Ctrl-\ under `docker run -it`) must stop it gracefully (exit 0, Postgres "shut
# down"), the next start must need no crash recovery, and `docker stop` must finish in < 10 s.
#
# The binary of this tree (target/release/dmp-contained) is bind-mounted over the image's, so an
# image built before these changes still tests this code. No Docker engine or no image: SKIP (exit 77).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE_TAG:-dmp-contained}
bin="$repo/target/release/dmp-contained"

if ! docker info >/dev/null 2>&1; then echo "SKIP: no Docker engine"; exit 77; fi
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "SKIP: no image $IMAGE (scripts/build-image.sh)"; exit 77
fi
[ -x "$bin" ] || { echo "FAIL: no binary at $bin (cargo build --release)"; exit 1; }

tmp=$(mktemp -d /tmp/dmp-sigmatrix.XXXXXX)
chmod 0755 "$tmp"
c="dmp-sigmatrix-$$-$RANDOM"
cleanup() { docker rm -f -v "$c" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT

cat > "$tmp/supervisor.toml" <<'TOML'
[supervisor]
api_listen = "127.0.0.1:8089"
socket = "/tmp/ctl.sock"
cache_dir = "/tmp/cache"

[step.pg-dir]
command = "mkdir -p /var/lib/sigmatrix && chown postgres /var/lib/sigmatrix"

[step.pg-init]
command = "test -f /var/lib/sigmatrix/data/PG_VERSION || /usr/lib/postgresql/15/bin/initdb -D /var/lib/sigmatrix/data -U postgres --auth=trust >/dev/null"
user = "postgres"
after = ["pg-dir"]

[process.postgres]
command = ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/sigmatrix/data", "-p", "5433", "-k", "/var/lib/sigmatrix", "-c", "listen_addresses=127.0.0.1"]
user = "postgres"
after = ["pg-init"]
stop_signal = "SIGINT"
ready = { postgres = "host=127.0.0.1 port=5433 user=postgres dbname=postgres", interval = "100ms" }

[process.svc]
command = "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.05 & wait; done"
after = ["postgres"]
TOML

fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
logs() { docker logs "$c" 2>&1; }
# has GREP_ARGS...: the logs (captured first: `logs | grep -q` under pipefail fails whenever grep
# exits before docker logs has written everything, SIGPIPE) contain a match.
has() { grep -q "$@" <<<"$(logs)"; }
# await TEXT [SECONDS]: until `docker logs` contains TEXT (count > $2 occurrences when given).
await() {
    local want=$1 min=${2:-0} i
    for i in $(seq 1 100); do
        [ "$(logs | grep -cF -- "$want")" -gt "$min" ] && return 0
        sleep 0.1
    done
    return 1
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ]; }

docker run -d --name "$c" -v "$tmp:/t:ro" -v "$bin:/usr/local/bin/dmp-contained:ro" \
    "$IMAGE" up --config /t/supervisor.toml >/dev/null || { echo "FAIL: docker run"; exit 1; }
for i in $(seq 1 600); do has "svc: ready" && break; sleep 0.1; done
has "svc: ready" || { logs | tail -20; echo "FAIL: never ready"; exit 1; }

# Silent ones first (blocked fault signals, job control, default-ignored, CHLD, PIPE).
for s in ILL FPE SEGV PIPE CHLD CONT TSTP TTIN TTOU URG WINCH; do docker kill -s "$s" "$c" >/dev/null; done
declare -A effect=(
    [HUP]="SIGHUP: reloading the process table" [USR1]="SIGUSR1: nothing to reopen" [USR2]="status (SIGUSR2)"
    [TRAP]="SIGTRAP ignored" [ABRT]="SIGABRT ignored" [STKFLT]="SIGSTKFLT ignored"
    [ALRM]="SIGALRM ignored" [XCPU]="SIGXCPU ignored" [XFSZ]="SIGXFSZ ignored"
    [VTALRM]="SIGVTALRM ignored" [PROF]="SIGPROF ignored" [IO]="SIGIO ignored"
    [PWR]="SIGPWR ignored" [SYS]="SIGSYS ignored" [BUS]="init: SIGBUS ignored"
)
for s in "${!effect[@]}"; do
    docker kill -s "$s" "$c" >/dev/null
    await "${effect[$s]}" || fail "SIG$s: no '${effect[$s]}' in docker logs"
done
for n in $(seq 34 64); do
    docker kill -s "$n" "$c" >/dev/null
    await "SIGRTMIN+$((n - 34)) ignored" || fail "signal $n: not logged as ignored"
done
running || fail "the container died during the matrix"
has "postgres: exited" && fail "postgres exited during the matrix"

docker kill -s QUIT "$c" >/dev/null
code=$(timeout 15 docker wait "$c")
[ "$code" = 0 ] || fail "SIGQUIT: exit code $code, want 0"
has "database system is shut down" || fail "SIGQUIT: postgres did not shut down cleanly"
has "svc | got-term" || fail "SIGQUIT: svc did not get its TERM"

docker start "$c" >/dev/null
await "svc: ready" 1 || await "svc: ready" 1 || fail "second start: never ready"
has -E "not properly shut down|automatic recovery" && fail "second start needed crash recovery"
start=$(date +%s.%N)
docker stop "$c" >/dev/null
took=$(echo "$(date +%s.%N) - $start" | bc)
code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || fail "docker stop: exit code $code"
echo "docker stop took ${took}s"
awk "BEGIN{exit !($took < 10)}" || fail "docker stop took ${took}s"

if [ "$fails" = 0 ]; then echo "PASS: signal matrix in the image (every catchable signal)"; else logs | tail -30; exit 1; fi
