//! The `process` backend: the agent runs on the host, in fresh mount, PID, IPC and UTS
//! namespaces (joining the pod's network namespace when there is one), reached over a Unix
//! socket. Container rootfs and volumes reach it through the sandbox's shared directory,
//! which it sees directly (its mount namespace is a slave copy of the host's).
//!
//! This gives **no VM isolation**: containers share the host kernel like runc's. It exists
//! for hosts without hardware virtualization, and says so in the log at every start.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ember_agent_protocol::agent::Storage;
use ember_config::Backend as BackendKind;
use log::warn;
use nix::sched::CloneFlags;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{Backend, SandboxError, SandboxExit, StartContext};
use crate::endpoint::AgentEndpoint;
use crate::state::{ProcessId, Resource};

/// Longest Unix socket path (sun_path holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The agent binds each socket as `<path>.tmp<its pid>` first and renames it when it
/// listens; it is PID 1 of its new PID namespace, so that name is 5 bytes longer.
const AGENT_BIND_SUFFIX: &str = ".tmp1";

/// The agent binary: `$EMBER_AGENT`, else `ember-agent` next to the running executable,
/// else on `PATH` ([`super::companion_binary`]).
pub fn agent_binary() -> Option<PathBuf> {
    super::companion_binary("EMBER_AGENT", "ember-agent")
}

/// The `process` backend.
#[derive(Default)]
pub struct ProcessBackend {
    pid: Option<i32>,
    log: Option<PathBuf>,
    shared: PathBuf,
    exit: Mutex<Option<watch::Receiver<Option<SandboxExit>>>>,
}

