//! The system calls of the agent's mount and PID-1 code ([`crate::pid1`], [`crate::storage`],
//! the hostname of [`crate::sandbox`]) behind one small trait, so that their sequences can
//! be unit tested without root against [`Recorder`] (youki's `Syscall` trait is the model).
//! [`Real`] makes the calls through nix/libc. The trait holds only what that code calls;
//! container root filesystems are libcontainer's business and do not go through it.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

/// The mount and PID-1 system calls the agent makes.
pub trait Syscall: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    /// mkdir(2) of one directory.
    fn mkdir(&self, path: &Path, mode: Mode) -> Result<(), Errno>;
    /// rmdir(2) of an empty directory.
    fn rmdir(&self, path: &Path) -> Result<(), Errno>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> Result<(), Errno>;
    /// symlink(2): makes `link` point at `original`.
    fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// syncfs(2) of the filesystem holding the directory `dir`.
    fn syncfs(&self, dir: &Path) -> Result<(), Errno>;
    /// Sets IFF_UP on the network interface `name` (SIOCGIFFLAGS, SIOCSIFFLAGS).
    fn set_link_up(&self, name: &str) -> io::Result<()>;
    /// Reads a whole text file (the mount table under /proc).
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
}

/// The system calls themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Real;

impl Syscall for Real {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn mkdir(&self, path: &Path, mode: Mode) -> Result<(), Errno> {
        nix::unistd::mkdir(path, mode)
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        std::fs::remove_dir(path).map_err(|e| io_errno(&e))
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn chroot(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chroot(path)
    }

    fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno> {
        nix::unistd::symlinkat(original, None, link)
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn syncfs(&self, dir: &Path) -> Result<(), Errno> {
        let dir = std::fs::File::open(dir).map_err(|e| io_errno(&e))?;
        nix::unistd::syncfs(dir.as_raw_fd())
    }

    fn set_link_up(&self, name: &str) -> io::Result<()> {
        let name = name.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an interface name",
            ));
        }
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // SAFETY: ifreq is plain old data; the name (checked above) fits with its NUL; the
        // ioctls read and write the struct in place.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in name.iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// The errno of an I/O error (EIO when it carries none).
fn io_errno(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
pub use recorder::{Call, Recorder};

/// A [`Syscall`] that records every call and answers from a script, for unit tests.
#[cfg(test)]
mod recorder {
    use std::collections::{HashMap, VecDeque};
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use nix::errno::Errno;
    use nix::mount::{MntFlags, MsFlags};
    use nix::sys::stat::Mode;

    use super::Syscall;

    /// One recorded call, with owned arguments.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// mount(2).
        Mount {
            /// Source.
            source: Option<PathBuf>,
            /// Target.
            target: PathBuf,
            /// Filesystem type.
            fstype: Option<String>,
            /// Flags.
            flags: MsFlags,
            /// Data string.
            data: Option<String>,
        },
        /// umount2(2).
        Umount(PathBuf, MntFlags),
        /// mkdir(2).
        Mkdir(PathBuf, Mode),
        /// rmdir(2).
        Rmdir(PathBuf),
        /// chdir(2).
        Chdir(PathBuf),
        /// chroot(2).
        Chroot(PathBuf),
        /// symlink(2): original, link.
        Symlink(PathBuf, PathBuf),
        /// sethostname(2).
        Sethostname(String),
        /// syncfs(2).
        Syncfs(PathBuf),
        /// IFF_UP on an interface.
        LinkUp(String),
        /// A file read.
        Read(PathBuf),
    }

    impl Call {
        /// A [`Call::Mount`] from borrowed arguments.
        pub fn mount(
            source: Option<&str>,
            target: impl AsRef<Path>,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Call {
            Call::Mount {
                source: source.map(PathBuf::from),
                target: target.as_ref().to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            }
        }

        /// The path the call works on (a mount's target).
        pub fn path(&self) -> Option<&Path> {
            match self {
                Call::Mount { target, .. } => Some(target),
                Call::Umount(p, _)
                | Call::Mkdir(p, _)
                | Call::Rmdir(p)
                | Call::Chdir(p)
                | Call::Chroot(p)
                | Call::Symlink(_, p)
                | Call::Syncfs(p)
                | Call::Read(p) => Some(p),
                Call::Sethostname(_) | Call::LinkUp(_) => None,
            }
        }
    }

    type Rule = Box<dyn Fn(&Call) -> bool + Send + Sync>;

    /// Records calls in order. Every call succeeds unless a failure rule matches it; a read
    /// returns the next scripted answer for its path (NotFound without one).
    #[derive(Default)]
    pub struct Recorder {
        calls: Mutex<Vec<Call>>,
        failures: Mutex<Vec<(Rule, Errno)>>,
        reads: Mutex<HashMap<PathBuf, VecDeque<io::Result<String>>>>,
    }

    impl Recorder {
        /// A recorder under which everything succeeds.
        pub fn new() -> Recorder {
            Recorder::default()
        }

        /// Makes every call matching `rule` fail with `errno` (it is still recorded).
        pub fn fail_when(
            &self,
            rule: impl Fn(&Call) -> bool + Send + Sync + 'static,
            errno: Errno,
        ) -> &Self {
            self.failures.lock().unwrap().push((Box::new(rule), errno));
            self
        }

        /// Queues the answer of the next read of `path`.
        pub fn answer_read(&self, path: impl AsRef<Path>, answer: io::Result<String>) -> &Self {
            self.reads
                .lock()
                .unwrap()
                .entry(path.as_ref().to_path_buf())
                .or_default()
                .push_back(answer);
            self
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        /// The mount calls so far.
        pub fn mounts(&self) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Mount { .. }))
                .collect()
        }

        fn record(&self, call: Call) -> Result<(), Errno> {
            let failed = self
                .failures
                .lock()
                .unwrap()
                .iter()
                .find(|(rule, _)| rule(&call))
                .map(|(_, errno)| *errno);
            self.calls.lock().unwrap().push(call);
            failed.map_or(Ok(()), Err)
        }
    }

    impl Syscall for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Result<(), Errno> {
            self.record(Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            })
        }

        fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
            self.record(Call::Umount(target.to_path_buf(), flags))
        }

        fn mkdir(&self, path: &Path, mode: Mode) -> Result<(), Errno> {
            self.record(Call::Mkdir(path.to_path_buf(), mode))
        }

        fn rmdir(&self, path: &Path) -> Result<(), Errno> {
            self.record(Call::Rmdir(path.to_path_buf()))
        }

        fn chdir(&self, path: &Path) -> Result<(), Errno> {
            self.record(Call::Chdir(path.to_path_buf()))
        }

        fn chroot(&self, path: &Path) -> Result<(), Errno> {
            self.record(Call::Chroot(path.to_path_buf()))
        }

        fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno> {
            self.record(Call::Symlink(original.to_path_buf(), link.to_path_buf()))
        }

        fn sethostname(&self, name: &str) -> Result<(), Errno> {
            self.record(Call::Sethostname(name.to_string()))
        }

        fn syncfs(&self, dir: &Path) -> Result<(), Errno> {
            self.record(Call::Syncfs(dir.to_path_buf()))
        }

        fn set_link_up(&self, name: &str) -> io::Result<()> {
            Ok(self.record(Call::LinkUp(name.to_string()))?)
        }

        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            self.record(Call::Read(path.to_path_buf()))?;
            self.reads
                .lock()
                .unwrap()
                .get_mut(path)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Err(io::ErrorKind::NotFound.into()))
        }
    }
}
