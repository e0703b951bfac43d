//! Per-thread seccomp filters of the VMM's threads, built with seccompiler.
//!
//! Each kind of VMM thread gets its own allow-list ([`ThreadKind`]): the vCPU threads
//! (KVM_RUN and the port-I/O and MMIO exits handled on them) and the device thread (epoll
//! and every device's queue work: virtio-blk file I/O, virtio-fs passthrough, vsock Unix
//! sockets, the tap, getrandom, the rate limiters' timers). Any other system call kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`): while the VMM runs as threads of the shim, a guest that
//! took over a device model must not get to use the shim's privileges.
//!
//! A thread installs its filter itself, as the first thing it does ([`Filter::apply`]);
//! the filter then stays for the thread's life and is inherited by threads it creates
//! (none do). Other threads of the process are not affected.
//!
//! The lists are derived from the code that runs on each thread (read, and checked under
//! `strace -f` on the VMM's tests); a comment per group says who needs it. A device that
//! gains a system call must add it here, or the VMM dies of SIGSYS the first time the
//! guest makes it take that path.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// The kinds of VMM thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread (`vcpu.rs`): KVM_RUN, and the port-I/O and MMIO exits it dispatches
    /// (legacy devices, the virtio-mmio transports, device activation).
    Vcpu,
    /// The device thread (`event_loop.rs`): epoll and every device's queue processing.
    Devices,
    /// The thread that serves the runtime's control channel in a confined `ember-vmm`
    /// process (`control/server.rs`): messages and fds on its socket, disk attach and
    /// detach, the exit latch.
    Control,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Devices => "device",
            ThreadKind::Control => "control",
        })
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The rules could not be turned into a BPF program (a bug in this module's rules).
    #[error("cannot build the {kind} thread's seccomp filter: {source} (a bug in ember's filter rules; report it)")]
    Build {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind} thread's seccomp filter: {source} (does the host kernel have CONFIG_SECCOMP_FILTER? `ember-vmm --no-seccomp` or `VmConfig::seccomp = false` runs without filters, for diagnosis only)")]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
    /// The thread could not drop its capabilities.
    #[error("cannot set the {kind} thread's capabilities: {source}")]
    Capabilities {
        /// Which thread.
        kind: ThreadKind,
        /// Why.
        source: caps::errors::CapsError,
    },
    /// The filters are written for x86_64 system calls only.
    #[error(
        "seccomp filters exist for x86_64 only, not {0}; run with seccomp off (`--no-seccomp`)"
    )]
    UnsupportedArch(&'static str),
}

/// A compiled filter for one kind of thread; cheap to clone (one per vCPU).
///
/// It may also carry the capabilities the thread keeps ([`Filter::with_capabilities`]):
/// capabilities are per thread in Linux, so a jailed VMM's threads each set theirs, as
/// they install their filter (capset is not on the vCPU list).
#[derive(Debug, Clone)]
pub struct Filter {
    kind: ThreadKind,
    program: Arc<BpfProgram>,
    capabilities: Option<Arc<caps::CapsHashSet>>,
}

impl Filter {
    /// Compile the filter of `kind`.
    pub fn new(kind: ThreadKind) -> Result<Self, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .ok()
            .filter(|a| *a == TargetArch::x86_64)
            .ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
        let rules = match kind {
            ThreadKind::Vcpu => vcpu_rules(),
            ThreadKind::Devices => device_rules(),
            ThreadKind::Control => control_rules(),
        }
        .map_err(|source| SeccompError::Build { kind, source })?;
        let filter = SeccompFilter::new(
            rules.0,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .map_err(|e| SeccompError::Build {
            kind,
            source: e.into(),
        })?;
        let program = BpfProgram::try_from(filter).map_err(|e| SeccompError::Build {
            kind,
            source: e.into(),
        })?;
        Ok(Self {
            kind,
            program: Arc::new(program),
            capabilities: None,
        })
    }

