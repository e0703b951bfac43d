#!/usr/bin/env bash
# Run the workspace's tests and end with one totals line over every test binary
# ("summary: N passed, N failed, N skipped", after a line counting the nested host's
# reruns), since cargo's own last
# line is only the doc-test run's. A test that cannot run here prints "SKIP <test>: <why>"
# and returns (cargo counts it as passed); those are listed again at the end and counted
# as skipped.
#
# Tests that need hardware virtualization live in `hw_kvm` modules. On a host without it
# they print "NESTED <test>" here and then run inside the nested KVM test host
# (tests/src/kvm_host.rs, scripts/kvm-host.sh), where they count once. When the nested
# host cannot run (no qemu, no kernel package), they print SKIP lines instead.
# Exits non-zero when any test failed, here or nested.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The end-to-end tests start the shim and the agent binaries of the workspace (containerd
# finds the shim next to the agent in target/debug): build every binary first.
if ! cargo build --workspace --bins --examples 2>&1 | tee "$log"; then
    echo "run-tests: building the binaries failed" >&2
    exit 1
fi
kvm_host="${CARGO_TARGET_DIR:-target}/debug/examples/kvm-host"
hw=no
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -e /dev/kvm ]; then hw=yes; fi
nested=no
if [ "$hw" = no ]; then
    if "$kvm_host" prepare >/dev/null 2>>"$log"; then
        nested=yes
        export EMBER_NESTED_KVM=later
    else
        grep -E '^SKIP ' "$log" | tail -1 >&2 || true
    fi
fi
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$nested" = yes ]; then
    echo "run-tests: no hardware virtualization here: running the hw_kvm tests in the nested KVM test host"
    # Every hw_kvm test under Debian 12's cgroup v2 layout; the shim tests that create,
    # stat, pause and remove sandboxes (where the shim meets the host's cgroups) also under
    # the hybrid v1 layout of the machines ember is built on. Each test binary gets its own
    # outer VM and at most 40 minutes (everything in there is emulated).
    # EMBER_TEST_DEADLINE (seconds since 1970; .ci/run sets it from CI's time limit) cuts
    # those 40 minutes down so that a hung outer VM ends as a failure with both consoles'
    # tails, inside the limit, rather than as a killed CI run that says nothing.
    deadline=()
    if [ -n "${EMBER_TEST_DEADLINE:-}" ]; then deadline=(--deadline "$EMBER_TEST_DEADLINE"); fi
    # One outer VM (2 vCPUs, all CPU-bound under TCG) per 2 host cores at once: on a
    # 2-core host one at a time (README: the nested KVM test host).
    jobs=$(( $(nproc) / 2 )); [ "$jobs" -ge 1 ] || jobs=1
    "$kvm_host" test --timeout 2400 "${deadline[@]}" --jobs "$jobs" --cgroups unified -- --workspace 2>&1 | tee -a "$log"
    s1=${PIPESTATUS[0]}
    "$kvm_host" test --timeout 2400 "${deadline[@]}" --cgroups hybrid --filter hw_kvm::exec_pause_resume_ps_and_metrics \
        -- -p ember-tests --test ember_shim 2>&1 | tee -a "$log"
    s2=${PIPESTATUS[0]}
    if [ "$s1" -ne 0 ] || [ "$s2" -ne 0 ]; then status=1; fi
fi
grep -E '^(SKIP|NESTED) ' "$log" | sort -u
awk '/^SKIP / { skipped[$0] = 1 }
     /^NESTED / { nested[$0] = 1 }
     /^RERUN / { reruns++ }
     # A nested binary that ended without a libtest result (timeout, deadline, error).
     /^nested: [^ ]+ FAILED:/ { f++ }
     /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i-1)
            if ($(i) ~ /^failed;?$/) f += $(i-1)
            if ($(i) ~ /^ignored;?$/) s += $(i-1)
        }
     }
     END {
        n = 0; for (k in skipped) n++
        m = 0; for (k in nested) m++
        printf "nested KVM test host: %d reruns after an outer VM failure, a stalled test or a failed test\n", reruns
        printf "summary: %d passed, %d failed, %d skipped\n", p - n - m, f, s + n
     }' "$log"
exit "$status"
