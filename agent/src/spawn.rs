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
//! The helper is a fork server started once with the agent (through `posix_spawn`, so the
//! agent's memory is not copied). It keeps one forked worker waiting on fd 3, one end of a
//! `SOCK_SEQPACKET` socket pair, for a request: one message, the JSON request with four fds
//! attached (`SCM_RIGHTS`): the new process's stdin, stdout and stderr, and the worker's end
//! of a fresh reply socket pair. The worker tells the helper it has taken a request, and the
//! helper forks the next worker at once, so requests run concurrently and a request never
//! waits for a process to start: a worker costs one fork of the small helper, off the
//! critical path, instead of a fork of the agent plus an exec, dynamic linking and start-up
//! of its binary. The worker installs the stdio fds as its fds 0-2 for libcontainer to hand
//! down, runs the request, answers `{"Ok": pid}` or `{"Err": message}` in one message on
//! the reply socket and exits. The helper opens libpathrs' cached procfs handle once; the
//! workers and libcontainer's intermediate and init processes inherit it instead of
//! mounting a private procfs each.
//!
//! The container process, a child of the worker, is re-parented to the agent (PID 1 or a
//! child subreaper; the helper is neither) when the worker exits; the agent reaps it and so
//! learns its exact exit status. The helper reaps its workers. The agent does not wait for
//! a worker to exit. Kill, pause, resume, and start and delete of hook-less containers do
//! not fork and run in the agent. If the helper dies, its waiting worker (re-parented to
//! the agent) still serves one request; the next send then finds no reader (`EPIPE`) and
//! the agent starts a new helper.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
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
    /// The helper's worker died without reporting.
    #[error("the spawn helper exited without reporting a result")]
    NoResult,
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

/// The helper's `main`: keeps one forked worker waiting for a request on fd 3 and forks
/// the next as soon as that one has taken its request; returns when the agent closes fd 3.
/// Must be called before any thread is started.
pub fn helper_main() -> i32 {
    // Opened once, inherited by every worker and by libcontainer's clones (libpathrs caches
    // the handle in a static), so that none of them mounts a procfs of its own.
    let _ = pathrs::procfs::ProcfsHandle::new();
    // A worker's exit interrupts the helper's wait so that it is reaped at once.
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe {
        let _ = sigaction(
            Signal::SIGCHLD,
            &SigAction::new(
                SigHandler::Handler(on_sigchld),
                SaFlags::SA_NOCLDSTOP,
                SigSet::empty(),
            ),
        );
    }
    loop {
        reap_workers();
        let (taken_r, taken_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(_) => return 1,
        };
        // SAFETY: the helper is single-threaded, so the child may run any code.
        match unsafe { libc::fork() } {
            0 => {
                drop(taken_r);
                // SAFETY: restores the default disposition for libcontainer's waits.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                let code = worker(taken_w);
                // SAFETY: the worker ends here without the helper's exit handlers.
                unsafe { libc::_exit(code) }
            }
            -1 => return 1,
            _ => {}
        }
        drop(taken_w);
        // One byte once the worker has its request (then the next worker is forked), or
        // 'Q' when the agent closed the socket, or EOF when the worker died first.
        let mut b = [0u8; 1];
        let n = loop {
            match nix::unistd::read(taken_r.as_raw_fd(), &mut b) {
                Err(nix::errno::Errno::EINTR) => reap_workers(),
                Err(_) => break 0,
                Ok(n) => break n,
            }
        };
        if n == 1 && b[0] == b'Q' {
            return 0;
        }
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// Reaps every exited worker.
fn reap_workers() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if ws == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A worker: takes one request from fd 3, tells the helper on `taken`, installs the stdio
/// fds, runs the request and answers on the request's reply socket. Returns the exit code.
fn worker(taken: OwnedFd) -> i32 {
    // SAFETY: fd 3 is the helper's end of the agent's socket pair, inherited.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    let received = loop {
        match receive_request(&sock) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    // The socket belongs to the next worker now.
    drop(sock);
    let (json, fds) = match received {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => {
            let _ = nix::unistd::write(&taken, b"Q");
            return 0;
        }
    };
    let _ = nix::unistd::write(&taken, b"T");
    drop(taken);
    if fds.len() != 4 {
        // Not from the agent; the reply socket (if any) closes and the agent sees no result.
        return 1;
    }
    let mut fds = fds.into_iter();
    let stdio: Vec<OwnedFd> = fds.by_ref().take(3).collect();
    let reply_sock = fds.next().expect("four fds checked");
    for (i, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 onto the standard fds (the copies are not close-on-exec).
        if unsafe { libc::dup2(fd.as_raw_fd(), i as i32) } < 0 {
            let e = std::io::Error::last_os_error();
            return reply(
                &reply_sock,
                SpawnResult::Err(format!("spawn helper: dup2: {e}")),
            );
        }
    }
    drop(stdio);
    let result = match serde_json::from_slice::<SpawnRequest>(&json) {
        Ok(req) => match run_request(req) {
            Ok(pid) => SpawnResult::Ok(pid),
            Err(e) => SpawnResult::Err(e),
        },
        Err(e) => SpawnResult::Err(format!("spawn helper: bad request: {e}")),
    };
    // One message: the container process inherits the reply socket (clone without exec)
    // and keeps it open until it execs, so the agent reads one message instead of waiting
    // for EOF.
    reply(&reply_sock, result)
}

/// Sends the result; returns the worker's exit code.
fn reply(sock: &OwnedFd, result: SpawnResult) -> i32 {
    let json = serde_json::to_vec(&result).unwrap_or_default();
    match nix::sys::socket::send(sock.as_raw_fd(), &json, MsgFlags::empty()) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// Receives one request with its fds (stdin, stdout, stderr, reply socket). `Ok(None)`
/// means the agent closed the socket.
#[allow(clippy::type_complexity)]
fn receive_request(sock: &OwnedFd) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>, nix::errno::Errno> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let len = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(f) = c {
            // SAFETY: the kernel just installed these fds for us.
            fds.extend(f.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

/// A connected pair of close-on-exec SOCK_SEQPACKET Unix sockets: the agent's end and the
/// helper's (or a worker's) end of one request channel.
fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SpawnError::Io(e.into()))
}

/// Starts `exe spawn` with `sock` as its fd 3 and /dev/null as stdio. Through `posix_spawn` (a vfork: the agent's memory is not copied, so its
/// other threads are not stalled while its page tables would be), not `fork`.
fn posix_spawn_helper(exe: &Path, sock: RawFd) -> std::io::Result<i32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
    let path = cstr(exe.as_os_str().as_bytes())?;
    let arg = cstr(b"spawn")?;
    let dev_null = cstr(b"/dev/null")?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let argv = [
        path.as_ptr() as *mut libc::c_char,
        arg.as_ptr() as *mut _,
        std::ptr::null_mut(),
    ];
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialised before use and
    // destroyed on every path; every pointer handed to posix_spawn outlives the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                dev_null.as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            for fd in [1, 2] {
                check(libc::posix_spawn_file_actions_addopen(
                    &mut actions,
                    fd,
                    dev_null.as_ptr(),
                    libc::O_WRONLY,
                    0,
                ))?;
            }
            // dup2 clears close-on-exec on fd 3 (also when sock is 3 already).
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                sock,
                HELPER_FD,
            ))?;
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut pipe_only: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe_only);
            // The agent ignores SIGPIPE (Rust does); the helper starts like any program.
            libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &pipe_only))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                flags as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
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

