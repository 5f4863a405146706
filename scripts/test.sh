#!/usr/bin/env bash
# The project's test command (README "Testing"): release build, the Rust test suite, then the
# image-level scripts when present. Prints a summary; exits non-zero if any step failed.
#
#   scripts/test.sh
#
# Expects the Debian packages from scripts/install-deps.sh. Tests find the binary through
# env!("CARGO_BIN_EXE_dmp-contained"); Postgres' initdb/postgres/pg_ctl are put on PATH here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian keeps initdb & co. outside PATH: /usr/lib/postgresql/<major>/bin (15 on bookworm).
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$pgbin" ]; then
    export PATH="$pgbin:$PATH"
    export PG_BIN="$pgbin"
fi
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

declare -a names=() results=() times=()
failed=0
start_all=$SECONDS

step() { # step NAME TIMEOUT_SECONDS CMD...
    local name=$1 limit=$2 t0=$SECONDS rc=0
    shift 2
    printf '\n===== %s =====\n' "$name"
    timeout --kill-after=30 "$limit" "$@" || rc=$?
    names+=("$name"); times+=("$((SECONDS - t0))s")
    if [ "$rc" -eq 0 ]; then
        results+=("ok")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        results+=("TIMEOUT (${limit}s)"); failed=1
    else
        results+=("FAILED (exit $rc)"); failed=1
    fi
    return "$rc"
}
skip() { names+=("$1"); results+=("skipped: $2"); times+=("-"); }

echo "postgres binaries: ${pgbin:-not found}"
echo "rustc: $(rustc --version 2>/dev/null || echo missing)"

if step "cargo build --release" 900 cargo build --release; then
    # --no-fail-fast: a failing test binary does not hide the results of the others.
    testlog=$(mktemp)
    step "cargo test --release" 900 bash -c 'set -o pipefail; cargo test --release --no-fail-fast -- --test-threads=2 2>&1 | tee "$0"' "$testlog" || true
    # Dashboard in headless chromium (skips itself without it), then the image tests (each
    # skips itself without a Docker engine; pid1-in-image.sh reuses the image e2e.sh built).
    for s in tests/dashboard.sh tests/image/nginx-routing.sh tests/image/e2e.sh tests/image/pid1-in-image.sh; do
        if [ -f "$s" ]; then
            step "$s" 600 bash "$s" || true
        else
            skip "$s" "not present"
        fi
    done
else
    skip "cargo test --release" "build failed"
fi

printf '\n===== summary (%ss) =====\n' "$((SECONDS - start_all))"
for i in "${!names[@]}"; do
    printf '%-36s %-22s %s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done
# Totals of the Rust suite plus one per passing script, as one plain closing line.
passed=0; nfailed=0
if [ -n "${testlog:-}" ] && [ -f "$testlog" ]; then
    read -r passed nfailed < <(awk '/^test result:/ {p += $4; f += $6} END {print p+0, f+0}' "$testlog")
    rm -f "$testlog"
fi
for i in "${!names[@]}"; do
    case "${names[$i]}" in
        cargo*) ;;
        *) case "${results[$i]}" in ok) passed=$((passed + 1)) ;; FAILED*|TIMEOUT*) nfailed=$((nfailed + 1)) ;; esac ;;
    esac
done
if [ "$failed" -ne 0 ]; then
    echo "tests: $passed passed, $nfailed failed"
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: ok"
echo "tests: $passed passed, $nfailed failed"
