//! PID-1 duties in the guest: a root that containers can pivot_root(2) away from, the
//! pseudo filesystems, loopback, and the agent port from the kernel command line. Zombie
//! reaping is [`crate::reaper`]'s job (PID 1 adopts every orphan). None of this runs when
//! the agent is an ordinary host process.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, mkdir};
use slog::{info, warn, Logger};

/// The kernel command line parameter naming the agent's vsock port.
pub const PORT_PARAM: &str = "ember.agent_port=";
/// The default vsock port.
pub const DEFAULT_PORT: u32 = 1024;

/// Errors of the PID-1 setup.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    /// A mount failed.
    #[error("cannot mount {fstype} on {target}: {errno}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// Why.
        errno: Errno,
    },
    /// Bringing up loopback failed.
    #[error("cannot bring up the loopback interface lo: {0}")]
    Loopback(std::io::Error),
    /// The mount table could not be read to tell whether `/` is the initial rootfs.
    #[error("cannot read {MOUNTINFO} to check whether / is the initramfs: {0}")]
    Mountinfo(std::io::Error),
    /// `/` is the initial rootfs (the initramfs) and could not be moved onto a mount of its
    /// own (see [`move_root_onto_bind_mount`]).
    #[error("/ is the initramfs (the kernel's initial rootfs), on which containers cannot pivot_root, and moving it onto a bind mount failed at `{step}`: {errno}; boot the guest from a disk image instead (hypervisor.image) or report this with the guest's console log")]
    MoveRoot {
        /// The step that failed.
        step: &'static str,
        /// Why.
        errno: Errno,
    },
}

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The agent port given on a kernel command line, if any.
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(PORT_PARAM))
        .and_then(|p| p.parse().ok())
}

/// The agent port from /proc/cmdline, or [`DEFAULT_PORT`].
pub fn agent_port() -> u32 {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| port_from_cmdline(&c))
        .unwrap_or(DEFAULT_PORT)
}

const MOUNTS: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
    (
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        None,
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        None,
    ),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ),
    (
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        None,
    ),
];

/// This thread's mount table (the agent's threads share one mount namespace and root).
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Where [`move_root_onto_bind_mount`] binds the initial rootfs before moving it to `/`:
/// an empty directory, removed again once the move is done.
const NEW_ROOT_DIR: &str = "/.ember-root";

/// The mount at `/` as a mountinfo line (proc(5)) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    /// Its mount ID.
    pub id: u32,
    /// Its parent's mount ID; the mount's own ID when it has no parent.
    pub parent: u32,
    /// Its filesystem type (`rootfs` for the kernel's initial rootfs).
    pub fstype: String,
}

impl RootMount {
    /// Whether this is the kernel's initial rootfs, the one mount of a namespace without a
    /// parent (the kernel prints such a mount as its own parent). pivot_root(2) fails with
    /// EINVAL when the caller's root is on it.
    pub fn is_initial_rootfs(&self) -> bool {
        self.id == self.parent
    }
}

/// The mount of the reader's root in a mountinfo text: the first one whose mount point is
/// `/` (mounts stacked over the root come after it). `None` without such a line.
pub fn root_mount(mountinfo: &str) -> Option<RootMount> {
    ember_sys::mountinfo::parse(mountinfo)
        .into_iter()
        .find(|m| m.mount_point == Path::new("/"))
        .map(|m| RootMount {
            id: m.id,
            parent: m.parent,
            fstype: m.fstype,
        })
}

/// This thread's mount table. Without /proc yet (the guest's init starts with nothing
/// mounted), /proc is mounted for the read and unmounted again, so that nothing is mounted
/// on the initial rootfs before [`leave_initial_rootfs`] may move it.
fn read_mountinfo() -> Result<String, Pid1Error> {
    if let Ok(text) = std::fs::read_to_string(MOUNTINFO) {
        return Ok(text);
    }
    let _ = std::fs::create_dir_all("/proc");
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| Pid1Error::Mount {
        fstype: "proc",
        target: "/proc",
        errno,
    })?;
    let text = std::fs::read_to_string(MOUNTINFO).map_err(Pid1Error::Mountinfo);
    // Should it stay, the bind of the root below takes it along (MS_REC): harmless.
    let _ = umount2("/proc", MntFlags::MNT_DETACH);
    text
}

