//! Host cgroups of a sandbox: the parent `/ember/<sandbox>` under which the agent (process
//! backend) creates each container's cgroup, its removal in every hierarchy (cgroup v1
//! controllers, the v2 unified tree, or both on hybrid hosts), and moving a host process
//! into a container's cgroup and back ([`join`]: the OCI command line's holder process,
//! whose cgroup is where containerd's runc shim and conmon read stats and OOM events).

use std::path::{Path, PathBuf};

/// Errors removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup directory could not be removed (usually: processes still in it).
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A controller could not be enabled for a cgroup's children (cgroup v2).
    #[error("cannot enable the {controller} controller in {path}: {source}")]
    Enable {
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// The controller.
        controller: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A process could not be moved into a cgroup.
    #[error("cannot move a process into cgroup {path}: {source}")]
    Join {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The cgroup parent of a sandbox's containers.
pub fn sandbox_parent(sandbox_id: &str) -> String {
    format!("/ember/{sandbox_id}")
}

/// Mount points of every cgroup hierarchy (v1 and v2) of this process's mount namespace.
pub fn hierarchies() -> Vec<PathBuf> {
    cgroup_mounts().into_iter().map(|m| m.mount_point).collect()
}

/// The cgroup (v1 and v2) mounts of this process's mount namespace, one per mount point,
/// sorted by it.
fn cgroup_mounts() -> Vec<ember_sys::mountinfo::Mount> {
    let Ok(mounts) = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")) else {
        return Vec::new();
    };
    let mut out: Vec<_> = mounts
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out.dedup_by(|a, b| a.mount_point == b.mount_point);
    out
}

/// The directories of cgroup `path` that exist, one per hierarchy.
pub fn existing(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    hierarchies()
        .into_iter()
        .map(|h| h.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes cgroup `path` and every cgroup below it, in every hierarchy, deepest first.
/// Fails (naming the cgroup) if one still holds processes.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    for top in existing(path) {
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            remove_one(&d)?;
        }
    }
    Ok(())
}

/// The cgroup v2 controllers a sandbox's host cgroups account with.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Enables the cpu, io, memory and pids controllers (those the unified hierarchy has) for
/// the children of every ancestor of cgroup `path`, from the hierarchy's root down to its
/// parent, as runc does: a v2 cgroup has a controller's files (`memory.current`, say) and
/// is accounted by it only when its parent enables it. Nothing to do on v1 hierarchies.
/// Returns what failed.
pub fn enable_controllers(path: &str) -> Vec<CgroupError> {
    let parents: Vec<_> = Path::new(path.trim_start_matches('/'))
        .components()
        .collect();
    let Some((_, parents)) = parents.split_last() else {
        return Vec::new();
    };
    let mut failed = Vec::new();
    for m in cgroup_mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup2")
    {
        let mut dir = m.mount_point.clone();
        for part in std::iter::once(None).chain(parents.iter().map(Some)) {
            if let Some(p) = part {
                dir.push(p);
            }
            let has = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let on =
                std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            for c in V2_CONTROLLERS {
                let listed = |text: &str| text.split_whitespace().any(|w| w == c);
                if !listed(&has) || listed(&on) {
                    continue;
                }
                let file = dir.join("cgroup.subtree_control");
                if let Err(source) = std::fs::write(&file, format!("+{c}")) {
                    failed.push(CgroupError::Enable {
                        path: file,
                        controller: c,
                        source,
                    });
                }
            }
        }
    }
    failed
}

/// Where a process was before [`join`] moved it, per hierarchy, for [`Joined::leave`].
#[derive(Debug, Default)]
pub struct Joined {
    pid: u32,
    back: Vec<PathBuf>,
}

impl Joined {
    /// How many hierarchies the process was moved in.
    pub fn count(&self) -> usize {
        self.back.len()
    }

    /// Moves the process back where it was, in every hierarchy [`join`] moved it in
    /// (so that the cgroup it joined can be removed). Returns what failed.
    pub fn leave(self) -> Vec<CgroupError> {
        self.back
            .iter()
            .filter_map(|dir| write_pid(dir, self.pid).err())
            .collect()
    }
}

/// Moves process `pid` (with all its threads) into cgroup `path` in every hierarchy where
/// that cgroup exists, and returns where it was (the root of a hierarchy when its line in
/// `/proc/<pid>/cgroup` cannot be placed under the mount) with what failed.
pub fn join(path: &str, pid: u32) -> (Joined, Vec<CgroupError>) {
    let rel = path.trim_start_matches('/');
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut joined = Joined {
        pid,
        back: Vec::new(),
    };
    let mut failed = Vec::new();
    for m in cgroup_mounts() {
        let dir = m.mount_point.join(rel);
        if !dir.is_dir() {
            continue;
        }
        let was = current_dir(&m, &own).unwrap_or_else(|| m.mount_point.clone());
        match write_pid(&dir, pid) {
            Ok(()) => joined.back.push(was),
            Err(e) => failed.push(e),
        }
    }
    (joined, failed)
}

