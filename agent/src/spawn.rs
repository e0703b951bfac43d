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
//! reaper would otherwise reap first). The helper's stdin, stdout and
//! stderr are the new process's stdio; it reports `{"Ok": pid}` or `{"Err": message}` as
//! one line on fd 3 and exits. The container process, a child of the helper, is then re-parented to
//! the agent (PID 1 or a child subreaper), which reaps it and so learns its exact exit
//! status. Kill, pause, resume, and start and delete of hook-less containers do not fork
//! and run in the agent.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::reaper::Reaper;

/// The fd on which the helper reports its result.
const RESULT_FD: i32 = 3;

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
    match req {
        SpawnRequest::Create {
            id,
            root,
            bundle,
            console_socket,
        } => {
            let container = ContainerBuilder::new(id, SyscallType::default())
                .with_executor(libcontainer::workload::default::DefaultExecutor {})
                .with_root_path(root)
                .map_err(chain)?
                .with_console_socket(console_socket)
                .validate_id()
                .map_err(chain)?
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
        } => ContainerBuilder::new(id, SyscallType::default())
            .with_executor(libcontainer::workload::default::DefaultExecutor {})
            .with_root_path(root)
            .map_err(chain)?
            .with_console_socket(console_socket)
            .validate_id()
            .map_err(chain)?
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

/// The helper's `main`: runs one request and reports on fd 3. Must be called before any
/// thread is started.
pub fn helper_main(request_json: &str) -> i32 {
    let result = match serde_json::from_str::<SpawnRequest>(request_json) {
        Ok(req) => match run_request(req) {
            Ok(pid) => SpawnResult::Ok(pid),
            Err(e) => SpawnResult::Err(e),
        },
        Err(e) => SpawnResult::Err(format!("spawn helper: bad request: {e}")),
    };
    // SAFETY: the agent hands the helper fd 3 as the write end of the result pipe.
    let mut out = unsafe { File::from_raw_fd(RESULT_FD) };
    // One line: the container process inherits fd 3 (clone without exec) and keeps it
    // open until it execs, so the agent reads up to the newline instead of EOF.
    let mut json = serde_json::to_vec(&result).unwrap_or_default();
    json.push(b'\n');
    if out.write_all(&json).is_err() {
        return 1;
    }
    0
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

/// Runs `req` in a helper process and returns the new process's pid.
pub async fn spawn(
    reaper: &Reaper,
    req: &SpawnRequest,
    stdio: ChildStdio,
) -> Result<i32, SpawnError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let json = serde_json::to_string(req).expect("spawn request serializes");
    let (result_r, result_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Io(e.into()))?;

    let mut cmd = Command::new(&exe);
    cmd.arg("spawn")
        .arg(json)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    let wfd = result_w.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        cmd.pre_exec(move || {
            if wfd == RESULT_FD {
                if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, RESULT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Helper {
        exe: exe.display().to_string(),
        source,
    })?;
    let helper_exit = reaper.watch(child.id() as i32);
    // Close the agent's copies of the child's fds so that EOF and pipe semantics hold.
    drop(cmd);
    drop(result_w);

    let output = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(File::from(result_r))
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .map_err(|e| SpawnError::Io(std::io::Error::other(e)))??;
    let status = helper_exit.await.unwrap_or(-1);
    match serde_json::from_str::<SpawnResult>(&output) {
        Ok(SpawnResult::Ok(pid)) => Ok(pid),
        Ok(SpawnResult::Err(msg)) => Err(SpawnError::Container(msg)),
        Err(_) => Err(SpawnError::NoResult(status)),
    }
}
