#!/usr/bin/env bash
# The PID-1 tests of tests/section_pid1.rs, inside the image, with the binary as the container's
# real PID 1 (the image's ENTRYPOINT).  Each case bind-mounts a small process table (a temp dir on
# /t) instead of the image's supervisor.toml:
#
#   a. a step forks 1,000 orphans (tests/fixtures/orphan-maker.py), the next step counts zombies
#      in /proc at 100 ms and 1 s: both 0; `docker run` exits 0 once the table has finished
#   b. a `critical = true` entry exiting 42: `docker run` exits 42
#   c. `docker stop` of a service that traps TERM: exit code 0, well under 10 s; of a service that
#      ignores TERM (stop_timeout 2s): still stopped within the budget, and `docker logs` shows
#      the supervisor's SIGKILL warning
#   d. `docker exec C dmp-contained status` / `health` (exit codes 0, then 1 once an entry is
#      stopped), `status --json`, and `docker logs` lines prefixed `name | `
#   e. `docker run --init`: docker-init (tini) is PID 1, our binary PID 2 as child subreaper,
#      and the 1,000 orphans are still reaped
#
# Builds the image (scripts/build-image.sh) only when IMAGE_TAG (dmp-contained) is missing or
# older than target/release/dmp-contained.  No Docker engine: prints SKIP and exits 77 (skipped).
# Prints a PASS/FAIL summary; exits 1 if any case failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE_TAG:-dmp-contained}

if ! docker info >/dev/null 2>&1; then
    echo "SKIP: no Docker engine"
    exit 77
fi

# --- image: build only when missing or older than the binary ----------------------------------
bin="$repo/target/release/dmp-contained"
need_build=0
if ! created=$(docker image inspect -f '{{.Created}}' "$IMAGE" 2>/dev/null); then
    echo "image $IMAGE missing: building it"
    need_build=1
elif [ -x "$bin" ] && [ "$(stat -c %Y "$bin")" -gt "$(date -d "$created" +%s)" ]; then
    echo "image $IMAGE ($created) is older than $bin: rebuilding it"
    need_build=1
fi
if [ "$need_build" = 1 ]; then
    skip_cargo=0
    [ -x "$bin" ] && skip_cargo=1   # scripts/test.sh has just built it; standalone: build first
    SKIP_CARGO=${SKIP_CARGO:-$skip_cargo} IMAGE_TAG=$IMAGE "$repo/scripts/build-image.sh" >&2 \
        || { echo "FAIL: image build"; exit 1; }
fi

# --- helpers ---------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/dmp-pid1.XXXXXX)
chmod 0755 "$tmp"
cp "$repo/tests/fixtures/orphan-maker.py" "$repo/tests/fixtures/ignore-sigterm.sh" "$tmp/"
chmod 0755 "$tmp/orphan-maker.py" "$tmp/ignore-sigterm.sh"
prefix="dmp-pid1-$$-$RANDOM"
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

declare -a results=()
failures=0
case_fail=""
# check COND_DESCRIPTION: records a failure of the current case (cases go on to clean up).
bad() { echo "  not ok: $*"; case_fail="${case_fail:+$case_fail; }$*"; }
ok() { echo "  ok: $*"; }
begin() { echo; echo "== $1"; case_name=$1; case_fail=""; }
finish() {
    if [ -z "$case_fail" ]; then
        results+=("PASS  $case_name")
    else
        results+=("FAIL  $case_name: $case_fail")
        failures=$((failures + 1))
    fi
}

# table NAME <<TOML: writes $tmp/NAME.toml
table() { cat >"$tmp/$1.toml"; }

# run_fg NAME TIMEOUT ARGS... : docker run (foreground) with a unique name, output to $tmp/NAME.out;
# sets rc and took.
run_fg() {
    local name=$1 limit=$2 t
    shift 2
    local c="$prefix-$name"
    containers+=("$c")
    t=$(now)
    rc=0
    timeout "$limit" docker run --name "$c" -v "$tmp:/t" "$@" >"$tmp/$name.out" 2>&1 || rc=$?
    took=$(since "$t")
    docker rm -f -v "$c" >/dev/null 2>&1 || true
}

# start_bg NAME ARGS... : docker run -d; sets c to the container name (not in a subshell, so the
# cleanup list sees it)
start_bg() {
    local name=$1
    shift
    c="$prefix-$name"
    containers+=("$c")
    docker run -d --name "$c" -v "$tmp:/t" "$@" >/dev/null
}

# wait_log C PATTERN TIMEOUT_S
wait_log() {
    local c=$1 pat=$2 limit=$3 t
    t=$(now)
    until grep -q -- "$pat" <<<"$(docker logs "$c" 2>&1)"; do
        lt "$(since "$t")" "$limit" || return 1
        [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] || return 1
        sleep 0.1
    done
}

