#!/usr/bin/env bash
# Install what building and testing ember needs, idempotently: Debian packages (apt) and
# the Rust components (rustup). Safe to run again; it only installs what is missing.
set -euo pipefail

# Debian packages, with what each is for.
packages=(
    build-essential pkg-config   # C toolchain for -sys crates
    containerd runc crun         # containerd runtime tests and the runc/crun baselines
    qemu-system-x86              # QEMU microvm: boot checks and the VMM benchmark reference
    busybox-static               # the offline busybox image and bundles of the tests
    linux-source-6.1             # the guest kernel source
    bc bison flex libelf-dev libssl-dev cpio xz-utils  # guest kernel build
    e2fsprogs                    # mkfs.ext4 -d for guest and test disk images
    libseccomp-dev               # seccomp in the agent (libcontainer)
    protobuf-compiler            # CRI test client
    iproute2 util-linux          # netns/tap tests, unshare for the crun baseline
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    echo "install-deps: all Debian packages present"
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        echo "install-deps: adding rustup component $c"
        rustup component add "$c"
    fi
done
