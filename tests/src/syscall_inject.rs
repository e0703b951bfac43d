//! Make a running thread of another process call a system call of the test's choosing,
//! with ptrace, to check what that process's seccomp filter does with it.
//!
//! No test backdoor in the product is needed: as root (`CAP_SYS_PTRACE`, which reaches
//! even a process that made itself not dumpable, as the jailed VMM does), the test seizes
//! the thread ([`inject_syscall`]), interrupts it, lets it run to its next
//! syscall-entry stop, replaces the system call's number (`orig_rax`) and lets it go on.
//! Since Linux 4.8 seccomp runs after the ptrace syscall-entry stop, so the filter sees
//! the replaced number: one outside the thread's filter (with `SECCOMP_RET_KILL_PROCESS`)
//! kills the whole process with SIGSYS, which a tracer cannot intercept.
//!
//! x86_64 only (the VMM's filters are too).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;

/// How many stops [`inject_syscall`] lets pass (signals, syscall-exit stops) before it
/// gives up waiting for a syscall-entry stop.
const MAX_STOPS: usize = 100;

/// A failure of [`inject_syscall`].
#[derive(Debug, Error)]
pub enum InjectError {
    /// A ptrace or wait call failed.
    #[error("{what} on thread {tid}: {errno} (needs root with CAP_SYS_PTRACE; Yama's kernel.yama.ptrace_scope=3 or an LSM refuses any attach)")]
    Ptrace {
        /// Which call.
        what: &'static str,
        /// The thread.
        tid: i32,
        /// Why.
        errno: Errno,
    },
    /// The thread ended before it reached a system call.
    #[error("thread {tid} ended before its next system call: {status:?}")]
    EndedEarly {
        /// The thread.
        tid: i32,
        /// How it ended.
        status: WaitStatus,
    },
    /// The thread made no system call within [`MAX_STOPS`] stops.
    #[error("thread {tid} reached no syscall-entry stop within {MAX_STOPS} stops")]
    NoSyscall {
        /// The thread.
        tid: i32,
    },
    /// The injected system call ran (its result is known), or the thread was still alive
    /// at the deadline: its filter let the call through. The thread was detached and runs
    /// on (with the injected call's result where the replaced call's was expected).
    #[error("thread {tid} survived system call {syscall} (which replaced {replaced}; result {result:?}): its seccomp filter let it through")]
    Survived {
        /// The thread.
        tid: i32,
        /// The injected system call.
        syscall: i64,
        /// The system call it replaced.
        replaced: i64,
        /// What the call returned, if the thread was seen leaving it.
        result: Option<i64>,
    },
}

/// What [`inject_syscall`] did and how the thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The number of the system call the thread was entering, which was replaced.
    pub replaced: i64,
    /// The signal that killed the thread (reaped by the tracer: the test).
    pub signal: Signal,
}