    /// The same filter, for a thread that first sets its effective and permitted
    /// capabilities to exactly `keep` and clears its inheritable and ambient ones.
    pub fn with_capabilities(mut self, keep: caps::CapsHashSet) -> Self {
        self.capabilities = Some(Arc::new(keep));
        self
    }

    /// The capabilities a thread keeps, if the filter sets them.
    pub fn capabilities(&self) -> Option<&caps::CapsHashSet> {
        self.capabilities.as_deref()
    }

    /// Which kind of thread this filter is for.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Install the filter on the calling thread (after `PR_SET_NO_NEW_PRIVS`, which
    /// seccompiler sets). From then on every system call outside the list kills the
    /// process.
    pub fn apply(&self) -> Result<(), SeccompError> {
        if let Some(keep) = &self.capabilities {
            restrict_capabilities(keep).map_err(|source| SeccompError::Capabilities {
                kind: self.kind,
                source,
            })?;
        }
        seccompiler::apply_filter(&self.program).map_err(|source| SeccompError::Install {
            kind: self.kind,
            source,
        })
    }
}

/// The filters of both thread kinds, compiled once per VM (before any thread starts, so
/// a broken rule fails `Vm::new`, not a running VM).
#[derive(Debug, Clone)]
pub struct Filters {
    /// For every vCPU thread.
    pub vcpu: Filter,
    /// For the device thread.
    pub devices: Filter,
}

impl Filters {
    /// Compile both filters.
    pub fn new() -> Result<Self, SeccompError> {
        Ok(Self {
            vcpu: Filter::new(ThreadKind::Vcpu)?,
            devices: Filter::new(ThreadKind::Devices)?,
        })
    }
}

/// Set the calling thread's effective and permitted capabilities to exactly `keep`
/// (effective first: it must stay a subset of permitted) and clear its inheritable and
/// ambient ones. Only ever lowers them: a capability outside the permitted set cannot
/// come back.
pub fn restrict_capabilities(keep: &caps::CapsHashSet) -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    let keep: caps::CapsHashSet = keep
        .intersection(&caps::read(None, CapSet::Permitted)?)
        .copied()
        .collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())?;
    caps::set(None, CapSet::Permitted, &keep)
}

/// Errors of starting a confined thread.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The thread (or what it needs, such as its epoll instance) could not be created.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The thread could not install its filter; it ended without running anything.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Start a thread named `name` that installs `filter` (if any) before anything else, then
/// runs `body`. Returns once the filter is in place, so a filter the kernel refuses is
/// this call's error rather than a thread that runs unconfined.
///
/// The thread also blocks every asynchronous signal but `take_signals` (a vCPU's kick):
/// a signal sent to the process (the shim's SIGCHLD, say) must be handled on one of the
/// process's other threads, because its handler may make calls the filter forbids.
pub fn spawn_confined<F>(
    name: String,
    filter: Option<Filter>,
    take_signals: &[i32],
    body: F,
) -> Result<std::thread::JoinHandle<()>, SpawnError>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let take_signals = take_signals.to_vec();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            block_async_signals(&take_signals);
            // Before the filter, which does not allow unshare: virtio-fs clears the umask
            // of the thread that serves FUSE_INIT, and it must stay on that thread.
            if let Err(source) = crate::devices::virtio::fs::unshare_fs_context() {
                let _ = tx.send(Err(SpawnError::Thread {
                    name: std::thread::current()
                        .name()
                        .unwrap_or_default()
                        .to_string(),
                    source,
                }));
                return;
            }
            let installed = filter
                .as_ref()
                .map_or(Ok(()), Filter::apply)
                .map_err(SpawnError::from);
            let ok = installed.is_ok();
            let _ = tx.send(installed);
            if ok {
                body();
            }
        })
        .map_err(|source| SpawnError::Thread {
            name: name.clone(),
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(SpawnError::Thread {
            name,
            source: std::io::Error::other("the thread ended before reporting its seccomp filter"),
        }),
    }
}

