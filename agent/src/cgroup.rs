//! Reading and changing a container's cgroup: stats, pids, resource updates and the OOM-kill
//! counter, for cgroup v1, hybrid and v2 hosts (through libcgroups).

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ember_agent_protocol::agent::{
    CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use libcgroups::v1::ControllerType;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
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

/// The v1 controllers whose hierarchies libcgroups' v1 manager uses (its `CONTROLLERS`).
const V1_CONTROLLERS: [ControllerType; 12] = [
    ControllerType::Cpu,
    ControllerType::CpuAcct,
    ControllerType::CpuSet,
    ControllerType::Devices,
    ControllerType::HugeTlb,
    ControllerType::Memory,
    ControllerType::Pids,
    ControllerType::PerfEvent,
    ControllerType::Blkio,
    ControllerType::NetworkPriority,
    ControllerType::NetworkClassifier,
    ControllerType::Freezer,
];

/// How often an rmdir of a busy v1 cgroup is tried (as libcgroups does).
const RMDIR_ATTEMPTS: u32 = 4;

/// The mount points of the v1 hierarchies libcgroups would use, found once per agent (with
/// libcgroups' own lookup); `None` on a unified (v2-only) host.
fn v1_mount_points() -> Option<&'static [PathBuf]> {
    static MOUNTS: OnceLock<Option<Vec<PathBuf>>> = OnceLock::new();
    MOUNTS
        .get_or_init(|| match get_cgroup_setup() {
            Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {
                let mut v: Vec<PathBuf> = Vec::new();
                for c in &V1_CONTROLLERS {
                    if let Ok(m) = libcgroups::v1::util::get_subsystem_mount_point(c) {
                        if !v.contains(&m) {
                            v.push(m);
                        }
                    }
                }
                Some(v)
            }
            _ => None,
        })
        .as_deref()
}

/// Removes the cgroup at `path` from every v1 hierarchy the way libcgroups' v1 manager
/// does (SIGKILL whatever is still in it, then rmdir, retried while busy), but with the
/// hierarchies' mount points looked up once per agent instead of by re-reading
/// /proc/self/mountinfo for each controller on every removal. Returns `Ok(false)`, having
/// done nothing, on a unified (v2) host or for a path it does not handle (relative, or
/// with `..`); the caller then lets libcgroups remove the cgroup.
pub fn remove_v1(path: &Path) -> Result<bool, CgroupError> {
    let Some(mounts) = v1_mount_points() else {
        return Ok(false);
    };
    let Ok(rel) = path.strip_prefix("/") else {
        return Ok(false);
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Ok(false);
    }
    for m in mounts {
        let dir = m.join(rel);
        if !dir.exists() {
            continue;
        }
        let procs = dir.join("cgroup.procs");
        if let Ok(text) = std::fs::read_to_string(&procs) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let mut delay = Duration::from_millis(10);
        let mut attempt = 0;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt + 1 >= RMDIR_ATTEMPTS => {
                    return Err(CgroupError::Cgroup {
                        path: dir,
                        message: format!("cannot remove the cgroup: {e}"),
                    })
                }
                Err(_) => {
                    std::thread::sleep(delay);
                    attempt += 1;
                    delay = (delay * attempt).min(Duration::from_millis(100));
                }
            }
        }
    }
    Ok(true)
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
