#!/usr/bin/env bash
# The microVM benchmarks, as ratios against references measured in the same run:
#   1. boot to the agent serving: ember's VMM vs QEMU 7.2 `-M microvm -accel kvm`, same
#      vmlinux and initramfs (scripts/bench-boot.py);
#   2. `ctr run --rm IMAGE id /bin/true` through the ember shim (microvm backend) vs the
#      runc shim (tests/benches/ctr.rs); its 1 GiB stdout throughput part only with
#      EMBER_BENCH_TP_RUNS=N (under emulation one such run took over 15 minutes);
#   3. start to the agent serving: the jailed `ember-vmm` process the runtime spawns vs
#      the VMM built in-process (vmm/benches/confined.rs --agent);
#   4. RSS per sandbox with 10 microVM sandboxes running: the shim plus its VMM process
#      (`ember-vmm`, which holds the guest memory the guest touched), vs the runc shim
#      per container.
# Needs hardware KVM; on a host without it, it runs itself in the nested KVM test host,
# where everything is emulated: the numbers there are ratios only.
#
#   scripts/bench-microvm.sh            (root; builds what it needs first)
#
# Run counts (passed into the nested host too): EMBER_BENCH_BOOT_RUNS (part 1, default 5;
# 0 skips it), EMBER_BENCH_RUNS (part 2, default 5; 0 skips it), EMBER_BENCH_TP_RUNS (part 2's 1 GiB
# stdout runs, default 0), EMBER_BENCH_RSS (part 4, default 1; 0 skips it),
# EMBER_BENCH_CONFINED_RUNS (part 3, default 5; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