/// The directory, under mount `m` of a cgroup hierarchy, of the cgroup that
/// `/proc/<pid>/cgroup` text `own` places the process in for that hierarchy.
pub fn current_dir(m: &ember_sys::mountinfo::Mount, own: &str) -> Option<PathBuf> {
    let options: Vec<&str> = m.super_options.split(',').collect();
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = if m.fstype == "cgroup2" {
            id == "0" && controllers.is_empty()
        } else {
            !controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c))
        };
        if !ours {
            return None;
        }
        let rel = Path::new(path).strip_prefix(&m.root).ok()?;
        Some(m.mount_point.join(rel))
    })
}

fn write_pid(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Join {
        path: dir.to_path_buf(),
        source,
    })
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn remove_one(dir: &Path) -> Result<(), CgroupError> {
    // A cgroup whose last process just exited can report EBUSY for a moment.
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(CgroupError::Remove {
        path: dir.to_path_buf(),
        source: last.expect("loop ran"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_placed_in_the_hierarchy_its_controllers_name() {
        let mount = |line: &str| ember_sys::mountinfo::parse_line(line).unwrap();
        let own = "12:memory:/docker/abc\n4:cpu,cpuacct:/system.slice/x\n1:name=systemd:/init.scope\n0::/user.slice\n";
        let mem = mount("35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory");
        assert_eq!(
            current_dir(&mem, own),
            Some(PathBuf::from("/sys/fs/cgroup/memory/docker/abc"))
        );
        let cpu =
            mount("36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct");
        assert_eq!(
            current_dir(&cpu, own),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/system.slice/x"))
        );
        let sysd =
            mount("30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd");
        assert_eq!(
            current_dir(&sysd, own),
            Some(PathBuf::from("/sys/fs/cgroup/systemd/init.scope"))
        );
        let v2 = mount("29 25 0:25 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate");
        assert_eq!(
            current_dir(&v2, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice"))
        );
        // A hierarchy whose controllers the process has no line for, and a mount of a
        // subtree the process is outside of.
        let pids = mount("37 25 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids");
        assert_eq!(current_dir(&pids, own), None);
        let sub = mount("38 25 0:30 /kubepods /mnt/mem rw - cgroup cgroup rw,memory");
        assert_eq!(current_dir(&sub, own), None);
    }

    #[test]
    fn a_joined_process_is_in_the_cgroup_and_leaves_it_for_where_it_was() {
        if !ember_tests::require_root(
            "a_joined_process_is_in_the_cgroup_and_leaves_it_for_where_it_was",
            "cgroup directories",
        ) {
            return;
        }
        let path = format!("/ember-test-join-{}/c1", std::process::id());
        let made: Vec<PathBuf> = hierarchies()
            .iter()
            .map(|h| h.join(path.trim_start_matches('/')))
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .collect();
        assert!(!made.is_empty(), "no cgroup could be made");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let (joined, failed) = join(&path, pid);
        let during = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let left = joined.count();
        let failed_leave = joined.leave();
        let after = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let top = path.rsplit_once('/').unwrap().0.to_string();
        remove(&top).unwrap();
        // cpuset (v1) refuses tasks until its cpus and mems are set: that one may fail.
        assert!(left >= 1, "joined nothing; failures: {failed:?}");
        assert!(during.contains(&path), "{during}");
        assert!(failed_leave.is_empty(), "{failed_leave:?}");
        assert_eq!(after, before);
    }

    #[test]
    fn finds_a_hierarchy_and_removes_nested_cgroups() {
        if !ember_tests::require_root(
            "finds_a_hierarchy_and_removes_nested_cgroups",
            "cgroup directories",
        ) {
            return;
        }
        let hs = hierarchies();
        assert!(!hs.is_empty(), "no cgroup hierarchy found in mountinfo");
        let path = format!("/ember-test-{}", std::process::id());
        let made: Vec<PathBuf> = hs
            .iter()
            .map(|h| h.join(path.trim_start_matches('/')).join("c1/inner"))
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .collect();
        assert!(!made.is_empty());
        assert!(!existing(&path).is_empty());
        remove(&path).unwrap();
        assert!(existing(&path).is_empty());
        assert!(made.iter().all(|d| !d.exists()));
    }
}
