//! Helpers shared by the integration tests: locating the workspace, the built kernel
//! and the agent, and reporting skips loudly.

#![allow(dead_code)]

use ember_rootfs_builder::kernel::{self, KernelArtifacts, KernelInputs};
use ember_rootfs_builder::{agent, cache};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Environment variable naming a directory with `vmlinux`, `vmlinux.config` and
/// `kernel-manifest.json` (e.g. `build/guest`), used instead of the cache.
pub const GUEST_DIR_ENV: &str = "EMBER_GUEST_DIR";

pub use ember_tests::skip;

/// The workspace root.
pub fn workspace() -> PathBuf {
    ember_rootfs_builder::default_workspace()
}

/// The built kernel: `$EMBER_GUEST_DIR` if set, else the cache entry for the current
/// fragment and patches. `Err` says what is missing.
pub fn kernel() -> Result<KernelArtifacts, String> {
    if let Some(dir) = std::env::var_os(GUEST_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return KernelArtifacts::open(&dir).ok_or_else(|| {
            format!(
                "{GUEST_DIR_ENV}={} does not hold vmlinux, vmlinux.config and kernel-manifest.json",
                dir.display()
            )
        });
    }
    let inputs = KernelInputs::discover(&workspace(), None).map_err(|e| e.to_string())?;
    let root = cache::default_root().map_err(|e| e.to_string())?;
    kernel::cached(&inputs, &root).ok_or_else(|| {
        format!(
            "no built kernel in {} for the current fragment and patches; run \
             `cargo run --release -p ember-rootfs-builder -- kernel --out build/guest` \
             (or set {GUEST_DIR_ENV})",
            inputs.cache_dir(&root).display()
        )
    })
}

/// Builds the agent once per test binary and returns its path.
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| agent::build(&workspace()).expect("cargo build --release -p ember-agent"))
        .clone()
}

/// Runs the builder binary with `args`.
pub fn builder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember-rootfs-builder"))
        .args(args)
        .output()
        .expect("run ember-rootfs-builder")
}

/// Runs the builder and panics with its stderr unless it succeeds.
pub fn builder_ok(args: &[&str]) -> String {
    let out = builder(args);
    assert!(
        out.status.success(),
        "ember-rootfs-builder {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    ember_rootfs_builder::tools::find(program).is_some()
}

/// Path as &str for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
