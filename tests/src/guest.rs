//! The guest assets `make guest` builds, as tests find them.

use std::path::{Path, PathBuf};

/// The repository root (the workspace folder holding `build/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The guest kernel: `EMBER_GUEST_KERNEL`, `build/guest/vmlinux`, or the newest one in
/// rootfs-builder's cache (`make guest` puts it in both).
pub fn kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_GUEST_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let built = workspace_root().join("build/guest/vmlinux");
    if built.is_file() {
        return Some(built);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("ember/kernel");
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// The agent's initramfs: `EMBER_GUEST_INITRD` or `build/guest/initramfs.cpio`.
pub fn initramfs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_GUEST_INITRD") {
        return Some(PathBuf::from(p));
    }
    Some(workspace_root().join("build/guest/initramfs.cpio")).filter(|p| p.is_file())
}
