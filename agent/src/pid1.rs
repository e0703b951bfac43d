//! PID-1 duties in the guest: the pseudo filesystems, loopback, and the agent port from the
//! kernel command line. Zombie reaping is [`crate::reaper`]'s job (PID 1 adopts every
//! orphan). None of this runs when the agent is an ordinary host process.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
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

/// Mounts the pseudo filesystems (already-mounted ones are left alone) and brings up `lo`.
pub fn setup(log: &Logger) -> Result<(), Pid1Error> {
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
}
