//! The network namespace a microVM container's holder makes on the host when the spec
//! asks for a new one without a path, as Docker 20.10's bridge network does.
//!
//! Docker creates such a container with a `network` namespace without a path and a
//! `prestart` hook (`libnetwork-setkey`) that reads the OCI state on stdin and enters
//! `/proc/<pid>/ns/net` of its `pid`: that is where libnetwork moves its veth end and gives
//! it the container's address and default route (it bind-mounts that namespace under its
//! own exec root, and uses only its own mount afterwards). A process-backend container has
//! that namespace on the host already (its init's). A microVM has none, so its holder makes
//! one before the sandbox starts ([`HeldNetns::create`]):
//!
//! - a **keeper** process is cloned straight into a new network namespace
//!   (`CLONE_NEWNET`, so it is never seen in the host's: no race with the hooks) and
//!   pauses; its pid is the `pid` of the state the hooks get, and it is killed and reaped
//!   once they ran (it also dies with the holder, `PR_SET_PDEATHSIG`);
//! - the namespace is **held** by a bind mount of the keeper's `/proc/<pid>/ns/net` on
//!   [`NETNS_FILE`] in the container's directory under `--root` (a path only ember-oci
//!   writes, never the guest), which the sandbox is started with: the pod-network code
//!   connects whatever interface the hooks put there to the VM through a tap, as for a
//!   CNI-made pod namespace, and records the tap by that path, so that `delete --force`
//!   after a killed holder still finds and removes it.
//!
//! [`remove_at`] (the holder after its sandbox is gone, and every removal of the container's
//! directory, so `delete` after a crash too) unmounts and removes the file. The namespace
//! itself then ends when its last user does (Docker's own mount of it goes when Docker
//! removes the container's network).

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::network::NetworkError;

/// The bind-mounted namespace file in a container's directory under `--root`.
pub const NETNS_FILE: &str = "netns";

/// The keeper's stack: it runs three system calls and a pause loop.
const KEEPER_STACK: usize = 64 * 1024;

/// How many mounts [`remove_at`] takes off one file at most (one is ember's; more would be
/// someone else's stacked on it, which are taken off too before the file goes).
const MAX_UNMOUNTS: usize = 8;

/// A container network namespace that could not be made, inspected or removed; each
/// message names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum HeldNetnsError {
    /// The keeper could not be cloned into a new network namespace.
    #[error("container network namespace: cannot clone a process into a new network namespace (CLONE_NEWNET, needs CAP_SYS_ADMIN): {0}")]
    Clone(Errno),
    /// The namespace file could not be created.
    #[error("container network namespace: cannot create {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The keeper's namespace could not be bind-mounted on the file.
    #[error("container network namespace: cannot bind-mount {from} on {path}: {source}")]
    Mount {
        /// The keeper's namespace (`/proc/<pid>/ns/net`).
        from: PathBuf,
        /// The file.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// Its interfaces could not be listed.
    #[error("container network namespace {path}: cannot list its interfaces: {source}")]
    Inspect {
        /// The file.
        path: PathBuf,
        /// Why.
        source: NetworkError,
    },
    /// The file could not be unmounted.
    #[error("container network namespace {path}: cannot unmount it: {source}")]
    Unmount {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
    /// The file could not be removed.
    #[error("container network namespace {path}: cannot remove it: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Whether a spec asks for a new network namespace: a `network` entry in
/// `linux.namespaces` without a path (Docker's bridge and `none` networks, `ctr run`).
pub fn spec_wants_new(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(serde_json::Value::as_str) == Some("network")
                    && n.get("path")
                        .and_then(serde_json::Value::as_str)
                        .is_none_or(str::is_empty)
            })
        })
}

/// The process that is in the new namespace while the hooks run.
#[derive(Debug)]
struct Keeper {
    pid: Pid,
}