if [ "${EMBER_BENCH_STAGE:-}" != inside ]; then
    cargo build -q --release -p ember-vmm -p ember-shim -p ember-agent -p ember-runtime
    cargo build -q -p ember-tests --example kvm-host --example private-containerd --example busybox-image
    ctr_bench=$(cargo bench -q -p ember-tests --bench ctr --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ctr":
        print(m["executable"])')
    confined_bench=$(cargo bench -q -p ember-vmm --bench confined --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "confined":
        print(m["executable"])')
    for f in build/guest/vmlinux build/guest/initramfs.cpio; do
        [ -f "$f" ] || { echo "bench-microvm: $f is missing: run \`make guest\`" >&2; exit 1; }
    done
    if ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -e /dev/kvm ]; then
        echo "bench-microvm: no hardware virtualization here: running in the nested KVM test host (ratios only)"
        exec "$target/debug/examples/kvm-host" run --timeout 3000 --env EMBER_BENCH_STAGE=inside \
            --env "EMBER_CTR_BENCH=$ctr_bench" --env "EMBER_CONFINED_BENCH=$confined_bench" \
            --env "EMBER_BENCH_RSS=${EMBER_BENCH_RSS:-1}" --env "EMBER_BENCH_CONFINED_RUNS=${EMBER_BENCH_CONFINED_RUNS:-5}" --env "EMBER_BENCH_BOOT_RUNS=${EMBER_BENCH_BOOT_RUNS:-5}" \
            --env "EMBER_BENCH_RUNS=${EMBER_BENCH_RUNS:-5}" --env "EMBER_BENCH_TP_RUNS=${EMBER_BENCH_TP_RUNS:-0}" \
            -- scripts/bench-microvm.sh
    fi
    export EMBER_CTR_BENCH=$ctr_bench EMBER_CONFINED_BENCH=$confined_bench
fi

guest=$(pwd)/build/guest
tmp=$(mktemp -d)
cfg=$tmp/ember.toml
printf '[sandbox]\nbackend = "microvm"\nstate_dir = "/run/ember-bench"\n[hypervisor]\nkernel = "%s"\ninitrd = "%s"\n[agent]\ndial_timeout_ms = 300000\n' \
    "$guest/vmlinux" "$guest/initramfs.cpio" >"$cfg"

if [ "${EMBER_BENCH_BOOT_RUNS:-5}" -gt 0 ]; then
    echo "== 1. boot to agent serving"
    python3 scripts/bench-boot.py --runs "${EMBER_BENCH_BOOT_RUNS:-5}"
else
    echo "== 1. boot to agent serving: skipped (EMBER_BENCH_BOOT_RUNS=0)"
fi

if [ "${EMBER_BENCH_RUNS:-5}" -gt 0 ]; then
    echo "== 2. ctr run --rm /bin/true, microvm backend vs runc shim"
    EMBER_SHIM_DIR=$(cd "$target/release" && pwd) EMBER_CONFIG=$cfg EMBER_BENCH_RUNS=${EMBER_BENCH_RUNS:-5} \
        EMBER_BENCH_TP_RUNS=${EMBER_BENCH_TP_RUNS:-0} "$EMBER_CTR_BENCH"
else
    echo "== 2. ctr run: skipped (EMBER_BENCH_RUNS=0)"
fi

if [ "${EMBER_BENCH_CONFINED_RUNS:-5}" -gt 0 ]; then
    echo "== 3. start to the agent serving: jailed ember-vmm process vs in-process VMM"
    EMBER_BENCH_GUEST=$guest EMBER_BENCH_RUNS=${EMBER_BENCH_CONFINED_RUNS:-5} "$EMBER_CONFINED_BENCH" --agent
else
    echo "== 3. jailed vs in-process VMM: skipped (EMBER_BENCH_CONFINED_RUNS=0)"
fi

if [ "${EMBER_BENCH_RSS:-1}" = 0 ]; then
    echo "== 4. RSS per sandbox: skipped (EMBER_BENCH_RSS=0)"
    rm -rf "$tmp"
    exit 0
fi
echo "== 4. RSS per sandbox with 10 sandboxes running"
export EMBER_SHIM_DIR
EMBER_SHIM_DIR=$(cd "$target/release" && pwd)
mkfifo "$tmp/ctl"
"$target/debug/examples/private-containerd" "$tmp/address" <"$tmp/ctl" >/dev/null &
server=$!
exec 3>"$tmp/ctl"
started=()
remove_started() { # kill and remove every container this part started
    local c
    for c in "${started[@]}"; do
        "${ctr[@]}" task kill -s KILL "$c" >/dev/null 2>&1 || true
    done
    sleep 2
    for c in "${started[@]}"; do
        "${ctr[@]}" task rm -f "$c" >/dev/null 2>&1 || true
        "${ctr[@]}" container rm "$c" >/dev/null 2>&1 || true
    done
    started=()
}
cleanup() {
    [ -n "${ctr+set}" ] && remove_started
    exec 3>&- 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
while [ ! -s "$tmp/address" ]; do sleep 0.2; done
ctr=(ctr --address "$(cat "$tmp/address")" --namespace bench)
"$target/debug/examples/busybox-image" "$tmp/busybox.tar" docker.io/library/busybox:ember >/dev/null
"${ctr[@]}" image import "$tmp/busybox.tar" >/dev/null
rss_of() { # sum of VmRSS (KiB) of processes whose command line starts with $1
    local total=0 p
    for p in $(pgrep -f "^$1"); do
        total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
start_one() { # $1 runtime, $2 container id
    if [ "$1" = ember ]; then
        "${ctr[@]}" run -d --runtime io.containerd.ember.v2 --runtime-config-path "$cfg" \
            docker.io/library/busybox:ember "$2" sleep 100000
    else
        "${ctr[@]}" run -d --runtime io.containerd.runc.v2 docker.io/library/busybox:ember "$2" sleep 100000
    fi
}
for rt in runc ember; do
    for i in $(seq 1 10); do
        # Emulated virtualization now and then triple-faults a guest at boot (see the
        # README's testing section): such a start gets one more try, and says so.
        if ! start_one "$rt" "$rt-$i"; then
            echo "bench-microvm: RETRY $rt-$i: it did not start; once more as $rt-$i-b"
            "${ctr[@]}" container rm "$rt-$i" >/dev/null 2>&1 || true
            start_one "$rt" "$rt-$i-b"
            started+=("$rt-$i-b")
        else
            started+=("$rt-$i")
        fi
    done
    sleep 2
    if [ "$rt" = ember ]; then
        kib=$(( $(rss_of "$EMBER_SHIM_DIR/containerd-shim-ember-v2") + $(rss_of "$EMBER_SHIM_DIR/ember-vmm") ))
    else
        kib=$(rss_of "$(command -v containerd-shim-runc-v2)")
    fi
    echo "$rt: $((kib / 10 / 1024)) MiB RSS per sandbox (ember: shims and their VMM processes, guest memory included; runc: shims)"
    eval "rss_$rt=$kib"
    remove_started
done
python3 -c "print('RSS per sandbox, ember/runc shim: %.1fx' % ($rss_ember / max($rss_runc, 1)))"
