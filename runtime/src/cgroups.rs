//! Host cgroups of a sandbox: the parent `/ember/<sandbox>` under which the agent (process
//! backend) creates each container's cgroup, and its removal in every hierarchy (cgroup v1
//! controllers, the v2 unified tree, or both on hybrid hosts).

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
}

/// The cgroup parent of a sandbox's containers.
pub fn sandbox_parent(sandbox_id: &str) -> String {
    format!("/ember/{sandbox_id}")
}

/// Mount points of every cgroup hierarchy (v1 and v2) of this process's mount namespace.
pub fn hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = mounts
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    out.sort();
    out.dedup();
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