COUNT_ZOMBIES='n=0; for f in /proc/[0-9]*/stat; do case "$(cat $f 2>/dev/null)" in *'"') Z '"'*) n=$((n+1));; esac; done; echo $n'

table orphans <<TOML
[step.orphans]
command = ["python3", "/t/orphan-maker.py", "--count", "1000", "--sleep", "0.05"]

[step.count]
command = '''echo pid1=\$(cat /proc/1/comm) shim_pid=\$(pgrep -o -x dmp-contained); sleep 0.1; echo at100ms=\$($COUNT_ZOMBIES); sleep 0.9; echo at1s=\$($COUNT_ZOMBIES)'''
after = ["orphans"]
TOML

# ---------------------------------------------------------------------------------------------
begin "a. 1,000 orphans as PID 1: no zombies at 100 ms and 1 s"
run_fg a 60 --rm "$IMAGE" up --config /t/orphans.toml
out=$(cat "$tmp/a.out")
[ "$rc" = 0 ] && ok "docker run exited 0 (${took}s)" || bad "docker run exited $rc, wanted 0"
grep -q 'count | pid1=dmp-contained shim_pid=1' "$tmp/a.out" \
    && ok "PID 1 is dmp-contained" || bad "PID 1 is not dmp-contained: $(grep 'count | pid1' "$tmp/a.out")"
grep -q 'count | at100ms=0$' "$tmp/a.out" && ok "0 zombies at 100 ms" \
    || bad "zombies at 100 ms: $(grep -o 'at100ms=[0-9]*' "$tmp/a.out" || echo 'no count')"
grep -q 'count | at1s=0$' "$tmp/a.out" && ok "0 zombies at 1 s" \
    || bad "zombies at 1 s: $(grep -o 'at1s=[0-9]*' "$tmp/a.out" || echo 'no count')"
[ -z "$case_fail" ] || tail -n 30 "$tmp/a.out"
finish

# ---------------------------------------------------------------------------------------------
begin "b. exit code of a critical entry passes through docker run"
table critical <<'TOML'
[process.core]
command = "sleep 0.2; exit 42"
critical = true
restart = { policy = "never" }

[process.other]
command = ["sleep", "60"]
TOML
run_fg b 30 --rm "$IMAGE" up --config /t/critical.toml
[ "$rc" = 42 ] && ok "docker run exited 42 (${took}s)" || { bad "docker run exited $rc, wanted 42"; tail -n 20 "$tmp/b.out"; }
lt "$took" 10 || bad "took ${took}s (the other service was not stopped promptly)"
finish

# ---------------------------------------------------------------------------------------------
begin "c1. docker stop, service traps TERM: exit 0 quickly"
table trap <<'TOML'
[process.svc]
command = "trap 'echo got-term; exit 0' TERM; echo svc-up; while true; do sleep 0.05; done"
TOML
if start_bg c1 "$IMAGE" up --config /t/trap.toml && wait_log "$c" 'svc | svc-up' 20; then
    t=$(now)
    docker stop -t 10 "$c" >/dev/null
    took=$(since "$t")
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] && ok "exit code 0" || bad "exit code $code, wanted 0"
    lt "$took" 10 && ok "docker stop took ${took}s" || bad "docker stop took ${took}s (>= 10 s: SIGKILLed by Docker)"
    grep -q 'svc | got-term' <<<"$(docker logs "$c" 2>&1)" && ok "service saw TERM" || bad "no 'svc | got-term' in docker logs"
else
    bad "service did not come up"; docker logs "$c" 2>&1 | tail -n 20
fi
finish

begin "c2. docker stop, service ignores TERM (stop_timeout 2s): SIGKILLed within the budget"
table stubborn <<'TOML'
[process.polite]
command = "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.05; done"

[process.stubborn]
command = ["/t/ignore-sigterm.sh"]
stop_timeout = "2s"
TOML
if start_bg c2 "$IMAGE" up --config /t/stubborn.toml && wait_log "$c" 'stubborn: ready' 20; then
    t=$(now)
    docker stop -t 10 "$c" >/dev/null
    took=$(since "$t")
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    logs=$(docker logs "$c" 2>&1)
    [ "$code" = 0 ] && ok "exit code 0" || bad "exit code $code, wanted 0 (137 = SIGKILLed by Docker)"
    lt "$took" 10 && ok "docker stop took ${took}s" || bad "docker stop took ${took}s (>= 10 s)"
    lt 1.9 "$took" || bad "docker stop took only ${took}s: stop_timeout 2s not honoured?"
    grep -q 'stubborn: did not stop within its timeout.*SIGKILL' <<<"$logs" \
        && ok "SIGKILL warning: $(grep -o 'stubborn: did not stop.*' <<<"$logs" | head -n1)" \
        || { bad "no SIGKILL warning for stubborn in docker logs"; tail -n 20 <<<"$logs"; }
