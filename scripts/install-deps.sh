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
    bc bison flex perl patch libelf-dev libssl-dev cpio xz-utils  # guest kernel build
    e2fsprogs                    # mkfs.ext4 -d for guest and test disk images
    libseccomp-dev               # seccomp in the agent (libcontainer)
    protobuf-compiler            # protoc for prost/tonic builds
    python3 python3-venv         # the CRI test client (a venv, see below)
    iproute2 util-linux          # netns/tap tests, unshare for the crun baseline
    kmod                         # depmod/modprobe -d for the nested KVM test host's modules
    docker.io podman             # ember-oci's end-to-end tests under Docker 20.10 and Podman 4.3
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

# The nested KVM test host's kernel (tests/src/kvm_host.rs): the package that
# linux-image-amd64 depends on, downloaded (not installed) into the cache, where
# `kvm-host prepare` unpacks it. Keyed by package and version: a new kernel upload is
# fetched once, an old one stays until removed.
kvm_debs="${XDG_CACHE_HOME:-$HOME/.cache}/ember/kvm-host/debs"
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-.*-amd64/ { print $2; exit }'; }
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
    as_root apt-get update -q
    pkg=$(kernel_pkg)
fi
if [ -z "$pkg" ]; then
    echo "install-deps: apt knows no linux-image-amd64: the nested KVM test host will be skipped" >&2
else
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2; exit }')
    deb="$kvm_debs/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ -f "$deb" ]; then
        echo "install-deps: nested KVM host kernel $pkg $ver present"
    else
        echo "install-deps: downloading $pkg $ver for the nested KVM test host"
        mkdir -p "$kvm_debs"
        dl=$(mktemp -d "$kvm_debs/.dl-XXXXXX")
        chmod 0777 "$dl" # apt-get download runs as the _apt user
        if (cd "$dl" && apt-get download -q "$pkg=$ver" >/dev/null); then
            mv "$dl"/*.deb "$deb"
        else
            echo "install-deps: apt-get download $pkg=$ver failed: the nested KVM test host will be skipped" >&2
        fi
        rm -rf "$dl"
    fi
fi

# The CRI test client (ember_tests::cri): a Python venv outside the repository with the
# PyPI package container-runtime-interface-api (pre-generated CRI v1 gRPC stubs, grpcio,
# protobuf). Tests that need it skip with a message when it is missing.
cri_venv="${XDG_CACHE_HOME:-$HOME/.cache}/ember/cri-venv"
cri_pkg="container-runtime-interface-api==2.0.1"
if "$cri_venv/bin/python" -c 'import grpc, cri_api.v1.api_pb2_grpc' 2>/dev/null; then
    echo "install-deps: CRI client present in $cri_venv"
else
    echo "install-deps: installing the CRI client ($cri_pkg) into $cri_venv"
    mkdir -p "$(dirname "$cri_venv")"
    python3 -m venv "$cri_venv"
    "$cri_venv/bin/pip" install -q "$cri_pkg"
fi