/// The thread of process `pid` whose name (`/proc/PID/task/TID/comm`) is `name`.
pub fn thread_named(pid: i32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// Seize thread `tid` (of any process), interrupt it, let it run to its next
/// syscall-entry stop, replace that system call by `syscall` (its arguments stay the
/// original call's) and let it go on; then wait up to `deadline` for the thread to be
/// killed and reap it, or to leave the call alive. Must be called from one thread throughout (ptrace requests come
/// from the tracing thread); blocks for at most about `deadline` once the thread is
/// stopped.
///
/// The thread is killed if `syscall` is outside its seccomp filter (then the signal is
/// SIGSYS); otherwise it is detached and [`InjectError::Survived`] says so.
pub fn inject_syscall(tid: i32, syscall: i64, deadline: Duration) -> Result<Injected, InjectError> {
    let pid = Pid::from_raw(tid);
    let err = |what| move |errno| InjectError::Ptrace { what, tid, errno };
    let wait = || waitpid(pid, Some(WaitPidFlag::__WALL)).map_err(err("waitpid"));
    ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD).map_err(err("PTRACE_SEIZE"))?;
    ptrace::interrupt(pid).map_err(err("PTRACE_INTERRUPT"))?;
    // The interrupt's stop first (or whatever stop came before it).
    let mut status = wait()?;
    let mut stops = 0;
    let regs = loop {
        stops += 1;
        if stops > MAX_STOPS {
            let _ = ptrace::detach(pid, None);
            return Err(InjectError::NoSyscall { tid });
        }
        let resend = match status {
            WaitStatus::PtraceSyscall(_) => {
                let regs = ptrace::getregs(pid).map_err(err("PTRACE_GETREGS"))?;
                // At a syscall-entry stop the kernel has set rax to -ENOSYS; at an exit
                // stop it holds the result.
                if regs.rax == -(libc::ENOSYS as i64) as u64 {
                    break regs;
                }
                None
            }
            WaitStatus::PtraceEvent(..) => None,
            // A signal-delivery stop: the signal is passed on.
            WaitStatus::Stopped(_, sig) => Some(sig),
            other => return Err(InjectError::EndedEarly { tid, status: other }),
        };
        ptrace::syscall(pid, resend).map_err(err("PTRACE_SYSCALL"))?;
        status = wait()?;
    };
    let replaced = regs.orig_rax as i64;
    let mut injected = regs;
    injected.orig_rax = syscall as u64;
    ptrace::setregs(pid, injected).map_err(err("PTRACE_SETREGS"))?;
    // On to the call's syscall-exit stop, if it gets one: a call the filter kills is
    // rolled back (rax holds its number again, for the core dump) and its thread dies at
    // the SIGSYS, which no tracer can stop; a call that ran holds its result there.
    ptrace::syscall(pid, None).map_err(err("PTRACE_SYSCALL"))?;
    let start = Instant::now();
    let ran = loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG))
            .map_err(err("waitpid"))?
        {
            WaitStatus::Signaled(_, signal, _) => return Ok(Injected { replaced, signal }),
            WaitStatus::StillAlive if start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            WaitStatus::StillAlive => {
                // Running at the deadline: stop it, to detach it.
                let _ = ptrace::interrupt(pid);
                let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
                break None;
            }
            WaitStatus::PtraceSyscall(_) => {
                let rax = ptrace::getregs(pid).map_err(err("PTRACE_GETREGS"))?.rax as i64;
                if rax != syscall {
                    break Some(rax);
                }
                ptrace::cont(pid, None).map_err(err("PTRACE_CONT"))?;
            }
            WaitStatus::PtraceEvent(..) => ptrace::cont(pid, None).map_err(err("PTRACE_CONT"))?,
            WaitStatus::Stopped(_, sig) => ptrace::cont(pid, sig).map_err(err("PTRACE_CONT"))?,
            other => return Err(InjectError::EndedEarly { tid, status: other }),
        }
    };
    let _ = ptrace::detach(pid, None);
    Err(InjectError::Survived {
        tid,
        syscall,
        replaced,
        result: ran,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child that installs a seccomp filter killing the process on `ptrace`, then
    /// sleeps in a loop (nanosleep).
    fn sleeping_child() -> Pid {
        // SAFETY: the child makes raw system calls only and never returns.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw system calls in the child; it ends with _exit.
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                {
                    // Kill the process on ptrace(2), allow everything else.
                    let mut prog = [
                        libc::sock_filter {
                            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                            jt: 0,
                            jf: 0,
                            k: 0, // seccomp_data.nr
                        },
                        libc::sock_filter {
                            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                            jt: 0,
                            jf: 1,
                            k: libc::SYS_ptrace as u32,
                        },
                        libc::sock_filter {
                            code: (libc::BPF_RET | libc::BPF_K) as u16,
                            jt: 0,
                            jf: 0,
                            k: libc::SECCOMP_RET_KILL_PROCESS,
                        },
                        libc::sock_filter {
                            code: (libc::BPF_RET | libc::BPF_K) as u16,
                            jt: 0,
                            jf: 0,
                            k: libc::SECCOMP_RET_ALLOW,
                        },
                    ];
                    let fprog = libc::sock_fprog {
                        len: prog.len() as u16,
                        filter: prog.as_mut_ptr(),
                    };
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &fprog as *const _ as libc::c_ulong,
                    ) != 0
                    {
                        libc::_exit(100);
                    }
                }
                let t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                for _ in 0..60_000 {
                    libc::nanosleep(&t, std::ptr::null_mut());
                }
                libc::_exit(7);
            }
        }
        // Injected before the filter is in place, the call would run.
        let status = format!("/proc/{pid}/status");
        let start = Instant::now();
        while !std::fs::read_to_string(&status)
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"]))
        {
            assert!(start.elapsed() < Duration::from_secs(10), "no filter");
            std::thread::sleep(Duration::from_millis(5));
        }
        Pid::from_raw(pid)
    }

    #[test]
    fn a_syscall_outside_the_filter_kills_the_process_and_one_inside_does_not() {
        if !crate::require_root("syscall_inject::tests", "ptrace") {
            return;
        }
        let child = sleeping_child();
        let got = inject_syscall(child.as_raw(), libc::SYS_ptrace, Duration::from_secs(10));
        // The process is a child of this test too: reap its leader (the thread itself).
        let _ = waitpid(child, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG));
        let got = got.unwrap();
        assert_eq!(got.signal, Signal::SIGSYS);
        // The interrupted sleep goes on as restart_syscall.
        assert!(
            [
                libc::SYS_nanosleep,
                libc::SYS_clock_nanosleep,
                libc::SYS_restart_syscall
            ]
            .contains(&got.replaced),
            "{got:?}"
        );
        // An allowed call: the thread survives, detached, and runs on.
        let child = sleeping_child();
        let e = inject_syscall(child.as_raw(), libc::SYS_getpid, Duration::from_millis(300))
            .unwrap_err();
        assert!(
            matches!(e, InjectError::Survived { result: Some(r), .. } if r == i64::from(child.as_raw())),
            "{e}"
        );
        nix::sys::signal::kill(child, Signal::SIGKILL).unwrap();
        assert!(matches!(
            waitpid(child, None).unwrap(),
            WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
    }
}
