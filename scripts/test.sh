#!/usr/bin/env bash
# The project's test command (README "Tests"): release build, the Rust test suite, the image
# (once, when a Docker engine answers and tests/image/ has scripts), then every test script
# tests/*.sh and tests/image/*.sh (by glob: a new script is picked up by being there).
# Prints a table of steps, then one closing line and the verdict:
#
#   tests: N passed, N failed, N skipped
#   RESULT: ok | RESULT: FAILED
#
#   scripts/test.sh
#
# Skips: a Rust test whose prerequisite is missing prints `SKIP <test>: <reason>` (tests/common
# require()); a script exits 77 after printing `SKIP: <reason>`. Both are counted as skipped —
# and under CI=true as failed (require() panics, exit 77 fails the step), since on a CI machine
# everything can be installed. Under CI=true `#[ignore]`d tests run too (--include-ignored).
#
# Env: IMAGE_TAG (dmp-contained) is the image built here and handed to the image scripts with
# SKIP_BUILD=1. Expects what scripts/install-deps.sh installs. Python: Debian's /usr/bin/python3
# (which has flask, psycopg2, redis) is put first on PATH as target/test-bin/python3, ahead of
# any pyenv/venv python, and exported as TEST_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# Debian keeps initdb & co. outside PATH: /usr/lib/postgresql/<major>/bin (15 on bookworm).
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$pgbin" ]; then
    export PATH="$pgbin:$PATH"
    export PG_BIN="$pgbin"
fi
if [ -x /usr/bin/python3 ]; then
    mkdir -p target/test-bin
    ln -sfn /usr/bin/python3 target/test-bin/python3
    export PATH="$repo/target/test-bin:$PATH"
    export TEST_PYTHON=/usr/bin/python3
fi
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export IMAGE_TAG=${IMAGE_TAG:-dmp-contained}
ci=false
case "${CI:-}" in true | 1) ci=true ;; esac

declare -a names=() results=() times=()
failed=0
start_all=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DMP_SKIP_LOG="$work/skips.log"
: >"$DMP_SKIP_LOG"
script_passed=0 script_failed=0 script_skipped=0

# step NAME TIMEOUT_SECONDS CMD...: runs CMD under a time limit and records the outcome.
# Exit 77 means "skipped" (a failure under CI=true).
step() {
    local name=$1 limit=$2 t0=$SECONDS rc=0
    shift 2
    printf '\n===== %s =====\n' "$name"
    timeout --kill-after=30 "$limit" "$@" || rc=$?
    names+=("$name")
    times+=("$((SECONDS - t0))s")
    if [ "$rc" -eq 0 ]; then
        results+=("ok")
    elif [ "$rc" -eq 77 ] && ! $ci; then
        results+=("skipped")
    elif [ "$rc" -eq 77 ]; then
        results+=("FAILED (skipped under CI)")
        failed=1
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        results+=("TIMEOUT (${limit}s)")
        failed=1
    else
        results+=("FAILED (exit $rc)")
        failed=1
    fi
    return "$rc"
}
not_run() { names+=("$1"); results+=("not run: $2"); times+=("-"); }

echo "postgres binaries: ${pgbin:-not found}"
echo "python3: $(command -v python3) ($(python3 --version 2>&1))"
echo "rustc: $(rustc --version 2>/dev/null || echo missing)"
echo "CI: $ci"

shopt -s nullglob
scripts=(tests/*.sh tests/image/*.sh)
image_scripts=(tests/image/*.sh)
shopt -u nullglob

test_args=(--test-threads=2)
$ci && test_args+=(--include-ignored)

if step "cargo build --release" 1500 bash -c 'cargo build --release && cargo test --release --no-run'; then
    # --no-fail-fast: a failing test binary does not hide the results of the others.
    step "cargo test --release" 1200 bash -c 'set -o pipefail; cargo test --release --no-fail-fast -- "${@:2}" 2>&1 | tee "$1"' \
        _ "$work/cargo-test.log" "${test_args[@]}" || true

    # The image, once, for every image script (they reuse it: SKIP_BUILD=1).
    image_ok=true
    if [ "${#image_scripts[@]}" -gt 0 ] && docker info >/dev/null 2>&1; then
        step "image $IMAGE_TAG" 1500 env SKIP_CARGO=1 scripts/build-image.sh || image_ok=false
    fi
    for s in "${scripts[@]}"; do
        if [[ $s == tests/image/* ]] && ! $image_ok; then
            not_run "$s" "image build failed"
            script_failed=$((script_failed + 1))
            continue
        fi
        step "$s" 600 env SKIP_BUILD=1 bash "$s" || true
        case "${results[-1]}" in
            ok) script_passed=$((script_passed + 1)) ;;
            skipped) script_skipped=$((script_skipped + 1)) ;;
            *) script_failed=$((script_failed + 1)) ;;
        esac
    done
else
    not_run "cargo test --release" "build failed"
    for s in "${scripts[@]}"; do not_run "$s" "build failed"; done
fi

printf '\n===== summary (%ss) =====\n' "$((SECONDS - start_all))"
for i in "${!names[@]}"; do
    printf '%-38s %-26s %s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done

# Rust tests from libtest's "test result:" lines; a test that returned early through require()
# counts as passed there, so the SKIP lines it logged move it to skipped. Ignored = skipped.
read -r rs_passed rs_failed rs_ignored < <(
    awk '/^test result:/ { for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i
            if ($(i + 1) ~ /^ignored/) g += $i } }
         END { print p + 0, f + 0, g + 0 }' "$work/cargo-test.log" 2>/dev/null || echo 0 0 0
)
rs_skipped=$(grep -c '^SKIP ' "$DMP_SKIP_LOG" || true)
if [ -s "$DMP_SKIP_LOG" ]; then
    echo "skipped Rust tests:"
    sed 's/^/  /' "$DMP_SKIP_LOG"
fi
passed=$((rs_passed - rs_skipped + script_passed))
nfailed=$((rs_failed + script_failed))
skipped=$((rs_skipped + rs_ignored + script_skipped))
echo "tests: $passed passed, $nfailed failed, $skipped skipped"
if [ "$failed" -ne 0 ] || [ "$nfailed" -ne 0 ]; then
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: ok"