/// Block every signal on the calling thread except `take`, those a fault raises
/// synchronously (which must reach it) and SIGABRT (a panic's abort).
fn block_async_signals(take: &[i32]) {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask changes only this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        let synchronous = [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ];
        for &sig in synchronous.iter().chain(take) {
            libc::sigdelset(&mut set, sig);
        }
        // Unblocks `take` too, should the spawning thread block it.
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The KVM ioctls the vCPU threads make, from `linux/kvm.h` (kvm-ioctls keeps its own
/// numbers private).
#[allow(non_snake_case)]
mod kvm {
    use kvm_bindings::{kvm_regs, kvm_sregs, KVMIO};
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
}

/// A rule set under construction: syscall number → rules (an empty list allows the call
/// with any arguments; otherwise any one matching rule allows it).
#[derive(Default)]
struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    /// Allow each of `syscalls` with any arguments.
    fn allow(&mut self, syscalls: &[i64]) -> &mut Self {
        for &nr in syscalls {
            self.0.insert(nr, Vec::new());
        }
        self
    }

    /// Allow `syscall` when one of `rules` matches (unless it is already allowed outright).
    fn allow_if(&mut self, syscall: i64, rules: Vec<SeccompRule>) -> &mut Self {
        match self.0.get_mut(&syscall) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.extend(rules),
            None => {
                self.0.insert(syscall, rules);
            }
        }
        self
    }
}

