//! Reading and changing a container's cgroup: stats, pids, resource updates and the OOM-kill
//! counter, for cgroup v1, hybrid and v2 hosts (through libcgroups).

use std::path::{Path, PathBuf};

use ember_agent_protocol::agent::{
    CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use oci_spec::runtime::LinuxResources;

/// Where cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors reading or changing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// libcgroups failed; the message names the cgroup.
    #[error("cgroup {path}: {message}")]
    Cgroup {
        /// The container's cgroup path.
        path: PathBuf,
        /// libcgroups' error chain.
        message: String,
    },
}

fn manager(id: &str, path: &Path) -> Result<AnyCgroupManager, CgroupError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| CgroupError::Cgroup {
        path: path.to_path_buf(),
        message: crate::spawn::error_chain(&e),
    })
}

fn err(path: &Path, e: &dyn std::error::Error) -> CgroupError {
    CgroupError::Cgroup {
        path: path.to_path_buf(),
        message: crate::spawn::error_chain(e),
    }
}

/// Resource usage of the cgroup at `path`.
pub fn stats(id: &str, path: &Path) -> Result<StatsContainerResponse, CgroupError> {
    let s = manager(id, path)?.stats().map_err(|e| err(path, &e))?;
    let mut r = StatsContainerResponse::new();
    let mut cpu = CpuStats::new();
    cpu.usage_total_ns = s.cpu.usage.usage_total;
    cpu.usage_user_ns = s.cpu.usage.usage_user;
    cpu.usage_kernel_ns = s.cpu.usage.usage_kernel;
    cpu.throttled_periods = s.cpu.throttling.throttled_periods;
    cpu.throttled_time_ns = s.cpu.throttling.throttled_time;
    r.cpu = Some(cpu).into();
    let mut mem = MemoryStats::new();
    mem.usage_bytes = s.memory.memory.usage;
    mem.max_usage_bytes = s.memory.memory.max_usage;
    mem.limit_bytes = s.memory.memory.limit;
    mem.failcnt = s.memory.memory.fail_count;
    mem.cache_bytes = s.memory.cache;
    r.memory = Some(mem).into();
    let mut pids = PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    r.pids = Some(pids).into();
    let mut io = IoStats::new();
    for d in &s.blkio.service_bytes {
        match d.op_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => io.read_bytes += d.value,
            Some("write") => io.write_bytes += d.value,
            _ => {}
        }
    }
    for d in &s.blkio.serviced {
        match d.op_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => io.read_ops += d.value,
            Some("write") => io.write_ops += d.value,
            _ => {}
        }
    }
    r.io = Some(io).into();
    Ok(r)
}

/// Every pid in the cgroup at `path`.
pub fn pids(id: &str, path: &Path) -> Result<Vec<i32>, CgroupError> {
    let pids = manager(id, path)?
        .get_all_pids()
        .map_err(|e| err(path, &e))?;
    Ok(pids.into_iter().map(|p| p.as_raw()).collect())
}

/// Applies new resource limits.
pub fn update(id: &str, path: &Path, resources: &LinuxResources) -> Result<(), CgroupError> {
    manager(id, path)?
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| err(path, &e))
}

/// The file that counts OOM kills of the cgroup at `path`, and whether it is v2's
/// `memory.events` (else v1's `memory.oom_control`).
pub fn oom_counter_file(path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    match get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => Path::new(CGROUP_ROOT).join(rel).join("memory.events"),
        _ => Path::new(CGROUP_ROOT)
            .join("memory")
            .join(rel)
            .join("memory.oom_control"),
    }
}

/// Reads the `oom_kill` counter from a `memory.events` or `memory.oom_control` file;
/// `None` when the file is gone (cgroup removed) or has no such line.
pub fn read_oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_counters() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(read_oom_kills(&f), Some(2));
        std::fs::write(&f, "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(read_oom_kills(&f), Some(1));
        assert_eq!(read_oom_kills(&d.path().join("gone")), None);
    }
}
