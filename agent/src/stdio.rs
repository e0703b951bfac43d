//! Process stdio: pipes or a pseudo-terminal on the process side, stream connections on the
//! runtime side, spliced by one thread per attached stream (no per-chunk RPC). The header
//! that opens a stream is `ember_agent_protocol::stream`.
//!
//! Output stays in the kernel pipe (or terminal) until its stream attaches, so nothing the
//! process wrote is lost when the runtime connects late.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_agent_protocol::stream::{read_header, write_status, StreamStatus};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{shutdown, Shutdown};
use slog::{debug, warn, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::spawn::ChildStdio;

/// How long a new stream connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A stream id is used twice.
    #[error("stdio.{field}: stream id {id:?} is already in use by another process")]
    DuplicateId {
        /// `stdin`, `stdout` or `stderr`.
        field: &'static str,
        /// The id.
        id: String,
    },
    /// A terminal process was given a stderr stream.
    #[error("stdio.stderr: must be empty for a process with terminal: true (the terminal carries stderr on the stdout stream)")]
    StderrWithTerminal,
    /// pipe(2) or open(/dev/null) failed.
    #[error("cannot create stdio pipes: {0}")]
    Io(#[from] std::io::Error),
}

/// The write end of a process's stdin, shared by the stream thread and `CloseStdin`.
pub type StdinHandle = Arc<Mutex<Option<File>>>;

enum Endpoint {
    /// Bytes from the connection go to this input.
    Input(StdinHandle),
    /// Bytes from this output go to the connection.
    Output(File),
}

/// An attached connection: a dup of its socket, whether it feeds an input, and its
/// attachment generation.
type Attached = (OwnedFd, bool, u64);

/// Stream ids waiting for their connection, and the sockets attached so far.
#[derive(Clone, Default)]
pub struct StreamRegistry {
    pending: Arc<Mutex<HashMap<String, Endpoint>>>,
    /// Attached connections, by stream id: a dup of the socket and whether it feeds an
    /// input, so that removing a process can end its stdin threads.
    attached: Arc<Mutex<HashMap<String, Attached>>>,
    /// Distinguishes successive attachments of a reused stream id.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// The agent-side ends of one process's stdio.
pub struct ProcessStdio {
    /// Stream ids this process registered.
    pub ids: Vec<String>,
    /// The write end of stdin (pipes) or a dup of the terminal master.
    pub stdin: Option<StdinHandle>,
}

fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

impl StreamRegistry {
    fn check_free(&self, field: &'static str, id: &str) -> Result<(), StdioError> {
        let taken = self.pending.lock().expect("stdio lock").contains_key(id)
            || self.attached.lock().expect("stdio lock").contains_key(id);
        if taken {
            return Err(StdioError::DuplicateId {
                field,
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Creates pipes for a non-terminal process and registers its stream ids. Returns the
    /// fds the process gets and the agent's side.
    pub fn pipes(
        &self,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<(ChildStdio, ProcessStdio), StdioError> {
        for (field, id) in [("stdin", stdin), ("stdout", stdout), ("stderr", stderr)] {
            if !id.is_empty() {
                self.check_free(field, id)?;
            }
        }
        if !stdout.is_empty() && stdout == stderr {
            return Err(StdioError::DuplicateId {
                field: "stderr",
                id: stderr.to_string(),
            });
        }
        let mut ids = Vec::new();
        let mut entries = Vec::new();
        let mut stdin_handle = None;
        let child_in = if stdin.is_empty() {
            dev_null(false)?
        } else {
            let (r, w) = pipe()?;
            let h: StdinHandle = Arc::new(Mutex::new(Some(File::from(w))));
            stdin_handle = Some(h.clone());
            entries.push((stdin.to_string(), Endpoint::Input(h)));
            r
        };
        let mut out = |id: &str| -> std::io::Result<OwnedFd> {
            if id.is_empty() {
                return dev_null(true);
            }
            let (r, w) = pipe()?;
            entries.push((id.to_string(), Endpoint::Output(File::from(r))));
            Ok(w)
        };
        let child_out = out(stdout)?;
        let child_err = out(stderr)?;
        let mut pending = self.pending.lock().expect("stdio lock");
        for (id, ep) in entries {
            ids.push(id.clone());
            pending.insert(id, ep);
        }
        Ok((
            ChildStdio {
                stdin: child_in,
                stdout: child_out,
                stderr: child_err,
            },
            ProcessStdio {
                ids,
                stdin: stdin_handle,
            },
        ))
    }

    /// Checks the ids of a terminal process before it is created.
    pub fn check_terminal_ids(
        &self,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<(), StdioError> {
        if !stderr.is_empty() {
            return Err(StdioError::StderrWithTerminal);
        }
        for (field, id) in [("stdin", stdin), ("stdout", stdout)] {
            if !id.is_empty() {
                self.check_free(field, id)?;
            }
        }
        Ok(())
    }

    /// Registers the streams of a terminal process once its master fd is known.
    pub fn terminal(
        &self,
        master: &OwnedFd,
        stdin: &str,
        stdout: &str,
    ) -> Result<ProcessStdio, StdioError> {
        let mut ids = Vec::new();
        let mut stdin_handle = None;
        let mut pending = self.pending.lock().expect("stdio lock");
        if !stdin.is_empty() {
            let h: StdinHandle = Arc::new(Mutex::new(Some(File::from(master.try_clone()?))));
            stdin_handle = Some(h.clone());
            pending.insert(stdin.to_string(), Endpoint::Input(h));
            ids.push(stdin.to_string());
        }
        if !stdout.is_empty() {
            pending.insert(
                stdout.to_string(),
                Endpoint::Output(File::from(master.try_clone()?)),
            );
            ids.push(stdout.to_string());
        }
        Ok(ProcessStdio {
            ids,
            stdin: stdin_handle,
        })
    }

    /// Forgets a process's streams: unattached pipes are closed and attached stdin
    /// connections shut down, which ends their threads. Attached output streams are left
    /// to drain: they end at EOF once the process's last writer is gone, so output is not
    /// cut off by a removal that races the reader.
    pub fn release(&self, ids: &[String]) {
        let mut pending = self.pending.lock().expect("stdio lock");
        let mut attached = self.attached.lock().expect("stdio lock");
        for id in ids {
            pending.remove(id);
            if let Some((sock, input, _)) = attached.remove(id) {
                if input {
                    let _ = shutdown(sock.as_raw_fd(), Shutdown::Both);
                }
            }
        }
    }

    /// Serves one new stream connection: reads the header, attaches the stream and starts
    /// its splice thread.
    pub async fn accept<S>(
        &self,
        mut conn: S,
        into_fd: impl FnOnce(S) -> std::io::Result<OwnedFd>,
        log: &Logger,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut conn)).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                warn!(log, "stream connection refused"; "error" => %e);
                let _ = write_status(&mut conn, StreamStatus::BadHeader).await;
                return;
            }
            Err(_) => {
                warn!(log, "stream connection sent no header in time");
                return;
            }
        };
        let endpoint = self.pending.lock().expect("stdio lock").remove(&id);
        let Some(endpoint) = endpoint else {
            let status = if self.attached.lock().expect("stdio lock").contains_key(&id) {
                StreamStatus::AlreadyAttached
            } else {
                StreamStatus::UnknownStream
            };
            debug!(log, "stream refused"; "stream" => &id, "status" => ?status);
            let _ = write_status(&mut conn, status).await;
            return;
        };
        if write_status(&mut conn, StreamStatus::Attached)
            .await
            .is_err()
        {
            return;
        }
        let sock = match into_fd(conn) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(log, "stream setup failed"; "stream" => &id, "error" => %e);
                return;
            }
        };
        if let Err(e) = set_blocking(&sock) {
            warn!(log, "stream setup failed"; "stream" => &id, "error" => %e);
            return;
        }
        let input = matches!(endpoint, Endpoint::Input(_));
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match sock.try_clone() {
            Ok(dup) => {
                self.attached
                    .lock()
                    .expect("stdio lock")
                    .insert(id.clone(), (dup, input, generation));
            }
            Err(e) => {
                warn!(log, "stream setup failed"; "stream" => &id, "error" => %e);
                return;
            }
        }
        debug!(log, "stream attached"; "stream" => &id);
        let registry = self.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            match endpoint {
                Endpoint::Output(src) => splice_out(src, sock, &id, &log),
                Endpoint::Input(dst) => splice_in(sock, dst),
            }
            let mut attached = registry.attached.lock().expect("stdio lock");
            if attached.get(&id).is_some_and(|e| e.2 == generation) {
                attached.remove(&id);
            }
            drop(attached);
            debug!(log, "stream closed"; "stream" => &id);
        });
    }
}

