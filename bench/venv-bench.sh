#!/usr/bin/env bash
# venv creation for the DMp-like fixture apps (tests/fixtures/dmp-like/{api,search-api,buyer-frontend},
# real PyPI pins incl. the cffi/greenlet overrides) with the shipped make-venv, uv vs pip, side by side:
#   cold      empty installer cache, new venv            (a first container start)
#   cache     installer cache filled, new venv           (e.g. a requirements edit, same cache volume)
#   no-op     the venv already has everything            (make-venv run again; a warm supervisor
#             start does not even run it: the step is `cached`)
# Each run is one app's whole `make-venv APP VENV`, timed from outside. The network is real PyPI.
#
#   bench/venv-bench.sh [--json FILE] [--md FILE] [RUNS] [APPS...]
#       RUNS default 3; APPS default api search-api buyer-frontend; --json FILE: the raw seconds
#       per installer, app ("all apps": each run's sum) and mode, for bench/bench.py's venv section;
#       --md FILE: the table's file instead of bench/results-venv.md.
#
# PIP_FIND_LINKS / PIP_NO_INDEX and similar host settings are cleared so both installers fetch
# from PyPI; each run gets its own empty cache dir (UV_CACHE_DIR / PIP_CACHE_DIR) for "cold".
# Results: stdout and bench/results-venv.md.
set -euo pipefail
. "$(dirname "$0")/out-args.sh" "$@"
set -- ${REST[@]+"${REST[@]}"}
cd "$(dirname "$0")/.."
MD=${MD:-bench/results-venv.md}
ROOT=$PWD
RUNS=${1:-3}
shift || true
APPS=${*:-api search-api buyer-frontend}
command -v uv >/dev/null || { echo "uv is not on PATH (scripts/install-deps.sh installs it)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/venv-bench.XXXXXX)
[ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT
unset PIP_FIND_LINKS PIP_NO_INDEX PIP_INDEX_URL PIP_EXTRA_INDEX_URL UV_INDEX_URL UV_FIND_LINKS || true
MK=$ROOT/resources-for-container/bin/make-venv
RAW=$WORK/raw.tsv
: >"$RAW"

# one RUN INSTALLER APP MODE: time make-venv, append "installer app mode seconds"
one() {
    local inst=$1 app=$2 mode=$3 run=$4
    local cache=$WORK/cache-$inst-$app-$run venv=$WORK/venv-$inst-$app-$run
    case $mode in
        cold)  rm -rf "$cache" "$venv" ;;
        cache) rm -rf "$venv" ;;
        noop)  ;;
    esac
    local t0 t1
    t0=$(date +%s.%N)
    if ! UV_CACHE_DIR=$cache PIP_CACHE_DIR=$cache MAKE_VENV_INSTALLER=$inst \
        "$MK" "$ROOT/tests/fixtures/dmp-like/$app" "$venv" >"$WORK/log" 2>&1; then
        echo "make-venv failed ($inst $app $mode):" >&2
        tail -20 "$WORK/log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    local s
    s=$(echo "$t1 - $t0" | bc)
    printf '%s\t%s\t%s\t%s\n' "$inst" "$app" "$mode" "$s" >>"$RAW"
    printf '  %-4s %-15s %-6s run %s: %6.2f s\n' "$inst" "$app" "$mode" "$run" "$s" >&2
}

for run in $(seq 1 "$RUNS"); do
    for app in $APPS; do
        for inst in uv pip; do
            for mode in cold cache noop; do
                one "$inst" "$app" "$mode" "$run"
            done
        done
    done
done

VERSIONS="$(uv --version), $(/usr/bin/python3 --version), pip $(/usr/bin/python3 -c 'import ensurepip; print(ensurepip.version())') (ensurepip's, in each venv)"
python3 - "$RAW" "$RUNS" "$APPS" "$VERSIONS" "$JSON" <<'PY' | tee "$MD"
import statistics, sys, collections, datetime, json
raw, runs, apps, versions, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5]
d = collections.defaultdict(list)
for line in open(raw):
    inst, app, mode, s = line.split("\t")
    d[(inst, app, mode)].append(float(s))
def mmm(v): return "%.2f / %.2f / %.2f" % (min(v), statistics.median(v), max(v))
print(f"## venv creation, uv vs pip ({runs} runs, {datetime.date.today()}; min / median / max, seconds)\n")
print("| app | mode | uv | pip | pip / uv (median) |\n|---|---|---|---|---|")
secs = {"uv": {}, "pip": {}}
for app in apps + ["all apps"]:
    for mode in ("cold", "cache", "noop"):
        if app == "all apps":
            u = [sum(x) for x in zip(*(d[("uv", a, mode)] for a in apps))]
            p = [sum(x) for x in zip(*(d[("pip", a, mode)] for a in apps))]
        else:
            u, p = d[("uv", app, mode)], d[("pip", app, mode)]
        secs["uv"].setdefault(app, {})[mode], secs["pip"].setdefault(app, {})[mode] = u, p
        ratio = statistics.median(p) / statistics.median(u)
        print(f"| {app} | {mode} | {mmm(u)} | {mmm(p)} | {ratio:.1f}× |")
print(f"\n{versions}. Reproduce: `bench/venv-bench.sh {runs}` (real PyPI).")
if out:
    with open(out, "w") as f:
        json.dump({"runs": runs, "apps": apps, "versions": versions, "seconds": secs}, f, indent=1)
PY
