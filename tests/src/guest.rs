//! The guest assets `make guest` builds, as tests find them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Points `$EMBER_VMM` (unless it is set) at the workspace's built `ember-vmm`, which the
/// runtime's microvm backend spawns: test binaries run from `target/*/deps`, where the
/// runtime's lookup next to the running executable does not find it. Panics naming the
/// command that builds it when it is not built.
pub fn use_built_vmm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("EMBER_VMM").is_some() {
            return;
        }
        let vmm = crate::containerd::workspace_binary("ember-vmm").expect(
            "ember-vmm is not built: run `cargo build -p ember-vmm` (the microvm backend spawns it)",
        );
        std::env::set_var("EMBER_VMM", vmm);
    });
}

/// How long a booting guest may print nothing on its console before the boot counts as
/// hung ([`ConsoleWatch`]).
pub const HANG_QUIET: Duration = Duration::from_secs(120);

/// Tells a hung guest from a slow one by its console: hung when the console has not grown
/// for [`HANG_QUIET`].
#[derive(Debug)]
pub struct ConsoleWatch {
    len: usize,
    since: Instant,
}

impl Default for ConsoleWatch {
    fn default() -> Self {
        Self {
            len: 0,
            since: Instant::now(),
        }
    }
}

impl ConsoleWatch {
    /// Notes the console's length now; returns whether it has not grown for
    /// [`HANG_QUIET`].
    pub fn hung(&mut self, len: usize) -> bool {
        if len != self.len {
            self.len = len;
            self.since = Instant::now();
        }
        self.since.elapsed() > HANG_QUIET
    }
}

/// Runs `boot` (one guest boot of a test; `Err` carries the console's last lines when the
/// guest hung, see [`ConsoleWatch`]) and, on a host without hardware virtualization, runs
/// it once more after a hang, saying so on stderr.
///
/// Why: on PVM hosts, guests of ember's kernel, QEMU's and ember's VMM alike, sometimes
/// stop for good early in boot when the host is loaded (a CI run saw one stop after
/// "smp: Brought up 1 node" and print nothing for 380 s, under QEMU). That is the host's,
/// not what the boot tests check. With hardware virtualization a hang is the test's
/// failure.
pub fn retry_a_pvm_hang<T>(
    test: &str,
    mut boot: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    match boot() {
        Err(tail) if retry_after_hang(test, &tail) => boot(),
        r => r,
    }
}

/// Whether a test whose guest hung (its console ends with `tail`) may boot it once more:
/// on a host without hardware virtualization, saying so on stderr
/// ([`retry_a_pvm_hang`] has why).
pub fn retry_after_hang(test: &str, tail: &str) -> bool {
    if crate::kvm_host::hardware_kvm() {
        return false;
    }
    eprintln!(
        "RETRY {test}: the guest printed nothing for {HANG_QUIET:?} (a PVM host hang) after:\n{tail}\nbooting it once more"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_that_grows_is_not_hung() {
        let mut w = ConsoleWatch::default();
        assert!(!w.hung(0));
        w.since -= HANG_QUIET + Duration::from_secs(1);
        assert!(!w.hung(10), "it grew");
        assert!(!w.hung(10), "quiet for less than HANG_QUIET");
        w.since -= HANG_QUIET + Duration::from_secs(1);
        assert!(w.hung(10));
    }
}
