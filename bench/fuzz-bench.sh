#!/usr/bin/env bash
# Long versions of the hardening checks (issue #17 items 1, 6-9):
#   bench/fuzz-bench.sh [CASES] [RUNS]      (defaults 5000 cases, 3 runs)
# 1. The config fuzzer (src/config.rs `fuzz`): CASES mutated shipped tables per run through the
#    full parse + validation; any panic, hang (> 5 s) or unplaced/untruncated error fails it.
#    Prints the wall time per run (min / median / max) and the cases per second.
# 2. The hardening tests against the real binary (blocked stdout, secrets in every output,
#    HTTP abuse with 40 stalled followers and an idle flood, corrupt cache record, squatted socket).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-5000}
runs=${2:-3}
cargo build --release --quiet --bins --tests
times=()
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    PROPTEST_CASES=$cases cargo test --release --quiet --bin dmp-contained config::fuzz::mutated >/dev/null
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v c="$cases" -v r="$runs" '
    { t[NR] = $1 }
    END { med = t[int((NR + 1) / 2)];
          printf "config fuzz: %d runs x %d cases, 0 failures; wall s min / median / max: %.2f / %.2f / %.2f (%.0f cases/s)\n",
                 r, c, t[1], med, t[NR], c / med }'
cargo test --release --quiet --test section_hardening -- --nocapture 2>&1 | grep -E "RSS|test result"
