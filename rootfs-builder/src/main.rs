//! `ember-rootfs-builder`: builds the guest assets of an ember microVM.
//!
//! It owns the guest kernel (Debian's `linux-source` package, ember's config fragment
//! and patches) and the guest image whose `/init` is `ember-agent` (initramfs or ext4).

fn main() {
    eprintln!("ember-rootfs-builder: not built yet (see the guest assets issue)");
    std::process::exit(1);
}
