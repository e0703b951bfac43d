//! Host mounts a sandbox makes: binds into its shared directory, containerd's rootfs mounts,
//! and their safe removal (nothing is ever deleted through a mount that is still attached).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("cannot mount {source_desc} on {target} (type {fstype}): {errno}")]
    Mount {
        /// What was mounted.
        source_desc: String,
        /// Where.
        target: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// Why.
        errno: nix::Error,
    },
    /// umount2(2) failed.
    #[error("cannot unmount {target}: {errno}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        errno: nix::Error,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A directory still had mounts under it after unmounting.
    #[error("{0}: still has mounts below it; not removing it")]
    StillMounted(PathBuf),
}

/// One mount as containerd describes a container rootfs (`type`, `source`, `options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub fstype: String,
    /// Source (device, directory or `overlay`).
    pub source: String,
    /// mount(8)-style options.
    pub options: Vec<String>,
}

/// Mount points currently at or below `path` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Detaches every mount at or below `path`, deepest first. Nothing mounted is fine.
pub fn unmount_tree(path: &Path) -> Result<(), MountError> {
    for m in mounts_under(path) {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(errno) => return Err(MountError::Unmount { target: m, errno }),
        }
    }
    Ok(())
}

/// Removes a directory tree, but only after detaching every mount below it, so a bind
/// mount of user data is never deleted through. A missing directory is fine.
pub fn remove_dir_safely(path: &Path) -> Result<(), MountError> {
    unmount_tree(path)?;
    if !mounts_under(path).is_empty() {
        return Err(MountError::StillMounted(path.to_path_buf()));
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(MountError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Bind-mounts `source` on `target` (creating `target` as a file or directory like the
/// source), read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MountError::Io { path: p, source }
    };
    let meta = std::fs::metadata(source).map_err(io(source))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(io(target))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if !target.exists() {
            std::fs::write(target, b"").map_err(io(target))?;
        }
    }
    let err = |errno| MountError::Mount {
        source_desc: source.display().to_string(),
        target: target.to_path_buf(),
        fstype: "bind".into(),
        errno,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    if read_only {
        remount_read_only(&source.display().to_string(), target)?;
    }
    Ok(())
}

/// Makes the bind mount at `target` read-only: a bind mount ignores MS_RDONLY until it is
/// remounted.
fn remount_read_only(source_desc: &str, target: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        source_desc: source_desc.to_string(),
        target: target.to_path_buf(),
        fstype: "bind (read-only remount)".into(),
        errno,
    })
}

/// Makes `dir` a mount point of its own with shared propagation, so that mounts made
/// below it later also appear in namespaces that were copied from this one as slaves
/// (the `process` backend's agent).
pub fn make_shared_mount_point(dir: &Path) -> Result<(), MountError> {
    bind(dir, dir, false)?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        source_desc: "(propagation)".into(),
        target: dir.to_path_buf(),
        fstype: "shared".into(),
        errno,
    })
}

/// Splits mount(8)-style options into flags and the data string (the protocol crate's
/// [`ember_agent_protocol::mount_options::split`], which the agent's storages use too).
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let (flags, data) = ember_agent_protocol::mount_options::split(options);
    (MsFlags::from_bits_truncate(flags), data)
}

/// Mounts containerd's rootfs mounts on `target` in order (the usual case is one overlay or
/// one bind mount). Fails naming the mount that failed.
pub fn mount_all(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    for m in mounts {
        let (mut flags, data) = parse_options(&m.options);
        let fstype = if m.fstype == "bind" {
            flags |= MsFlags::MS_BIND;
            None
        } else {
            Some(m.fstype.as_str())
        };
        let ro = flags.contains(MsFlags::MS_RDONLY) && flags.contains(MsFlags::MS_BIND);
        mount(
            Some(m.source.as_str()),
            target,
            fstype,
            if ro {
                flags - MsFlags::MS_RDONLY
            } else {
                flags
            },
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|errno| MountError::Mount {
            source_desc: m.source.clone(),
            target: target.to_path_buf(),
            fstype: m.fstype.clone(),
            errno,
        })?;
        if ro {
            remount_read_only(&m.source, target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }

    #[test]
    fn bind_and_safe_removal() {
        if !nix::unistd::geteuid().is_root() {
            ember_tests::skip("bind_and_safe_removal", "needs root to mount");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), b"x").unwrap();
        let state = tmp.path().join("state");
        let target = state.join("shared/c1/rootfs");
        bind(&data, &target, true).unwrap();
        assert!(is_mount_point(&target));
        assert!(
            std::fs::write(target.join("new"), b"y").is_err(),
            "read-only bind"
        );
        remove_dir_safely(&state).unwrap();
        assert!(!state.exists());
        assert!(
            data.join("precious").exists(),
            "removal must never delete through a bind mount"
        );
    }
}
