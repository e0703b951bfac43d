//! The jail of a confined `ember-vmm` process, entered after the VM is built (every host
//! file it needs is open) and before the guest runs.
//!
//! [`enter`], on the process's only thread (so that every thread started later inherits
//! it):
//! - new mount, IPC, UTS and network namespaces (`unshare`). The tap, opened before,
//!   keeps working: an fd is not tied to the namespace it was opened in. The PID
//!   namespace comes from the runtime, which forks the VMM from a thread that called
//!   `unshare(CLONE_NEWPID)` (that call applies only to children), so the VMM is the init
//!   of a namespace of its own; before the VM is built it mounts that namespace's procfs
//!   on `/proc` ([`own_proc`]), so that what it keeps open in `/proc` (fuse-backend-rs's
//!   `/proc/self/fd`) shows no host process;
//! - `/` made recursively slave (nothing the jail mounts reaches the host), the root
//!   directory ([`JailConfig::root`], the sandbox's state directory) bound onto itself
//!   recursively (the mounts below it stay slaves of the host's) and made the root with
//!   `pivot_root`, the old root detached, `chdir("/")`;
//! - `RLIMIT_NOFILE` set to [`JailConfig::nofile`], or the inherited hard limit if that
//!   is lower (soft and hard);
//! - the capability bounding set cleared but for [`DEVICE_CAPABILITIES`], and the
//!   thread's permitted and effective sets cut to them (inheritable and ambient cleared);
//! - `PR_SET_NO_NEW_PRIVS`, and not dumpable (`PR_SET_DUMPABLE` 0).
//!
//! Capabilities are per thread; each thread kind then cuts its own further as it installs
//! its seccomp filter ([`crate::seccomp::Filter::with_capabilities`]): the vCPU threads and
//! the control thread to none, the device thread to [`DEVICE_CAPABILITIES`].
//!
//! No `RLIMIT_FSIZE`: the containers' writes through virtio-fs are made by the VMM's
//! device thread, so a file-size limit would be a limit on every file a container writes
//! to its rootfs and volumes, and going over it raises SIGXFSZ, which kills the VMM.

use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The capabilities the device thread keeps, for virtio-fs passthrough
/// (fuse-backend-rs 0.14 `passthrough`): it serves each request with the guest caller's
/// uid and gid as the thread's effective ids (`setresuid`/`setresgid` of the effective id
/// only: SETUID, SETGID), and a guest root's requests need what root's need on the
/// share: chown (CHOWN), access regardless of modes (DAC_OVERRIDE), chmod, utimes and
/// the like on files of other owners (FOWNER), and keeping set-id bits on write and
/// chown (FSETID, which the passthrough also drops and raises around writes). No MKNOD:
/// a guest cannot make device nodes on the host share (FIFOs and sockets need none).
pub const DEVICE_CAPABILITIES: [Capability; 6] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// The default `RLIMIT_NOFILE` of a jailed VMM. virtio-fs passthrough holds an `O_PATH`
/// fd for every inode the guest has looked up and not forgotten, and one per open file
/// or directory handle: this bounds them. Over it, the guest's lookup or open fails with
/// EMFILE; the VMM goes on.
pub const DEFAULT_NOFILE: u64 = 65_536;

/// Where and how to jail the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The jail's root: the sandbox's state directory (absolute).
    pub root: PathBuf,
    /// `RLIMIT_NOFILE`, soft and hard.
    #[serde(default = "default_nofile")]
    pub nofile: u64,
}

fn default_nofile() -> u64 {
    DEFAULT_NOFILE
}

impl JailConfig {
    /// A jail rooted at `root` with the default limits.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            nofile: DEFAULT_NOFILE,
        }
    }
}

/// Whether this process is the init (pid 1) of a PID namespace of its own: how the runtime
/// spawns a confined VMM (`unshare(CLONE_NEWPID)` on the thread that forks it).
pub fn in_own_pid_namespace() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Gives the process a procfs of its own PID namespace on `/proc`, in a mount namespace of
/// its own, before the VM is built: what it opens in `/proc` from then on (fuse-backend-rs
/// keeps an fd on `/proc/self/fd` for as long as virtio-fs runs, past the jail) shows this
/// namespace, in which the VMM is alone, and not the host's processes. Only for an init of
/// its own PID namespace ([`in_own_pid_namespace`]); otherwise nothing is done and `false`
/// returned.
///
/// Network namespace paths in `paths` (the taps' `netns`) are opened first and replaced by
/// `/proc/self/fd/N`, which names the same file in the new procfs: a path such as
/// `/proc/<host pid>/ns/net` would name nothing there. The returned fds must stay open
/// until the VM is built.
pub fn own_proc(paths: &mut [&mut PathBuf]) -> Result<(bool, Vec<std::fs::File>), JailError> {
    if !in_own_pid_namespace() {
        return Ok((false, Vec::new()));
    }
    let step = |what: &str| {
        let what = what.to_string();
        move |source| JailError::Step { what, source }
    };
    let mut kept = Vec::new();
    for p in paths.iter_mut() {
        let f = std::fs::File::open(&**p).map_err(|e| JailError::Step {
            what: format!("open {}", p.display()),
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        **p = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&f)
        ));
        // Inherited by nothing: O_CLOEXEC is std's default.
        kept.push(f);
    }
    unshare_with_rslave_root(
        CloneFlags::CLONE_NEWNS,
        "unshare(mount namespace) for /proc",
    )?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(step("mount a procfs of the VMM's PID namespace on /proc"))?;
    Ok((true, kept))
}