impl ProcessBackend {
    fn exit_receiver(&self) -> Option<watch::Receiver<Option<SandboxExit>>> {
        self.exit.lock().expect("exit lock").clone()
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn start(&mut self, ctx: StartContext<'_>) -> Result<AgentEndpoint, SandboxError> {
        warn!(
            "sandbox={}: backend \"process\" gives NO VM isolation: the containers share the host kernel; use a host with hardware virtualization and sandbox.backend = \"microvm\" for isolation",
            ctx.id
        );
        let fail = |message: String| SandboxError::Backend {
            id: ctx.id.to_string(),
            message,
        };
        let agent = agent_binary().ok_or_else(|| {
            fail("ember-agent not found (looked at $EMBER_AGENT, next to this program, and on PATH); install it with `make install`".into())
        })?;
        let dir = ctx.state.dir().to_path_buf();
        // A one-letter name: with CRI's 64-character sandbox ids, every byte of the
        // socket path counts against the 107-byte limit.
        let socket = dir.join("a");
        if socket.as_os_str().len()
            + ember_agent_protocol::address::UNIX_STREAM_SUFFIX.len()
            + AGENT_BIND_SUFFIX.len()
            > MAX_SOCKET_PATH
        {
            return Err(fail(format!(
                "agent socket path {}{}{AGENT_BIND_SUFFIX} is longer than {MAX_SOCKET_PATH} bytes; set a shorter sandbox.state_dir",
                socket.display(),
                ember_agent_protocol::address::UNIX_STREAM_SUFFIX,
            )));
        }
        let agent_state = dir.join("agent");
        let log_path = dir.join("agent.log");
        self.log = Some(log_path.clone());
        self.shared = ctx.shared_dir.to_path_buf();
        ctx.state.add(Resource::Socket {
            path: socket.clone(),
        })?;
        let mut stdio_sock = socket.clone().into_os_string();
        stdio_sock.push(ember_agent_protocol::address::UNIX_STREAM_SUFFIX);
        ctx.state.add(Resource::Socket {
            path: stdio_sock.into(),
        })?;

        let netns = match ctx.netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|e| {
                fail(format!(
                    "network namespace {} (linux.namespaces network path): {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        // The agent's log names containers, paths and errors: root's only.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
        let devnull =
            std::fs::File::open("/dev/null").map_err(|e| fail(format!("/dev/null: {e}")))?;

        // Everything the child needs is prepared here: between clone and execve it only
        // makes async-signal-safe system calls (setns, dup2, execve), which is what makes
        // cloning from a multi-threaded process sound.
        let prog = cstr(&agent);
        let args: Vec<CString> = [
            "ember-agent".to_string(),
            "--listen".into(),
            format!("unix://{}", socket.display()),
            "--state-dir".into(),
            agent_state.display().to_string(),
            "--init".into(),
            "namespace".into(),
            "--log-level".into(),
            serde_json::to_value(ctx.config.agent.log_level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "info".into()),
        ]
        .into_iter()
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != "NOTIFY_SOCKET")
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).expect("env has no NUL")
            })
            .collect();
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let netns_fd = netns.as_ref().map(|f| f.as_fd());
        let (log_fd, null_fd) = (log_file.as_raw_fd(), devnull.as_raw_fd());
        let mut stack = vec![0u8; 64 * 1024];
        let flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        let child = Box::new(|| -> isize {
            // SAFETY: only async-signal-safe calls on fds and pointers prepared above.
            unsafe {
                if let Some(fd) = netns_fd {
                    if ember_sys::netns::enter(fd).is_err() {
                        return 126;
                    }
                }
                libc::dup2(null_fd, 0);
                libc::dup2(log_fd, 1);
                libc::dup2(log_fd, 2);
                libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            127
        });
        // SAFETY: the child runs the closure above on its own stack and then execs.
        let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
            .map_err(|e| fail(format!("cannot start the agent in new namespaces: {e}")))?;
        let pid = pid.as_raw();
        self.pid = Some(pid);
        if let Some(id) = ProcessId::of(pid) {
            ctx.state.add(Resource::Process {
                role: "agent".into(),
                id,
            })?;
        }
        let rx = watch_exit(pid).map_err(|e| fail(format!("cannot watch the agent: {e}")))?;
        *self.exit.lock().expect("exit lock") = Some(rx);
        Ok(AgentEndpoint::Unix(socket))
    }

    fn agent_shared_dir(&self) -> PathBuf {
        // The agent sees the host's shared directory at the same path.
        self.shared.clone()
    }

    fn sandbox_storages(&self) -> Vec<Storage> {
        Vec::new()
    }

    fn pid(&self) -> u32 {
        self.pid.unwrap_or(0) as u32
    }

    fn log_path(&self) -> Option<PathBuf> {
        self.log.clone()
    }

    async fn wait(&self) -> SandboxExit {
        let Some(mut rx) = self.exit_receiver() else {
            return std::future::pending().await;
        };
        loop {
            if let Some(e) = rx.borrow().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn stop(&self, grace: Duration) {
        let Some(pid) = self.pid else { return };
        let Some(mut rx) = self.exit_receiver() else {
            return;
        };
        let exited = rx.borrow().is_some();
        if exited {
            return;
        }
        // SIGTERM: the agent removes its containers and exits. Then SIGKILL, which also
        // kills every process of its PID namespace.
        // SAFETY: pid is our own unreaped child, so it cannot have been recycled.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let done = tokio::time::timeout(grace, rx.wait_for(|e| e.is_some()))
            .await
            .is_ok();
        if !done {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.wait_for(|e| e.is_some()).await.map(|_| ());
        }
    }
}

/// Watches child `pid` through a pidfd and reaps it when it exits. (The shim runs without
/// containerd-shim's SIGCHLD reaper, so nothing else waits for this child.)
fn watch_exit(pid: i32) -> std::io::Result<watch::Receiver<Option<SandboxExit>>> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh pidfd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the pidfd is owned by the AsyncFd for its whole registration.
    let afd = unsafe { AsyncFd::register(fd)? };
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let _ = afd.readable().await;
        let status = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => format!("exit status {code}"),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                format!("killed by signal {}", sig as i32)
            }
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = tx.send(Some(SandboxExit { status }));
    });
    Ok(rx)
}