fn set_blocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Process output → connection, then half-close so the reader sees EOF. A terminal master
/// reports EIO once the terminal's last user is gone: that is EOF too.
fn splice_out(mut src: File, sock: OwnedFd, id: &str, log: &Logger) {
    let mut dst = File::from(sock);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A signal handled on this thread: not the end of the output.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the terminal's last user is gone (EOF for a terminal master).
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                warn!(log, "stream output read failed; the rest of the output is lost"; "stream" => id, "error" => %e);
                break;
            }
        };
        if let Err(e) = dst.write_all(&buf[..n]) {
            warn!(log, "stream output write failed; the rest of the output is lost"; "stream" => id, "error" => %e);
            break;
        }
    }
    let _ = shutdown(dst.as_fd().as_raw_fd(), Shutdown::Write);
}

/// Connection → process input; EOF from the connection closes the input (the process reads
/// EOF), as does `CloseStdin`.
fn splice_in(sock: OwnedFd, dst: StdinHandle) {
    let mut src = File::from(sock);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut guard = dst.lock().expect("stdin lock");
        let Some(f) = guard.as_mut() else { return };
        if f.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    dst.lock().expect("stdin lock").take();
}

/// Closes a process's stdin.
pub fn close_stdin(h: &StdinHandle) {
    h.lock().expect("stdin lock").take();
}
