#!/usr/bin/env bash
# The nested KVM test host (tests/src/kvm_host.rs) on the command line: a Debian kernel
# with kvm_amd booted under QEMU's TCG (which emulates AMD-V), sharing this host's root
# read-only under a tmpfs overlay. Everything inside is emulated: slow, and its timings
# mean nothing; it exists so the microVM path is tested on hosts without hardware
# virtualization.
#
#   scripts/kvm-host.sh prepare                 prepare (or find) the cached assets
#   scripts/kvm-host.sh run [OPTS] -- CMD...    run CMD inside (as root), exit with its status
#   scripts/kvm-host.sh test [OPTS] [-- ARGS]   run the workspace's hw_kvm:: tests inside
#
# `run` options: --timeout SECS, --memory-mib N, --cpus N, --cgroups unified|hybrid,
# --cwd DIR, --env K=V, --console FILE. See tests/examples/kvm-host.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p ember-tests --example kvm-host
exec "${CARGO_TARGET_DIR:-target}/debug/examples/kvm-host" "$@"
