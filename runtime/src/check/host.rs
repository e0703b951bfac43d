//! What the host is, read from `/proc`, `/sys` and `/dev` under a root path, so tests can
//! point it at fixture trees instead of the real host. Virtualization detection is the
//! VMM's own ([`Virtualization::detect`]), so `ember check` and `cpu_profile = "auto"`
//! always agree.

use ember_vmm::Virtualization;
use serde::Serialize;
use std::fs;
use std::path::PathBuf;

/// How cgroups are mounted on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupMode {
    /// Only cgroup2, at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers, plus cgroup2 somewhere else (e.g. /sys/fs/cgroup/unified).
    Hybrid,
    /// cgroup v1 only.
    Legacy,
    /// No cgroup filesystem mounted.
    None,
}

/// Access to `/dev/kvm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmDevice {
    /// It opens read-write.
    Usable,
    /// It exists but this user cannot open it read-write.
    NoAccess(String),
    /// It does not exist.
    Missing,
}

/// A view of one host through a root path (`/` for the real host).
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// The host seen through `root`: `/` is the real host, a folder is a fixture tree.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The path of host path `p` (absolute) under the root.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.path(p)).ok()
    }

    /// The virtualization the host offers.
    pub fn virtualization(&self) -> Virtualization {
        Virtualization::detect(&self.root)
    }

    /// Path of the KVM device under the root.
    pub fn kvm_path(&self) -> PathBuf {
        self.path("/dev/kvm")
    }

    /// Whether `/dev/kvm` exists and opens read-write.
    pub fn kvm_device(&self) -> KvmDevice {
        let path = self.kvm_path();
        if !path.exists() {
            return KvmDevice::Missing;
        }
        match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(_) => KvmDevice::Usable,
            Err(e) => KvmDevice::NoAccess(e.to_string()),
        }
    }

    /// Whether `/dev/net/tun` exists.
    pub fn has_tun(&self) -> bool {
        self.path("/dev/net/tun").exists()
    }

    /// How cgroups are mounted, from `/proc/self/mountinfo` (or `/proc/mounts`).
    pub fn cgroup_mode(&self) -> CgroupMode {
        let mounts = match self.read("/proc/self/mountinfo") {
            Some(m) => mountinfo_targets(&m),
            None => proc_mounts_targets(&self.read("/proc/mounts").unwrap_or_default()),
        };
        let (v1, v2_root, v2_elsewhere) = cgroup_mounts(&mounts);
        match (v1, v2_root, v2_elsewhere) {
            (_, true, _) => CgroupMode::Unified,
            (true, false, true) => CgroupMode::Hybrid,
            (true, false, false) => CgroupMode::Legacy,
            (false, false, true) => CgroupMode::Hybrid,
            (false, false, false) => CgroupMode::None,
        }
    }

    /// The effective uid of this process (from `/proc/self/status`).
    pub fn effective_uid(&self) -> Option<u32> {
        let status = self.read("/proc/self/status")?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    }
}

/// (mount point, filesystem type) of each mount in a mountinfo text.
fn mountinfo_targets(mountinfo: &str) -> Vec<(String, String)> {
    ember_sys::mountinfo::parse(mountinfo)
        .into_iter()
        .map(|m| (m.mount_point.to_string_lossy().into_owned(), m.fstype))
        .collect()
}

/// (mount point, filesystem type) of each line of a `/proc/mounts` text
/// (`source target fstype ...`).
fn proc_mounts_targets(mounts: &str) -> Vec<(String, String)> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.to_string(), f.get(2)?.to_string()))
        })
        .collect()
}

/// (any v1 controller, cgroup2 at /sys/fs/cgroup, cgroup2 elsewhere).
fn cgroup_mounts(mounts: &[(String, String)]) -> (bool, bool, bool) {
    let mut out = (false, false, false);
    for (target, fstype) in mounts {
        match fstype.as_str() {
            "cgroup" => out.0 = true,
            "cgroup2" if target == "/sys/fs/cgroup" => out.1 = true,
            "cgroup2" => out.2 = true,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_into_cgroup_mode() {
        let mi = "30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                  31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n\
                  32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup_mounts(&mountinfo_targets(mi)), (true, false, true));
        let unified = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_mounts(&mountinfo_targets(unified)),
            (false, true, false)
        );
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(
            cgroup_mounts(&proc_mounts_targets(mounts)),
            (false, true, false)
        );
    }
}