/// Makes `/` a bind mount of the current root, mounted over it, so that the root has a
/// parent mount, the way the kernel itself puts a disk root in place (init/do_mounts.c):
/// mount on a directory, chdir into it, move that mount onto `/`, chroot to it.
///
/// Why: pivot_root(2) fails with EINVAL when "the current root directory is on the rootfs
/// (initial ramfs) mount" (the kernel's check: the caller's root mount has no parent). With
/// the agent's initramfs as the guest's root, every container's pivot_root failed that way
/// (libcontainer's `failed syscall`). A bind mount of the rootfs shows the same files and
/// has the rootfs as its parent, so pivot_root works for containers (whose mount
/// namespaces copy this layout) and they keep its isolation (no chroot fallback). `dir` is
/// an absolute path to a directory that may be created on the current root; it is removed
/// again.
fn move_root_onto_bind_mount(dir: &Path) -> Result<(), Pid1Error> {
    let at = |step: &'static str| move |errno| Pid1Error::MoveRoot { step, errno };
    // MS_MOVE refuses a mount whose parent is shared. The initial rootfs is private unless
    // something made it shared; this makes sure.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(at("mount --make-rprivate /"))?;
    match mkdir(dir, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(at("mkdir")(errno)),
    }
    // MS_REC takes along whatever is already mounted below `/`.
    mount(
        Some("/"),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(at("mount --rbind / <dir>"))?;
    chdir(dir).map_err(at("chdir <dir>"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(at("mount --move . /"))?;
    chroot(".").map_err(at("chroot ."))?;
    chdir("/").map_err(at("chdir /"))?;
    // Nothing is mounted on it any more: an empty directory of the (shared) rootfs.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// When `/` is the kernel's initial rootfs (the guest booted with the agent's initramfs),
/// moves it onto a bind mount of itself ([`move_root_onto_bind_mount`]) so that containers
/// can pivot_root. A root on a disk (hypervisor.image) or virtio-fs already has a parent
/// and is left alone. Runs before anything else is mounted.
fn leave_initial_rootfs(log: &Logger) -> Result<(), Pid1Error> {
    let mountinfo = read_mountinfo()?;
    match root_mount(&mountinfo) {
        Some(root) if root.is_initial_rootfs() => {
            move_root_onto_bind_mount(Path::new(NEW_ROOT_DIR))?;
            info!(log, "/ was the initial rootfs (initramfs), on which pivot_root(2) fails: moved it onto a bind mount of itself, so containers can pivot_root";
                "fstype" => root.fstype, "mount_id" => root.id);
        }
        Some(_) => {}
        None => warn!(
            log,
            "no mount at / in {MOUNTINFO}: leaving the root as it is"
        ),
    }
    Ok(())
}

/// Gives `/` a parent mount when it is the initial rootfs ([`leave_initial_rootfs`]), mounts
/// the pseudo filesystems (already-mounted ones are left alone) and brings up `lo`.
pub fn setup(log: &Logger) -> Result<(), Pid1Error> {
    leave_initial_rootfs(log)?;
    for (source, target, fstype, flags, data) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(*source), *target, Some(*fstype), *flags, *data) {
            Ok(()) => info!(log, "mounted"; "fstype" => fstype, "target" => target),
            Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(Pid1Error::Mount {
                    fstype,
                    target,
                    errno,
                })
            }
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    if let Err(e) = loopback_up() {
        warn!(log, "loopback setup failed"; "error" => %e);
        return Err(e);
    }
    Ok(())
}

/// What the agent sets up around itself at start (`--init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitMode {
    /// `vm` when the agent is PID 1, `none` otherwise.
    Auto,
    /// The guest's init: pseudo filesystems, loopback (see [`setup`]).
    Vm,
    /// The `process` sandbox backend: the agent was started by the runtime as PID 1 of fresh
    /// PID and mount namespaces on the host. It makes its mount namespace a slave of the
    /// host's (so its container mounts never propagate back, while the sandbox's shared
    /// directory still receives the runtime's new mounts) and mounts a /proc for its PID
    /// namespace (libcontainer looks up its children by their pids there).
    Namespace,
    /// Nothing: an ordinary host process (tests).
    None,
}

impl InitMode {
    /// Resolves `auto`.
    pub fn resolve(self) -> InitMode {
        match self {
            InitMode::Auto if is_pid1() => InitMode::Vm,
            InitMode::Auto => InitMode::None,
            m => m,
        }
    }
}

/// Setup of [`InitMode::Namespace`].
pub fn setup_namespace(log: &Logger) -> Result<(), Pid1Error> {
    let err = |target, fstype, errno| Pid1Error::Mount {
        fstype,
        target,
        errno,
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| err("/", "(propagation rslave)", e))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("/proc", "proc", e))?;
    info!(
        log,
        "namespace init: / is rslave, /proc mounted for this PID namespace"
    );
    Ok(())
}

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> Result<(), Pid1Error> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Pid1Error::Loopback(e.into()))?;
    // SAFETY: ifreq is plain old data; the ioctls read and write it in place.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Pid1Error::Loopback(std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Pid1Error::Loopback(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_comes_from_the_command_line() {
        assert_eq!(
            port_from_cmdline("console=ttyS0 ember.agent_port=2000 quiet"),
            Some(2000)
        );
        assert_eq!(port_from_cmdline("console=ttyS0"), None);
        assert_eq!(port_from_cmdline("ember.agent_port=x"), None);
    }

    #[test]
    fn the_initial_rootfs_is_the_root_mount_without_a_parent() {
        // A guest booted with the agent's initramfs, /proc mounted for the read.
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=232196k,nr_inodes=58049\n\
                         14 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";
        let root = root_mount(initramfs).unwrap();
        assert_eq!(
            root,
            RootMount {
                id: 1,
                parent: 1,
                fstype: "rootfs".into()
            }
        );
        assert!(root.is_initial_rootfs());

        // The same guest once the root moved onto a bind mount: the same filesystem, but a
        // mount whose parent (the rootfs, 1) is out of the reader's sight.
        let moved = "15 1 0:2 / / rw - rootfs rootfs rw,size=232196k,nr_inodes=58049\n\
                     16 15 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";
        let root = root_mount(moved).unwrap();
        assert_eq!((root.id, root.parent), (15, 1));
        assert!(!root.is_initial_rootfs());

        // The guest's root on the ext4 image (the kernel mounted it over the rootfs), and a
        // host's root with optional fields before the separator.
        let disk = "20 1 254:0 / / ro,relatime - ext4 /dev/vda ro\n";
        assert!(!root_mount(disk).unwrap().is_initial_rootfs());
        let host = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 8:1 / / rw,relatime shared:1 master:2 - ext4 /dev/sda1 rw\n";
        let root = root_mount(host).unwrap();
        assert_eq!(
            (root.id, root.parent, root.fstype.as_str()),
            (27, 1, "ext4")
        );
        assert!(!root.is_initial_rootfs());

        // Something stacked over the rootfs: the reader's root is the first `/`.
        let stacked = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                       15 1 0:2 / / rw - rootfs rootfs rw\n";
        assert!(root_mount(stacked).unwrap().is_initial_rootfs());

        // No root line, or a broken one: nothing is known.
        assert_eq!(root_mount(""), None);
        assert_eq!(
            root_mount("22 27 0:21 / /proc rw,relatime - proc proc rw\n"),
            None
        );
        assert_eq!(root_mount("x 1 0:2 / / rw - rootfs rootfs rw\n"), None);
        assert_eq!(root_mount("1 1 0:2 / / rw rootfs rootfs rw\n"), None);

        // This process's own root is found (whatever it is).
        let own = std::fs::read_to_string(MOUNTINFO).unwrap();
        assert!(root_mount(&own).is_some(), "{own}");
    }

    /// This thread's mount table, read through `proc`, a directory fd of
    /// /proc/thread-self opened before a chroot.
    fn mountinfo_at(proc: &std::fs::File) -> Result<String, String> {
        use std::os::fd::FromRawFd;
        let fd = nix::fcntl::openat(
            Some(proc.as_raw_fd()),
            "mountinfo",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open mountinfo: {e}"))?;
        // SAFETY: openat returned a new fd that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        std::io::read_to_string(file).map_err(|e| format!("read mountinfo: {e}"))
    }

    /// The root before and after [`move_root_onto_bind_mount`], run in a thread of its own
    /// mount namespace whose root is a fresh tmpfs (`root`), and whether the move's
    /// directory is gone afterwards.
    fn move_in_private_namespace(root: &Path) -> Result<(RootMount, RootMount, bool), String> {
        use nix::sched::{unshare, CloneFlags};
        let e = |what: &'static str| move |errno: Errno| format!("{what}: {errno}");
        // A new mount namespace implies CLONE_FS: this thread gets its own root and working
        // directory, so the chroot below changes nothing for the other threads.
        unshare(CloneFlags::CLONE_NEWNS).map_err(e("unshare"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(e("make / rprivate"))?;
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(e("mount tmpfs"))?;
        std::fs::create_dir(root.join("etc")).map_err(|e| e.to_string())?;
        std::fs::write(root.join("etc/marker"), "here").map_err(|e| e.to_string())?;
        let proc = std::fs::File::open("/proc/thread-self").map_err(|e| e.to_string())?;
        chroot(root).map_err(e("chroot"))?;
        chdir("/").map_err(e("chdir"))?;
        let before = root_mount(&mountinfo_at(&proc)?).ok_or("no root before")?;
        move_root_onto_bind_mount(Path::new(NEW_ROOT_DIR)).map_err(|e| e.to_string())?;
        let after = root_mount(&mountinfo_at(&proc)?).ok_or("no root after")?;
        if std::fs::read_to_string("/etc/marker").ok().as_deref() != Some("here") {
            return Err("the moved root does not show the old root's files".into());
        }
        Ok((before, after, !Path::new(NEW_ROOT_DIR).exists()))
    }

    #[test]
    fn moving_the_root_onto_a_bind_mount_gives_it_a_parent() {
        const TEST: &str = "moving_the_root_onto_a_bind_mount_gives_it_a_parent";
        if !ember_tests::require_root(TEST, "a mount namespace, mounts, chroot") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (before, after, dir_gone) =
            std::thread::spawn(move || move_in_private_namespace(&root))
                .join()
                .unwrap()
                .unwrap();
        assert_eq!(before.fstype, "tmpfs");
        assert_eq!(after.fstype, "tmpfs", "the same filesystem");
        assert_ne!(after.id, before.id, "a new mount");
        assert_eq!(after.parent, before.id, "mounted over the old root");
        assert!(!after.is_initial_rootfs());
        assert!(dir_gone, "{NEW_ROOT_DIR} is removed");
        // The host's mounts and the test process's root are untouched.
        assert!(!dir.path().join("etc").exists());
        assert!(!Path::new(NEW_ROOT_DIR).exists());
    }
}