/// `unshare(flags)` (`what` names it in the error), which must include a new mount
/// namespace, then `/` made recursively slave, so that nothing mounted in it reaches the
/// host.
fn unshare_with_rslave_root(flags: CloneFlags, what: &str) -> Result<(), JailError> {
    let step = |what: &str| {
        let what = what.to_string();
        move |source| JailError::Step { what, source }
    };
    unshare(flags).map_err(step(what))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(step("make / rslave"))
}

/// Why the jail could not be entered (the VMM then exits without running the guest).
#[derive(Debug, Error)]
pub enum JailError {
    /// The root is not an absolute directory path.
    #[error("jail root {0} must be an absolute path to a directory")]
    Root(PathBuf),
    /// The process has more than one thread: namespaces and capabilities set now would
    /// not reach the others.
    #[error("the jail must be entered on the VMM's only thread; it has {0}")]
    Threads(usize),
    /// A step failed.
    #[error("jail: {what}: {source} (ember-vmm must run as root, or with CAP_SYS_ADMIN and CAP_SETPCAP)")]
    Step {
        /// Which step.
        what: String,
        /// Why.
        source: nix::Error,
    },
    /// A capability set could not be changed.
    #[error("jail: {what}: {source}")]
    Capabilities {
        /// Which set.
        what: &'static str,
        /// Why.
        source: caps::errors::CapsError,
    },
}

/// [`DEVICE_CAPABILITIES`] as a set.
pub fn device_capabilities() -> CapsHashSet {
    DEVICE_CAPABILITIES.into_iter().collect()
}

/// The path `path` will have inside a jail rooted at `root`: relative to the root (and
/// so to the working directory, which is the root both before, see [`enter`], and after),
/// or `None` when it is outside.
pub fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    Some(if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    })
}

/// Enter the jail (see the module's documentation). Call it on the process's only
/// thread, with the working directory anywhere.
pub fn enter(config: &JailConfig) -> Result<(), JailError> {
    let root = &config.root;
    if !root.is_absolute() || !root.is_dir() {
        return Err(JailError::Root(root.clone()));
    }
    // A thread joined just before (the tap's, which enters the pod's network namespace)
    // can stay listed for a moment after its join: give it up to 100 ms to go.
    let mut threads = 0;
    for _ in 0..50 {
        threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    let step = |what: &str| {
        let what = what.to_string();
        move |source| JailError::Step { what, source }
    };
    unshare_with_rslave_root(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
        "unshare(mount, IPC, UTS, network namespaces)",
    )?;
    // Recursive: the jail holds the state directory with the mounts below it (the
    // share's tmpfs and the containers' rootfs under it). Those copies are slaves of the
    // host's (the share is a shared mount, `/` was made rslave above), so a container
    // rootfs the runtime mounts under the share later appears here too: virtio-fs opens
    // the share's root again by path at the guest's FUSE_INIT, after the jail, and serves
    // this copy.
    mount(
        Some(root.as_path()),
        root.as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step(&format!("bind {} onto itself", root.display())))?;
    nix::unistd::chdir(root.as_path()).map_err(step(&format!("chdir {}", root.display())))?;
    // pivot_root(".", "."): the old root ends up on top of the new one, and is detached
    // at once (pivot_root(2)).
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    // Never above the inherited hard limit: raising it takes CAP_SYS_RESOURCE, which a
    // runtime in a container may lack.
    let (_, hard) = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(step("getrlimit(RLIMIT_NOFILE)"))?;
    let nofile = config.nofile.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)
        .map_err(step(&format!("RLIMIT_NOFILE {nofile}")))?;
    let keep = device_capabilities();
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| JailError::Capabilities {
                what: "bounding set",
                source,
            })?;
        }
    }
    crate::seccomp::restrict_capabilities(&keep).map_err(|source| JailError::Capabilities {
        what: "permitted and effective sets",
        source,
    })?;
    nix::sys::prctl::set_no_new_privs().map_err(step("PR_SET_NO_NEW_PRIVS"))?;
    // Not dumpable: another process of this uid without CAP_SYS_PTRACE (another sandbox's
    // escaped VMM) cannot reach this one's memory, fds or root through /proc/<pid>.
    nix::sys::prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE 0"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_jail_are_relative_to_its_root() {
        let root = Path::new("/run/ember/s1");
        assert_eq!(
            inside(root, Path::new("/run/ember/s1/vsock.sock")),
            Some(PathBuf::from("vsock.sock"))
        );
        assert_eq!(inside(root, root), Some(PathBuf::from(".")));
        assert_eq!(inside(root, Path::new("/run/ember/s10/vsock.sock")), None);
        assert_eq!(inside(root, Path::new("/elsewhere")), None);
    }

    #[test]
    fn the_device_list_has_no_mknod_and_no_admin() {
        let keep = device_capabilities();
        assert_eq!(keep.len(), 6);
        for c in [
            Capability::CAP_MKNOD,
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SETPCAP,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_DAC_READ_SEARCH,
        ] {
            assert!(!keep.contains(&c), "{c}");
        }
        let j: JailConfig = serde_json::from_str("{\"root\":\"/s\"}").unwrap();
        assert_eq!(j, JailConfig::new("/s"));
    }

    #[test]
    fn a_relative_or_missing_root_is_refused_before_anything_changes() {
        let e = enter(&JailConfig::new("relative")).unwrap_err();
        assert!(matches!(e, JailError::Root(_)), "{e}");
        let e = enter(&JailConfig::new("/nonexistent/ember-jail")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ember-jail"), "{e}");
    }
}
