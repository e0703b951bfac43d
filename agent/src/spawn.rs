//! Creating container processes through youki's `libcontainer`, from a single-threaded
//! helper process.
//!
//! Why a helper: `libcontainer` forks/clones (`clone3`) the calling process to build the
//! intermediate and init processes, and those children go on running Rust code (allocating,
//! formatting errors, taking locks) before they exec. In the agent, a multi-threaded tokio
//! process, another thread may hold the allocator's or a library's lock at the moment of
//! the fork, and the child would deadlock on it. So the agent re-executes itself as
//! `ember-agent spawn REQUEST` (a fresh, single-threaded process with no runtime) for the
//! two operations that fork: creating a container (`ContainerBuilder::as_init`) and
//! executing a process in it (`ContainerBuilder::as_tenant`), and for start and delete
//! of containers with hooks (libcontainer waits for each hook child, which the agent's
//! reaper would otherwise reap first).
//!
//! One helper is always started ahead of time ("warm"), so that its exec, dynamic linking
//! and start-up are off the container's critical path. It waits on fd 3, one end of a
//! `SOCK_SEQPACKET` socket pair, for one message: the JSON request with the new process's
//! stdin, stdout and stderr attached (`SCM_RIGHTS`), which it installs as its own fds 0-2
//! for libcontainer to hand down. It answers `{"Ok": pid}` or `{"Err": message}` in one
//! message on the same socket and exits; the agent then starts the next warm helper. The container process, a child of the helper, is then re-parented to
//! the agent (PID 1 or a child subreaper), which reaps it and so learns its exact exit
//! status. Kill, pause, resume, and start and delete of hook-less containers do not fork
//! and run in the agent.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use tokio::sync::oneshot;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::reaper::Reaper;

/// The helper's end of its socket pair.
const HELPER_FD: i32 = 3;
/// Largest request or result message.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum SpawnRequest {
    /// Create a container from a bundle; its init waits for `start`.
    Create {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
        /// Bundle directory holding the agent's `config.json`.
        bundle: PathBuf,
        /// Unix socket on which the init sends its terminal's master fd.
        console_socket: Option<PathBuf>,
    },
    /// Execute a process in a running container.
    Exec {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
        /// Path of the OCI `process` JSON.
        process: PathBuf,
        /// Unix socket on which the process sends its terminal's master fd.
        console_socket: Option<PathBuf>,
    },
    /// Start a created container whose spec has hooks (poststart hooks are child
    /// processes that libcontainer waits for, which the agent's reaper would steal).
    Start {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
    },
    /// Delete a container whose spec has hooks (poststop hooks), killing it first.
    Delete {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
    },
}

/// Errors spawning a container process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The helper could not be started.
    #[error("cannot run the spawn helper {exe}: {source}")]
    Helper {
        /// The agent's own executable.
        exe: String,
        /// Why.
        source: std::io::Error,
    },
    /// Pipe or fd plumbing failed.
    #[error("spawn helper plumbing: {0}")]
    Io(#[from] std::io::Error),
    /// libcontainer refused or failed; the message is libcontainer's error chain.
    #[error("{0}")]
    Container(String),
    /// The helper died without reporting.
    #[error("the spawn helper exited with status {0} without reporting a result")]
    NoResult(i32),
    /// Sending the request to the helper failed.
    #[error("cannot hand the request to the spawn helper: {0}")]
    Send(nix::Error),
}

#[derive(Serialize, Deserialize)]
enum SpawnResult {
    Ok(i32),
    Err(String),
}

/// Formats an error with its whole source chain, since libcontainer's top-level messages
/// ("failed to create container") hide the cause.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}

fn run_request(req: SpawnRequest) -> Result<i32, String> {
    let chain = |e: libcontainer::error::LibcontainerError| error_chain(&e);
    // The part of the builder that create and exec share.
    let builder = |id: String, root: PathBuf, console_socket| -> Result<ContainerBuilder, String> {
        ContainerBuilder::new(id, SyscallType::default())
            .with_executor(libcontainer::workload::default::DefaultExecutor {})
            .with_root_path(root)
            .map_err(chain)?
            .with_console_socket(console_socket)
            .validate_id()
            .map_err(chain)
    };
    match req {
        SpawnRequest::Create {
            id,
            root,
            bundle,
            console_socket,
        } => {
            let container = builder(id, root, console_socket)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(chain)?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| "libcontainer created the container but recorded no pid".into())
        }
        SpawnRequest::Exec {
            id,
            root,
            process,
            console_socket,
        } => builder(id, root, console_socket)?
            .as_tenant()
            .with_process(Some(process))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(chain),
        SpawnRequest::Start { id, root } => {
            let mut c = Container::load(root.join(&id)).map_err(chain)?;
            c.start().map_err(chain)?;
            Ok(c.pid().map(|p| p.as_raw()).unwrap_or(0))
        }
        SpawnRequest::Delete { id, root } => {
            let mut c = Container::load(root.join(&id)).map_err(chain)?;
            c.delete(true).map_err(chain)?;
            Ok(0)
        }
    }
}