/// The running helper.
struct Helper {
    sock: OwnedFd,
    /// Claims the helper's exit status from the reaper.
    _exit: oneshot::Receiver<i32>,
}

/// Runs requests in the helper's workers, starting the helper (again) when needed.
#[derive(Clone)]
pub struct Spawner {
    reaper: Reaper,
    exe: PathBuf,
    helper: Arc<Mutex<Option<Arc<Helper>>>>,
}

impl Spawner {
    /// A spawner re-executing the agent's own binary; starts the helper in the background.
    pub fn new(reaper: Reaper) -> Spawner {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let s = Spawner {
            reaper,
            exe,
            helper: Arc::new(Mutex::new(None)),
        };
        let me = s.clone();
        tokio::task::spawn_blocking(move || {
            let _ = me.helper();
        });
        s
    }

    fn start_helper(&self) -> Result<Helper, SpawnError> {
        let (ours, theirs) = seqpacket_pair()?;
        let pid = posix_spawn_helper(&self.exe, theirs.as_raw_fd()).map_err(|source| {
            SpawnError::Helper {
                exe: self.exe.display().to_string(),
                source,
            }
        })?;
        let exit = self.reaper.watch(pid);
        Ok(Helper {
            sock: ours,
            _exit: exit,
        })
    }

    /// The running helper, started if there is none.
    fn helper(&self) -> Result<Arc<Helper>, SpawnError> {
        let mut slot = self.helper.lock().expect("spawner lock");
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let h = Arc::new(self.start_helper()?);
        *slot = Some(h.clone());
        Ok(h)
    }

    /// Forgets a helper that has died (unless it was replaced already).
    fn discard(&self, dead: &Arc<Helper>) {
        let mut slot = self.helper.lock().expect("spawner lock");
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, dead)) {
            *slot = None;
        }
    }

    /// Hands the request and its fds to the helper, starting a new helper once if the
    /// current one has died.
    fn send(&self, json: &[u8], fds: &[RawFd; 4]) -> Result<(), SpawnError> {
        let mut retried = false;
        loop {
            let helper = self.helper()?;
            let iov = [IoSlice::new(json)];
            let cmsg = [ControlMessage::ScmRights(fds)];
            match sendmsg::<UnixAddr>(
                helper.sock.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) if !retried => {
                    self.discard(&helper);
                    retried = true;
                }
                Err(e) => return Err(SpawnError::Send(e)),
            }
        }
    }

    /// Runs `req` in a worker of the helper with `stdio` as the new process's stdio;
    /// returns the pid the worker reports.
    pub async fn spawn(&self, req: &SpawnRequest, stdio: ChildStdio) -> Result<i32, SpawnError> {
        let json = serde_json::to_vec(req).expect("spawn request serializes");
        let me = self.clone();
        let answer = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, SpawnError> {
            let (ours, theirs) = seqpacket_pair()?;
            let fds = [
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
                theirs.as_raw_fd(),
            ];
            me.send(&json, &fds)?;
            // The agent's copies close now, so pipe EOF depends only on the process, and
            // the reply socket reads EOF if the worker dies without answering.
            drop(stdio);
            drop(theirs);
            let mut buf = vec![0u8; MAX_MESSAGE];
            let n = nix::sys::socket::recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| SpawnError::Io(e.into()))?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
        .map_err(|e| SpawnError::Io(std::io::Error::other(e)))??;
        match serde_json::from_slice::<SpawnResult>(&answer) {
            Ok(SpawnResult::Ok(pid)) => Ok(pid),
            Ok(SpawnResult::Err(msg)) => Err(SpawnError::Container(msg)),
            Err(_) => Err(SpawnError::NoResult),
        }
    }
}
