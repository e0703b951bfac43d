#!/usr/bin/env bash
# Installs ember from a build: its binaries into $DESTDIR$PREFIX/bin, the guest assets
# into $DESTDIR/usr/share/ember, and the default config into $DESTDIR/etc/ember/config.toml
# unless one is there already (an admin's config is never overwritten). This is the body
# of `make install`, which builds everything first; the installed-defaults test
# (tests/tests/installed.rs) runs it on the test build inside the nested KVM test host.
#
#   scripts/install.sh [BUILD_DIR [GUEST_DIR]]
#
# BUILD_DIR holds the binaries (default: ${CARGO_TARGET_DIR:-target}/release); GUEST_DIR
# the guest kernel and images (default: build/guest, made by `make guest`).
# PREFIX (default /usr/local) and DESTDIR as in make; STRIP=1 strips the binaries as they
# are installed (release builds are stripped already; a debug build is 700 MB otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-${CARGO_TARGET_DIR:-target}/release}
guest=${2:-build/guest}
prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}

bins=(ember ember-oci ember-vmm ember-agent containerd-shim-ember-v2)
assets=(vmlinux initramfs.cpio rootfs.ext4)
missing=0
for b in "${bins[@]}"; do
    [ -x "$build/$b" ] || { echo "install: $build/$b is not built (make build)" >&2; missing=1; }
done
for a in "${assets[@]}"; do
    [ -f "$guest/$a" ] || { echo "install: $guest/$a is not built (make guest)" >&2; missing=1; }
done
[ "$missing" = 0 ] || exit 1

strip=()
if [ "${STRIP:-}" = 1 ]; then strip=(--strip); fi
for b in "${bins[@]}"; do
    install -D -m 0755 "${strip[@]}" "$build/$b" "$dest$prefix/bin/$b"
done
for a in "${assets[@]}"; do
    install -D -m 0644 "$guest/$a" "$dest/usr/share/ember/$a"
done
install -D -m 0644 config/ember.toml.example "$dest/usr/share/ember/config.toml.example"
if [ ! -e "$dest/etc/ember/config.toml" ]; then
    install -D -m 0644 config/ember.toml.example "$dest/etc/ember/config.toml"
fi
sed "s|/usr/local/bin|$prefix/bin|g" scripts/install-notes.txt