/// The helper's `main`: receives one request on fd 3, runs it and answers there. Must be
/// called before any thread is started.
pub fn helper_main() -> i32 {
    // SAFETY: the agent hands the helper fd 3 as its end of the socket pair.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    let result = match receive_request(&sock) {
        Ok(req) => match run_request(req) {
            Ok(pid) => SpawnResult::Ok(pid),
            Err(e) => SpawnResult::Err(e),
        },
        // The agent closed the socket without a request (it is shutting down or dropped
        // this warm helper): nothing to do.
        Err(None) => return 0,
        Err(Some(e)) => SpawnResult::Err(format!("spawn helper: {e}")),
    };
    // One message: the container process inherits fd 3 (clone without exec) and keeps it
    // open until it execs, so the agent reads one message instead of waiting for EOF.
    let json = serde_json::to_vec(&result).unwrap_or_default();
    match nix::sys::socket::send(sock.as_raw_fd(), &json, MsgFlags::empty()) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// Receives the request and installs the attached fds as stdin, stdout and stderr.
/// `Err(None)` means the agent closed the socket.
fn receive_request(sock: &OwnedFd) -> Result<SpawnRequest, Option<String>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(|e| Some(format!("receiving the request: {e}")))?;
    if msg.bytes == 0 {
        return Err(None);
    }
    let len = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| Some(e.to_string()))? {
        if let ControlMessageOwned::ScmRights(f) = c {
            fds.extend(f);
        }
    }
    if fds.len() != 3 {
        return Err(Some(format!("expected 3 stdio fds, got {}", fds.len())));
    }
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 onto the standard fds; the received fds are ours to close.
        unsafe {
            if libc::dup2(*fd, i as i32) < 0 {
                return Err(Some(format!("dup2: {}", std::io::Error::last_os_error())));
            }
            libc::close(*fd);
        }
    }
    serde_json::from_slice(&buf[..len]).map_err(|e| Some(format!("bad request: {e}")))
}

/// The three stdio fds of a new process.
pub struct ChildStdio {
    /// fd 0 of the process.
    pub stdin: OwnedFd,
    /// fd 1 of the process.
    pub stdout: OwnedFd,
    /// fd 2 of the process.
    pub stderr: OwnedFd,
}

/// A started helper waiting for its request.
struct WarmHelper {
    sock: OwnedFd,
    exit: oneshot::Receiver<i32>,
}

/// Runs requests in helper processes, keeping one started ahead of time.
#[derive(Clone)]
pub struct Spawner {
    reaper: Reaper,
    exe: PathBuf,
    warm: Arc<Mutex<Option<WarmHelper>>>,
}

impl Spawner {
    /// A spawner re-executing the agent's own binary; starts the first warm helper.
    pub fn new(reaper: Reaper) -> Spawner {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let s = Spawner {
            reaper,
            exe,
            warm: Arc::new(Mutex::new(None)),
        };
        s.refill();
        s
    }

    fn start_helper(&self) -> Result<WarmHelper, SpawnError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SpawnError::Io(e.into()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("spawn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let fd = theirs.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
        unsafe {
            cmd.pre_exec(move || {
                if fd == HELPER_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, HELPER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Helper {
            exe: self.exe.display().to_string(),
            source,
        })?;
        let exit = self.reaper.watch(child.id() as i32);
        drop(theirs);
        Ok(WarmHelper { sock: ours, exit })
    }

    /// Starts the next warm helper in the background (if none is waiting).
    fn refill(&self) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if me.warm.lock().expect("spawner lock").is_some() {
                return;
            }
            if let Ok(h) = me.start_helper() {
                let mut slot = me.warm.lock().expect("spawner lock");
                if slot.is_none() {
                    *slot = Some(h);
                }
                // else: dropping `h` closes its socket and that helper exits.
            }
        });
    }

    /// Runs `req` in a helper with `stdio` as the new process's stdio; returns the pid
    /// the helper reports.
    pub async fn spawn(&self, req: &SpawnRequest, stdio: ChildStdio) -> Result<i32, SpawnError> {
        let json = serde_json::to_vec(req).expect("spawn request serializes");
        let warm = self.warm.lock().expect("spawner lock").take();
        let helper = match warm {
            Some(h) => h,
            None => self.start_helper()?,
        };
        self.refill();
        let WarmHelper { sock, exit } = helper;
        let answer = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, SpawnError> {
            let fds = [
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
            ];
            let iov = [IoSlice::new(&json)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(SpawnError::Send)?;
            // The agent's copies close now, so pipe EOF depends only on the process.
            drop(stdio);
            let mut buf = vec![0u8; MAX_MESSAGE];
            let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| SpawnError::Io(e.into()))?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
        .map_err(|e| SpawnError::Io(std::io::Error::other(e)))??;
        let status = exit.await.unwrap_or(-1);
        match serde_json::from_slice::<SpawnResult>(&answer) {
            Ok(SpawnResult::Ok(pid)) => Ok(pid),
            Ok(SpawnResult::Err(msg)) => Err(SpawnError::Container(msg)),
            Err(_) => Err(SpawnError::NoResult(status)),
        }
    }
}
