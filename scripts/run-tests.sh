#!/usr/bin/env bash
# Run the workspace's tests and end with one totals line over every test binary
# ("summary: N passed, N failed, N skipped"), since cargo's own last line is only the
# doc-test run's. A test that cannot run here prints "SKIP <test>: <why>" and returns
# (cargo counts it as passed); those are listed again at the end and counted as skipped.
# Exits with cargo's status.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
grep -E '^SKIP ' "$log" | sort -u
awk '/^SKIP / { skipped[$0] = 1 }
     /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i-1)
            if ($(i) ~ /^failed;?$/) f += $(i-1)
            if ($(i) ~ /^ignored;?$/) s += $(i-1)
        }
     }
     END {
        n = 0; for (k in skipped) n++
        printf "summary: %d passed, %d failed, %d skipped\n", p - n, f, s + n
     }' "$log"
exit "$status"