/// One rule: all of `conditions` hold. Each is (argument index, operation, value) on the
/// argument's low 32 bits (every argument compared here is an int or a flag word).
fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> Result<SeccompRule, seccompiler::Error> {
    let conditions = conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

/// `ioctl(fd, request, ...)` for any of `requests`.
fn ioctl_requests(requests: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    requests
        .iter()
        .map(|r| rule(&[(1, SeccompCmpOp::Eq, *r)]))
        .collect()
}

/// Rules every VMM thread needs to be a Rust thread at all.
fn thread_runtime(r: &mut Rules) -> Result<(), seccompiler::Error> {
    use libc::*;
    // The allocator (glibc malloc: arenas, large buffers such as virtio-blk's bounce
    // buffer and the vsock/net frame buffers) and std's thread exit (stack guard,
    // alternate signal stack). Never executable memory: mmap and mprotect are allowed
    // only without PROT_EXEC (argument 2).
    let no_exec = || rule(&[(2, SeccompCmpOp::MaskedEq(PROT_EXEC as u64), 0)]);
    r.allow_if(SYS_mmap, vec![no_exec()?]);
    r.allow_if(SYS_mprotect, vec![no_exec()?]);
    r.allow(&[SYS_munmap, SYS_mremap, SYS_madvise, SYS_brk]);
    // Mutexes, condition variables, Arc/channel wake-ups, thread join and park.
    r.allow(&[SYS_futex, SYS_sched_yield]);
    // Time: std's Instant (the guest-log rate limiter, event-loop timeouts) goes through
    // the vDSO, which falls back to the system call on some clock sources.
    r.allow(&[
        SYS_clock_gettime,
        SYS_gettimeofday,
        SYS_nanosleep,
        SYS_clock_nanosleep,
    ]);
    // std seeds a thread's HashMap keys from getrandom the first time the thread makes a
    // HashMap (harmless: it only reads randomness). virtio-rng's source too.
    r.allow(&[SYS_getrandom]);
    // Signals: the vCPU kick handler returns through rt_sigreturn; std tears down the
    // thread's alternate signal stack at exit; glibc masks signals around some calls.
    r.allow(&[SYS_rt_sigreturn, SYS_sigaltstack, SYS_rt_sigprocmask]);
    // Thread exit, and `process::exit`/abort from a VMM thread (panic = "abort" in
    // release builds ends the process with SIGABRT, raised with tgkill: allowed for
    // SIGABRT in this process only, the pid the filter is built in).
    r.allow(&[SYS_exit, SYS_exit_group, SYS_gettid, SYS_getpid]);
    let pid = u64::from(std::process::id());
    r.allow_if(
        SYS_tgkill,
        vec![rule(&[
            (0, SeccompCmpOp::Eq, pid),
            (2, SeccompCmpOp::Eq, SIGABRT as u64),
        ])?],
    );
    // Logging (`log` to stderr, the shim's log FIFO) and closing what the thread drops
    // (the last reference to a device, an eventfd, the vCPU fd at thread exit).
    r.allow(&[SYS_write, SYS_writev, SYS_close]);
    // std checks that an fd is still open before it closes it (debug builds).
    r.allow_if(
        SYS_fcntl,
        vec![rule(&[(1, SeccompCmpOp::Eq, F_GETFD as u64)])?],
    );
    Ok(())
}

/// The vCPU threads' rules.
fn vcpu_rules() -> Result<Rules, seccompiler::Error> {
    use libc::*;
    let mut r = Rules::default();
    thread_runtime(&mut r)?;
    // KVM_RUN; the registers are read to log where a vCPU stopped (triple fault, error,
    // trace level).
    r.allow_if(
        SYS_ioctl,
        ioctl_requests(&[kvm::KVM_RUN(), kvm::KVM_GET_REGS(), kvm::KVM_GET_SREGS()])?,
    );
    // Port I/O and MMIO exits: interrupts (serial irqfd, virtio irqfds) and the exit
    // latch are eventfd writes (write, above); the serial console's log file is written,
    // compacted and truncated in place (`ConsoleLog`: pwrite64, pread64, ftruncate).
    r.allow(&[SYS_pwrite64, SYS_pread64, SYS_ftruncate]);
    Ok(r)
}

/// The control thread's rules (`control/server.rs`, in a jailed `ember-vmm`).
fn control_rules() -> Result<Rules, seccompiler::Error> {
    use libc::*;
    let mut r = Rules::default();
    thread_runtime(&mut r)?;
    // The control channel: a SOCK_SEQPACKET socket, one message per packet, a disk's fd
    // in SCM_RIGHTS (recvmsg, sendmsg), waited on together with the VM's exit latch
    // (poll; the latch's eventfd is read with `read`).
    r.allow(&[SYS_recvmsg, SYS_sendmsg, SYS_poll, SYS_ppoll, SYS_read]);
    // Attach: the disk fd the runtime sent is measured (`Backing::from_file`: std's
    // metadata is statx, fstat on older kernels; its size by lseek to the end) and
    // closed at detach (close, every thread may). The slot's configuration interrupt
    // is an eventfd write (write, every thread may).
    r.allow(&[SYS_statx, SYS_fstat, SYS_lseek]);
    // The received fd is made close-on-exec by MSG_CMSG_CLOEXEC; nothing else of fcntl.
    // Pause: the vCPU threads are kicked out of KVM_RUN with the kick signal, in this
    // process only (tgkill's other allowed use, SIGABRT, is in `thread_runtime`).
    let pid = u64::from(std::process::id());
    r.allow_if(
        SYS_tgkill,
        vec![rule(&[
            (0, SeccompCmpOp::Eq, pid),
            (2, SeccompCmpOp::Eq, crate::vcpu::kick_signal() as u64),
        ])?],
    );
    Ok(r)
}

/// The device thread's rules.
fn device_rules() -> Result<Rules, seccompiler::Error> {
    use libc::*;
    let mut r = Rules::default();
    thread_runtime(&mut r)?;
    // The event loop (event-manager): epoll; eventfds of queues and of the stop request.
    r.allow(&[
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_epoll_ctl,
        SYS_read,
        SYS_readv,
    ]);
    // virtio-blk: reads and writes at an offset, flush.
    r.allow(&[
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_fdatasync,
        SYS_fsync,
    ]);
    // Rate limiters of virtio-blk and virtio-net: a blocked limiter arms its timerfd (made
    // before the thread started; it is read with `read`, above) and reads the monotonic
    // clock (clock_gettime, every thread may).
    r.allow(&[SYS_timerfd_settime]);
    // virtio-rng: getrandom (every thread may).
    // virtio-net: the tap is read and written (read, write above); it was opened and
    // configured (TUNSETIFF and friends) before the thread started, so no tap ioctl.
    //
    // virtio-vsock: the muxer accepts host connections on its Unix socket, connects to
    // `PATH_<port>` for guest connections (non-blocking AF_UNIX sockets only), makes
    // accepted sockets non-blocking (std: ioctl FIONBIO), shuts down a side, and removes
    // its socket file when the device is dropped on this thread. std's socket reads and
    // writes are recvfrom and sendto (MSG_NOSIGNAL).
    r.allow(&[
        SYS_accept4,
        SYS_connect,
        SYS_shutdown,
        SYS_recvfrom,
        SYS_sendto,
    ]);
    r.allow_if(
        SYS_socket,
        vec![rule(&[(0, SeccompCmpOp::Eq, AF_UNIX as u64)])?],
    );
    r.allow_if(SYS_ioctl, ioctl_requests(&[FIONBIO])?);
    // virtio-fs (fuse-backend-rs passthrough, `xattr` off): path walks and opens relative
    // to inode fds (openat on /proc/self/fd/N), attributes, directory reads, every
    // modifying FUSE operation, lseek (SEEK_DATA/SEEK_HOLE), statfs, fd duplication.
    r.allow(&[
        SYS_openat,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_lseek,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_mkdirat,
        SYS_mknodat,
        SYS_symlinkat,
        SYS_linkat,
        SYS_unlinkat,
        SYS_unlink,
        SYS_renameat2,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_fchownat,
        SYS_fchown,
        SYS_utimensat,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_fstatfs,
        SYS_fcntl,
        SYS_dup,
        SYS_getuid,
        SYS_getgid,
    ]);
    // virtio-fs: requests run with the guest caller's uid and gid (per-thread
    // setresuid/setresgid of the effective id only, back to root afterwards: real and
    // saved ids stay as they are, -1) and drop CAP_FSETID around writes (capget/capset
    // on this thread).
    let effective_only = || {
        rule(&[
            (0, SeccompCmpOp::Eq, u64::from(u32::MAX)),
            (2, SeccompCmpOp::Eq, u64::from(u32::MAX)),
        ])
    };
    r.allow_if(SYS_setresuid, vec![effective_only()?]);
    r.allow_if(SYS_setresgid, vec![effective_only()?]);
    r.allow(&[SYS_capget, SYS_capset]);
    // virtio-fs: FUSE_INIT re-imports the share (`do_import`), which clears the umask
    // (of this thread only: `spawn_confined` unshares CLONE_FS) so that the guest's modes
    // apply unmasked; only umask(0) is allowed.
    r.allow_if(SYS_umask, vec![rule(&[(0, SeccompCmpOp::Eq, 0)])?]);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        let control = Filter::new(ThreadKind::Control).expect("the control filter compiles");
        assert_eq!(control.kind(), ThreadKind::Control);
        assert!(control.capabilities().is_none());
        let f = Filters::new().expect("filters compile");
        assert_eq!(f.vcpu.kind(), ThreadKind::Vcpu);
        assert_eq!(f.devices.kind(), ThreadKind::Devices);
        assert!(!f.vcpu.program.is_empty());
        assert!(f.devices.program.len() > f.vcpu.program.len());
    }

    #[test]
    fn kvm_ioctl_numbers_match_linux() {
        assert_eq!(kvm::KVM_RUN(), 0xae80);
        assert_eq!(kvm::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(kvm::KVM_GET_SREGS(), 0x8138_ae83);
    }

    #[test]
    fn a_rule_for_an_allowed_syscall_keeps_it_unconditional() {
        let mut r = Rules::default();
        r.allow(&[libc::SYS_ioctl]);
        r.allow_if(libc::SYS_ioctl, ioctl_requests(&[1]).unwrap());
        assert!(r.0[&libc::SYS_ioctl].is_empty());
        let mut r = Rules::default();
        r.allow_if(libc::SYS_ioctl, ioctl_requests(&[1]).unwrap());
        r.allow_if(libc::SYS_ioctl, ioctl_requests(&[2]).unwrap());
        assert_eq!(r.0[&libc::SYS_ioctl].len(), 2);
    }
}
