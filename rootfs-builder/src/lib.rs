//! `ember-rootfs-builder`: builds the guest assets of an ember microVM.
//!
//! It owns the guest kernel (Debian's `linux-source` package, ember's config fragment
//! and patches, cached by their hashes) and the guest image whose `/init` is
//! `ember-agent` (a newc initramfs or an ext4 image), both reproducible.

pub mod agent;
pub mod cache;
pub mod cpio;
pub mod ext4;
pub mod hashing;
pub mod image;
pub mod kconfig;
pub mod kernel;
pub mod libs;
pub mod progress;
pub mod tools;
pub mod tree;

use std::path::PathBuf;

/// The workspace root this binary was built from (holds `rootfs-builder/kernel/`).
pub fn default_workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