impl Keeper {
    /// Clones the keeper into a new network namespace.
    ///
    /// Must be called on a thread that outlives the keeper's use (its death signal fires
    /// when the thread that cloned it exits): the holder's main thread.
    fn spawn() -> Result<Keeper, HeldNetnsError> {
        let parent = nix::unistd::getpid();
        let mut stack = vec![0u8; KEEPER_STACK];
        let cb = Box::new(move || -> isize {
            // Only system calls from here on (async-signal-safe: the holder may run
            // threads). The keeper keeps none of the holder's fds (the container's stdio
            // pipes, which the caller reads to their end).
            // SAFETY: plain system calls with integer arguments.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(0);
                }
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                loop {
                    libc::pause();
                }
            }
        });
        // SAFETY: without CLONE_VM the child gets a copy of this address space and runs
        // only the callback above, which makes system calls and never returns.
        let pid = unsafe {
            nix::sched::clone(
                cb,
                &mut stack,
                CloneFlags::CLONE_NEWNET,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(HeldNetnsError::Clone)?;
        Ok(Keeper { pid })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Our own child, not reaped yet: its pid cannot have been reused.
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// A new network namespace held by a bind mount on [`NETNS_FILE`] in a container's
/// directory. Dropping it kills its keeper and removes the mount and the file (best
/// effort; [`HeldNetns::remove`] reports errors).
#[derive(Debug)]
pub struct HeldNetns {
    path: PathBuf,
    keeper: Option<Keeper>,
}

impl HeldNetns {
    /// Makes a new network namespace held on `<dir>/netns`, with a keeper process in it
    /// (see the module docs). Leaves nothing behind when it fails. Call it on the holder's
    /// main thread.
    pub fn create(dir: &Path) -> Result<HeldNetns, HeldNetnsError> {
        let path = dir.join(NETNS_FILE);
        let keeper = Keeper::spawn()?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| HeldNetnsError::File {
                path: path.clone(),
                source,
            })?;
        // From here on, dropping `held` removes the file (and the mount once made).
        let held = HeldNetns {
            path,
            keeper: Some(keeper),
        };
        let from = PathBuf::from(format!("/proc/{}/ns/net", held.keeper_pid().unwrap_or(0)));
        nix::mount::mount(
            Some(&from),
            &held.path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| HeldNetnsError::Mount {
            from: from.clone(),
            path: held.path.clone(),
            source,
        })?;
        Ok(held)
    }

    /// The namespace file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid of the keeper, a process in the namespace, while it runs (for the hooks'
    /// state).
    pub fn keeper_pid(&self) -> Option<i32> {
        self.keeper.as_ref().map(|k| k.pid.as_raw())
    }

    /// Kills and reaps the keeper: once the hooks ran, the bind mount alone holds the
    /// namespace.
    pub fn end_keeper(&mut self) {
        self.keeper = None;
    }

    /// Whether the namespace has an interface to connect the VM to (a hook put one there),
    /// as the sandbox's pod-network setup picks it.
    pub fn has_interface(&self) -> Result<bool, HeldNetnsError> {
        crate::network::has_pod_interface(&self.path, crate::network::TAP_NAME).map_err(|source| {
            HeldNetnsError::Inspect {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Ends the keeper, and unmounts and removes the file.
    pub fn remove(mut self) -> Result<(), HeldNetnsError> {
        self.end_keeper();
        let path = std::mem::take(&mut self.path);
        remove_at(&path)
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        self.end_keeper();
        if !self.path.as_os_str().is_empty() {
            if let Err(e) = remove_at(&self.path) {
                log::warn!("{e}");
            }
        }
    }
}

/// Unmounts (every mount on it, lazily: a VMM's jail may hold a copy) and removes the
/// namespace file `path`; a file that is not there, or not mounted, is fine. Symlinks are
/// not followed.
pub fn remove_at(path: &Path) -> Result<(), HeldNetnsError> {
    for _ in 0..MAX_UNMOUNTS {
        match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            // Not a mount point (any more), or no file at all.
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(source) => {
                return Err(HeldNetnsError::Unmount {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(HeldNetnsError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_a_network_namespace_without_a_path_asks_for_a_new_one() {
        let spec = |ns: serde_json::Value| json!({"linux": {"namespaces": ns}});
        assert!(spec_wants_new(&spec(json!([{"type": "network"}]))));
        assert!(spec_wants_new(&spec(
            json!([{"type": "pid"}, {"type": "network", "path": ""}])
        )));
        assert!(!spec_wants_new(&spec(
            json!([{"type": "network", "path": "/var/run/netns/cni-1"}])
        )));
        // No network entry: the host's network (`--network host`).
        assert!(!spec_wants_new(&spec(json!([{"type": "pid"}]))));
        assert!(!spec_wants_new(&json!({})));
    }

    fn mounted(path: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = path.to_str().unwrap();
        text.lines().any(|l| l.split_whitespace().nth(4) == Some(p))
    }

    /// Needs root (CLONE_NEWNET, mount): skipped otherwise.
    #[test]
    fn a_held_namespace_is_new_and_goes_with_its_file() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_held_namespace_is_new_and_goes_with_its_file: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut held = HeldNetns::create(tmp.path()).unwrap();
        let file = tmp.path().join(NETNS_FILE);
        assert_eq!(held.path(), file);
        let ino = |p: &str| std::fs::metadata(p).unwrap().ino();
        let keeper = held.keeper_pid().unwrap();
        assert_eq!(
            ino(file.to_str().unwrap()),
            ino(&format!("/proc/{keeper}/ns/net")),
            "the file holds the keeper's namespace"
        );
        assert_ne!(ino(file.to_str().unwrap()), ino("/proc/self/ns/net"));
        assert!(mounted(&file));
        // A fresh namespace has only lo: nothing to connect a VM to.
        assert!(!held.has_interface().unwrap());
        held.end_keeper();
        assert!(held.keeper_pid().is_none());
        assert!(
            !Path::new(&format!("/proc/{keeper}")).exists(),
            "the keeper is killed and reaped"
        );
        // The mount alone holds the namespace now.
        assert!(!held.has_interface().unwrap());
        held.remove().unwrap();
        assert!(!file.exists() && !mounted(&file));
        // Removing what is gone is fine (delete after the holder's own cleanup).
        remove_at(&file).unwrap();

        // A holder killed while it held one: the mount stays until `remove_at`.
        let held = HeldNetns::create(tmp.path()).unwrap();
        std::mem::forget(held);
        assert!(mounted(&file));
        remove_at(&file).unwrap();
        assert!(!file.exists() && !mounted(&file));
    }

    #[test]
    fn a_missing_directory_is_named_and_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_missing_directory_is_named_and_leaves_nothing: needs root");
            return;
        }
        let e = HeldNetns::create(Path::new("/nonexistent/ember-netns-dir")).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot create /nonexistent/ember-netns-dir/netns"),
            "{e}"
        );
    }
}
