//! PID-1 duties in the guest: a root that containers can pivot_root(2) away from, the
//! pseudo filesystems, loopback, and the agent port from the kernel command line. Zombie
//! reaping is [`crate::reaper`]'s job (PID 1 adopts every orphan). None of this runs when
//! the agent is an ordinary host process. Every system call goes through
//! [`crate::syscall::Syscall`].

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use slog::{debug, info, warn, Logger};

use crate::syscall::Syscall;

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

/// The mode of the mount points [`setup`] creates (as `mkdir -p` makes them, less the umask).
const MOUNT_POINT_MODE: Mode = Mode::S_IRWXU.union(Mode::S_IRWXG).union(Mode::S_IRWXO);

/// This thread's mount table. Without /proc yet (the guest's init starts with nothing
/// mounted), /proc is mounted for the read and unmounted again, so that nothing is mounted
/// on the initial rootfs before [`leave_initial_rootfs`] may move it.
fn read_mountinfo(sys: &dyn Syscall) -> Result<String, Pid1Error> {
    if let Ok(text) = sys.read_to_string(Path::new(MOUNTINFO)) {
        return Ok(text);
    }
    let _ = sys.mkdir(Path::new("/proc"), MOUNT_POINT_MODE);
    sys.mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|errno| Pid1Error::Mount {
        fstype: "proc",
        target: "/proc",
        errno,
    })?;
    let text = sys
        .read_to_string(Path::new(MOUNTINFO))
        .map_err(Pid1Error::Mountinfo);
    // Should it stay, the bind of the root below takes it along (MS_REC): harmless.
    let _ = sys.umount2(Path::new("/proc"), MntFlags::MNT_DETACH);
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
fn move_root_onto_bind_mount(sys: &dyn Syscall, dir: &Path) -> Result<(), Pid1Error> {
    let at = |step: &'static str| move |errno| Pid1Error::MoveRoot { step, errno };
    let root = Path::new("/");
    // MS_MOVE refuses a mount whose parent is shared. The initial rootfs is private unless
    // something made it shared; this makes sure.
    sys.mount(
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(at("mount --make-rprivate /"))?;
    match sys.mkdir(dir, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(at("mkdir")(errno)),
    }
    // MS_REC takes along whatever is already mounted below `/`.
    sys.mount(
        Some(root),
        dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(at("mount --rbind / <dir>"))?;
    sys.chdir(dir).map_err(at("chdir <dir>"))?;
    sys.mount(Some(Path::new(".")), root, None, MsFlags::MS_MOVE, None)
        .map_err(at("mount --move . /"))?;
    sys.chroot(Path::new(".")).map_err(at("chroot ."))?;
    sys.chdir(root).map_err(at("chdir /"))?;
    // Nothing is mounted on it any more: an empty directory of the (shared) rootfs.
    let _ = sys.rmdir(dir);
    Ok(())
}

/// When `/` is the kernel's initial rootfs (the guest booted with the agent's initramfs),
/// moves it onto a bind mount of itself ([`move_root_onto_bind_mount`]) so that containers
/// can pivot_root. A root on a disk (hypervisor.image) or virtio-fs already has a parent
/// and is left alone. Runs before anything else is mounted.
fn leave_initial_rootfs(sys: &dyn Syscall, log: &Logger) -> Result<(), Pid1Error> {
    let mountinfo = read_mountinfo(sys)?;
    match root_mount(&mountinfo) {
        Some(root) if root.is_initial_rootfs() => {
            move_root_onto_bind_mount(sys, Path::new(NEW_ROOT_DIR))?;
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
/// the pseudo filesystems (already-mounted ones are left alone) and brings up `lo`. The
/// mount points are made one level each: their parents are `/` or a filesystem mounted
/// just before.
pub fn setup(sys: &dyn Syscall, log: &Logger) -> Result<(), Pid1Error> {
    leave_initial_rootfs(sys, log)?;
    for (source, target, fstype, flags, data) in MOUNTS {
        let _ = sys.mkdir(Path::new(target), MOUNT_POINT_MODE);
        match sys.mount(
            Some(Path::new(source)),
            Path::new(target),
            Some(fstype),
            *flags,
            *data,
        ) {
            // Debug only: the agent logs to the serial console, where each byte is an exit
            // to the VMM, and these seven lines come at every boot.
            Ok(()) => debug!(log, "mounted"; "fstype" => fstype, "target" => target),
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
    // Only where devtmpfs has no /dev/ptmx: the link fails with EEXIST otherwise.
    let _ = sys.symlink(Path::new("pts/ptmx"), Path::new("/dev/ptmx"));
    if let Err(e) = sys.set_link_up("lo").map_err(Pid1Error::Loopback) {
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
pub fn setup_namespace(sys: &dyn Syscall, log: &Logger) -> Result<(), Pid1Error> {
    let err = |target, fstype, errno| Pid1Error::Mount {
        fstype,
        target,
        errno,
    };
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )
    .map_err(|e| err("/", "(propagation rslave)", e))?;
    sys.mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|e| err("/proc", "proc", e))?;
    info!(
        log,
        "namespace init: / is rslave, /proc mounted for this PID namespace"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::mount::mount;
    use nix::unistd::{chdir, chroot};

    use super::*;
    use crate::syscall::{Call, Real, Recorder};

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A mountinfo text whose root is on a disk (it has a parent mount).
    const DISK_ROOT: &str = "20 1 254:0 / / ro,relatime - ext4 /dev/vda ro\n";
    /// The guest booted from the initramfs, /proc mounted for the read.
    const INITRAMFS_ROOT: &str = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                                  14 1 0:20 / /proc rw,nosuid,nodev,noexec - proc proc rw\n";

    const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOEXEC);

    /// The pseudo filesystem mounts of [`setup`], in order.
    fn pseudo_mounts() -> Vec<Call> {
        vec![
            Call::mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                NOSUID_NODEV_NOEXEC,
                None,
            ),
            Call::mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                NOSUID_NODEV_NOEXEC,
                None,
            ),
            Call::mount(
                Some("devtmpfs"),
                "/dev",
                Some("devtmpfs"),
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            ),
            Call::mount(
                Some("devpts"),
                "/dev/pts",
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
            Call::mount(
                Some("shm"),
                "/dev/shm",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            ),
            Call::mount(
                Some("tmpfs"),
                "/run",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            ),
            Call::mount(
                Some("cgroup2"),
                "/sys/fs/cgroup",
                Some("cgroup2"),
                NOSUID_NODEV_NOEXEC,
                None,
            ),
        ]
    }

    #[test]
    fn setup_mounts_the_pseudo_filesystems_in_order_then_brings_up_lo() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(DISK_ROOT.into()));
        setup(&sys, &logger()).unwrap();
        let mut expected = vec![Call::Read(MOUNTINFO.into())];
        for m in pseudo_mounts() {
            let target = m.path().unwrap().to_path_buf();
            expected.push(Call::Mkdir(target, MOUNT_POINT_MODE));
            expected.push(m);
        }
        expected.push(Call::Symlink("pts/ptmx".into(), "/dev/ptmx".into()));
        expected.push(Call::LinkUp("lo".into()));
        assert_eq!(sys.calls(), expected);
    }

    #[test]
    fn setup_leaves_an_already_mounted_filesystem_alone() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(DISK_ROOT.into()));
        sys.fail_when(|c| c.path() == Some(Path::new("/sys")), Errno::EBUSY);
        setup(&sys, &logger()).unwrap();
        assert_eq!(sys.mounts(), pseudo_mounts(), "every mount is still tried");
        assert_eq!(sys.calls().last(), Some(&Call::LinkUp("lo".into())));
    }

    #[test]
    fn a_failing_mount_stops_setup_and_names_it() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(DISK_ROOT.into()));
        sys.fail_when(
            |c| matches!(c, Call::Mount { target, .. } if target == Path::new("/dev/pts")),
            Errno::EPERM,
        );
        let e = setup(&sys, &logger()).unwrap_err().to_string();
        assert!(
            e.contains("devpts") && e.contains("/dev/pts") && e.contains("EPERM"),
            "{e}"
        );
        // Nothing after it: no /dev/shm, no loopback.
        assert_eq!(sys.mounts(), pseudo_mounts()[..4]);
        assert!(!sys.calls().contains(&Call::LinkUp("lo".into())));
    }

    #[test]
    fn a_failing_loopback_fails_setup() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(DISK_ROOT.into()));
        sys.fail_when(|c| matches!(c, Call::LinkUp(_)), Errno::ENODEV);
        let e = setup(&sys, &logger()).unwrap_err().to_string();
        assert!(e.contains("loopback interface lo"), "{e}");
    }

    #[test]
    fn the_initramfs_root_moves_onto_a_bind_of_itself_before_anything_is_mounted() {
        let sys = Recorder::new();
        // No /proc yet: the first read fails, the one after mounting /proc works.
        sys.answer_read(MOUNTINFO, Err(std::io::ErrorKind::NotFound.into()));
        sys.answer_read(MOUNTINFO, Ok(INITRAMFS_ROOT.into()));
        setup(&sys, &logger()).unwrap();
        let proc = Call::mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            NOSUID_NODEV_NOEXEC,
            None,
        );
        let calls = sys.calls();
        let expected = [
            Call::Read(MOUNTINFO.into()),
            Call::Mkdir("/proc".into(), MOUNT_POINT_MODE),
            proc.clone(),
            Call::Read(MOUNTINFO.into()),
            Call::Umount("/proc".into(), MntFlags::MNT_DETACH),
            Call::mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
            Call::Mkdir(NEW_ROOT_DIR.into(), Mode::S_IRWXU),
            Call::mount(
                Some("/"),
                NEW_ROOT_DIR,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            Call::Chdir(NEW_ROOT_DIR.into()),
            Call::mount(Some("."), "/", None, MsFlags::MS_MOVE, None),
            Call::Chroot(".".into()),
            Call::Chdir("/".into()),
            Call::Rmdir(NEW_ROOT_DIR.into()),
            // Only then the pseudo filesystems, /proc first.
            Call::Mkdir("/proc".into(), MOUNT_POINT_MODE),
            proc,
        ];
        assert_eq!(calls[..expected.len()], expected);
        assert_eq!(sys.mounts()[4..], pseudo_mounts());
    }

    #[test]
    fn a_root_with_a_parent_is_not_moved() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(DISK_ROOT.into()));
        setup(&sys, &logger()).unwrap();
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Chroot(_))));
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_MOVE))));
    }

    #[test]
    fn a_failed_move_of_the_root_names_its_step_and_stops() {
        let sys = Recorder::new();
        sys.answer_read(MOUNTINFO, Ok(INITRAMFS_ROOT.into()));
        sys.fail_when(
            |c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_MOVE)),
            Errno::EINVAL,
        );
        let e = setup(&sys, &logger()).unwrap_err();
        assert!(
            matches!(
                e,
                Pid1Error::MoveRoot {
                    step: "mount --move . /",
                    errno: Errno::EINVAL
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("hypervisor.image"), "{e}");
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Chroot(_))));
        assert_eq!(sys.mounts().len(), 3, "no pseudo filesystem: {calls:?}");
    }

    #[test]
    fn without_proc_a_failing_proc_mount_is_reported() {
        let sys = Recorder::new();
        sys.fail_when(|c| matches!(c, Call::Mount { .. }), Errno::EPERM);
        let e = setup(&sys, &logger()).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot mount proc on /proc: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn namespace_init_makes_the_root_rslave_then_mounts_proc() {
        let sys = Recorder::new();
        setup_namespace(&sys, &logger()).unwrap();
        assert_eq!(
            sys.calls(),
            [
                Call::mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None),
                Call::mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    NOSUID_NODEV_NOEXEC,
                    None
                ),
            ]
        );
        let sys = Recorder::new();
        sys.fail_when(|c| c.path() == Some(Path::new("/")), Errno::EACCES);
        let e = setup_namespace(&sys, &logger()).unwrap_err().to_string();
        assert!(e.contains("rslave") && e.contains(" on /: "), "{e}");
        assert_eq!(sys.calls().len(), 1, "/proc is not mounted");
    }

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
        move_root_onto_bind_mount(&Real, Path::new(NEW_ROOT_DIR)).map_err(|e| e.to_string())?;
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