else
    bad "service did not come up"; docker logs "$c" 2>&1 | tail -n 20
fi
finish

# ---------------------------------------------------------------------------------------------
begin "d. docker exec status/health, prefixed docker logs"
table exec <<'TOML'
[process.web]
command = "echo hello-from-web; exec sleep 300"

[process.worker]
command = "echo hello-from-worker; exec sleep 300"
after = ["web"]

[step.seed]
command = "echo seeded"
TOML
if start_bg d "$IMAGE" up --config /t/exec.toml && wait_log "$c" 'worker | hello-from-worker' 20; then
    sleep 0.3
    # No --config: inside the image the default is /dmp-contained/supervisor.toml (WORKDIR), which
    # names the same default socket.
    st=$(docker exec "$c" dmp-contained status 2>&1); rc=$?
    [ "$rc" = 0 ] && ok "status exit 0" || bad "status exited $rc: $st"
    grep -q 'web' <<<"$st" && grep -q 'worker' <<<"$st" && grep -q 'seed' <<<"$st" \
        && ok "status lists web, worker, seed" || bad "status does not list the entries: $st"
    js=$(docker exec "$c" dmp-contained status --json 2>&1); rc=$?
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
es = d["entries"] if isinstance(d, dict) and "entries" in d else d
st = {e["name"]: e["state"] for e in es}
assert st.get("web") == "ready" and st.get("worker") == "ready" and st.get("seed") == "done", st
' "$js" && [ "$rc" = 0 ] && ok "status --json: web/worker ready, seed done" || bad "status --json (exit $rc): ${js:0:300}"
h=$(docker exec "$c" dmp-contained health 2>&1); rc=$?
    [ "$rc" = 0 ] && ok "health exit 0 ($h)" || bad "health exited $rc: $h"
    docker exec "$c" dmp-contained stop worker >/dev/null 2>&1 || bad "dmp-contained stop worker failed"
    sleep 0.5
    h=$(docker exec "$c" dmp-contained health 2>&1); rc=$?
    [ "$rc" = 1 ] && ok "health exit 1 with worker stopped ($h)" || bad "health with worker stopped exited $rc, wanted 1: $h"
    docker exec "$c" dmp-contained start worker >/dev/null 2>&1 || bad "dmp-contained start worker failed"
    logs=$(docker logs "$c" 2>/dev/null)
    for l in 'web | hello-from-web' 'worker | hello-from-worker' 'seed | seeded'; do
        grep -qx -- "$l" <<<"$logs" && ok "docker logs (stdout): '$l'" || bad "docker logs has no line '$l'"
    done
    unprefixed=$(grep -v -E '^[a-z0-9_.-]+ \| ' <<<"$logs" | head -n 3)
    [ -z "$unprefixed" ] && ok "every stdout line is prefixed 'name | '" || bad "unprefixed stdout lines: $unprefixed"
    docker stop -t 10 "$c" >/dev/null
else
    bad "table did not come up"; docker logs "$c" 2>&1 | tail -n 20
fi
finish

# ---------------------------------------------------------------------------------------------
begin "e. docker run --init (docker-init PID 1, us PID 2 as subreaper): orphans reaped"
run_fg e 60 --rm --init "$IMAGE" up --config /t/orphans.toml
[ "$rc" = 0 ] && ok "docker run --init exited 0 (${took}s)" || bad "docker run --init exited $rc, wanted 0"
pidline=$(grep 'count | pid1=' "$tmp/e.out")
if grep -q 'count | pid1=docker-init shim_pid=[0-9]' <<<"$pidline" && ! grep -q 'shim_pid=1$' <<<"$pidline"; then
    ok "PID 1 is docker-init, our shim is not ($pidline)"
else
    bad "unexpected PID layout: $pidline"
fi
grep -q 'count | at100ms=0$' "$tmp/e.out" && ok "0 zombies at 100 ms" \
    || bad "zombies at 100 ms: $(grep -o 'at100ms=[0-9]*' "$tmp/e.out" || echo 'no count')"
grep -q 'count | at1s=0$' "$tmp/e.out" && ok "0 zombies at 1 s" \
    || bad "zombies at 1 s: $(grep -o 'at1s=[0-9]*' "$tmp/e.out" || echo 'no count')"
[ -z "$case_fail" ] || tail -n 30 "$tmp/e.out"
finish

# ---------------------------------------------------------------------------------------------
echo
echo "summary ($IMAGE):"
printf '  %s\n' "${results[@]}"
if [ "$failures" -ne 0 ]; then
    echo "FAIL: $failures of ${#results[@]} PID-1-in-image cases"
    exit 1
fi
echo "PASS: all ${#results[@]} PID-1-in-image cases"
