#!/usr/bin/env bash
# make demo: run a busybox container through containerd with ember's shim.
#
# Builds the shim and the offline busybox image (from Debian's busybox-static), starts a
# private containerd (own root, state and sockets; the same config as the tests use) whose
# PATH starts with the shim's directory, imports the image, runs
#   ctr run --rm --runtime io.containerd.ember.v2 IMAGE demo echo "hello from ember"
# in a KVM microVM, and cleans everything up. On a host without hardware virtualization
# it says so and runs the same demo inside the nested KVM test host.
#
# Environment:
#   EMBER_SHIM_DIR          directory holding containerd-shim-ember-v2 (default: target/debug,
#                           built here)
#   EMBER_CONTAINERD_SOCK   use this running containerd instead of a private one (its own
#                           PATH must then find containerd-shim-ember-v2)
#   EMBER_CONFIG            ember config file, passed as ctr --runtime-config-path (default:
#                           the microvm backend with build/guest's kernel and initramfs)
#   EMBER_DEMO_RUNTIME      runtime type to run with (default io.containerd.ember.v2;
#                           io.containerd.runc.v2 shows the demo's plumbing without ember)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo=${CARGO:-cargo}
image=docker.io/library/busybox:ember
runtime=${EMBER_DEMO_RUNTIME:-io.containerd.ember.v2}
ns=ember-demo
target=${CARGO_TARGET_DIR:-target}

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: containerd needs root; run as root (sudo make demo)" >&2
    exit 1
fi

# The demo runs a real microVM (the `microvm` backend with the guest of `make guest`).
# Without hardware virtualization here, the same demo runs inside the nested KVM test
# host (scripts/kvm-host.sh), built here first; EMBER_DEMO_STAGE=inside marks that run.
guest=$(pwd)/build/guest
stage=${EMBER_DEMO_STAGE:-}
if [ "$stage" != inside ]; then
    if [ -z "${EMBER_SHIM_DIR:-}" ] && [ "$runtime" = io.containerd.ember.v2 ]; then
        echo "demo: building containerd-shim-ember-v2, ember-vmm, ember-agent and ember"
        "$cargo" build -q --bin containerd-shim-ember-v2 --bin ember-vmm --bin ember-agent --bin ember
        EMBER_SHIM_DIR=$(cd "$target/debug" && pwd)
    fi
    "$cargo" build -q -p ember-tests --example busybox-image --example private-containerd --example kvm-host
    if [ "$runtime" = io.containerd.ember.v2 ] && [ -z "${EMBER_CONFIG:-}" ]; then
        for f in vmlinux initramfs.cpio; do
            if [ ! -f "$guest/$f" ]; then
                echo "demo: $guest/$f is missing: run \`make guest\` (make demo does)" >&2
                exit 1
            fi
        done
        if ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -e /dev/kvm ]; then
            what="no KVM"
            if [ -d /sys/module/kvm_pvm ]; then what="KVM here is PVM, without hardware virtualization"
            elif [ -e /dev/kvm ]; then what="no vmx/svm in /proc/cpuinfo"; fi
            echo "demo: no hardware virtualization on this host ($what): running the demo in the nested KVM test host (QEMU TCG emulating AMD-V; slow, about a minute)"
            exec "$target/debug/examples/kvm-host" run --timeout 900 \
                --env EMBER_DEMO_STAGE=inside --env "EMBER_SHIM_DIR=$EMBER_SHIM_DIR" \
                --env "CARGO_TARGET_DIR=$(cd "$target" && pwd)" -- scripts/demo.sh
        fi
    fi
fi
export EMBER_SHIM_DIR="${EMBER_SHIM_DIR:-}"

tmp=$(mktemp -d)
server_pid=
if [ -z "${EMBER_CONFIG:-}" ] && [ "$runtime" = io.containerd.ember.v2 ]; then
    # agent.dial_timeout_ms keeps its default (60 s), enough for the nested host too.
    printf '[sandbox]\nbackend = "microvm"\nstate_dir = "/run/ember-demo"\n[hypervisor]\nkernel = "%s"\ninitrd = "%s"\n' \
        "$guest/vmlinux" "$guest/initramfs.cpio" >"$tmp/ember.toml"
    export EMBER_CONFIG="$tmp/ember.toml"
    echo "demo: sandbox backend microvm: the container runs in its own KVM microVM"
fi
cleanup() {
    # Closing fd 3 (the private containerd's stdin) makes it stop and clean up.
    exec 3>&- 2>/dev/null || true
    if [ -n "$server_pid" ]; then wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
    rmdir /run/ember-demo/sandboxes /run/ember-demo 2>/dev/null || true
}
trap cleanup EXIT

echo "demo: building the busybox image $image"
"$target/debug/examples/busybox-image" "$tmp/busybox.tar" "$image"

if [ -n "${EMBER_CONTAINERD_SOCK:-}" ]; then
    sock=$EMBER_CONTAINERD_SOCK
    echo "demo: using the containerd at $sock"
else
    echo "demo: starting a private containerd (shims from ${EMBER_SHIM_DIR:-its PATH} first)"
    mkfifo "$tmp/ctl"
    "$target/debug/examples/private-containerd" "$tmp/address" <"$tmp/ctl" &
    server_pid=$!
    exec 3>"$tmp/ctl"
    while [ ! -s "$tmp/address" ]; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            server_pid=
            echo "demo: the private containerd failed to start (see above)" >&2
            exit 1
        fi
        sleep 0.1
    done
    sock=$(cat "$tmp/address")
fi

ctr=(ctr --address "$sock" --namespace "$ns")
"${ctr[@]}" image import "$tmp/busybox.tar" >/dev/null
extra=()
if [ -n "${EMBER_CONFIG:-}" ]; then extra=(--runtime-config-path "$EMBER_CONFIG"); fi
id="demo-$$"
echo "demo: ctr run --rm --runtime $runtime $image $id echo \"hello from ember\""
set +e
"${ctr[@]}" run --rm --runtime "$runtime" "${extra[@]}" "$image" "$id" echo "hello from ember"
status=$?
set -e
if [ -n "${EMBER_CONTAINERD_SOCK:-}" ]; then
    "${ctr[@]}" image rm "$image" >/dev/null || true
fi
if [ "$status" -ne 0 ]; then
    echo "demo: ctr run failed with status $status" >&2
fi
exit "$status"
