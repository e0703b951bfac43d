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
# The end-to-end tests start the shim and the agent binaries of the workspace (containerd
# finds the shim next to the agent in target/debug): build every binary first.
if ! cargo build --workspace --bins 2>&1 | tee "$log"; then
    echo "run-tests: building the binaries failed" >&2
    exit 1
fi
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
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
