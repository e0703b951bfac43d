//! Stdio: containerd's FIFOs connected to the agent's stream connections, one connection per
//! stream and no RPC per chunk. Output is copied until the agent closes the stream (the
//! process and every child holding it are gone); stdin is copied until containerd's
//! CloseIO, then the stream is half-closed so the process reads EOF.

use std::sync::Arc;

use ember_agent_protocol::agent::StdioStreams;
use ember_runtime::sandbox::SandboxError;
use log::warn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::pod::PodSandbox;

/// Copy buffer size: large enough that a fast writer is not limited by syscall count.
const BUF: usize = 256 * 1024;

/// The FIFO paths containerd gave for a process (empty: not connected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO.
    pub stdin: String,
    /// stdout FIFO (the terminal's output with `terminal`).
    pub stdout: String,
    /// stderr FIFO (empty with `terminal`).
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// Errors connecting stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A FIFO could not be opened.
    #[error("{path}: {source}")]
    Fifo {
        /// The FIFO.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent stream could not be opened.
    #[error(transparent)]
    Stream(#[from] SandboxError),
}

/// The stream ids for a process, only for the streams containerd wants, each with fresh
/// random bits (see [`ember_runtime::sandbox::stream_ids`]).
pub fn stream_ids(
    container_id: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> Result<StdioStreams, ember_runtime::sandbox::SandboxError> {
    ember_runtime::sandbox::stream_ids(
        container_id,
        exec_id,
        ember_runtime::sandbox::WantedStreams {
            stdin: !paths.stdin.is_empty(),
            stdout: !paths.stdout.is_empty(),
            stderr: !paths.stderr.is_empty(),
            terminal: paths.terminal,
        },
    )
}

/// The running copies of one process's stdio.
#[derive(Debug, Default)]
pub struct Copiers {
    close_stdin: Option<Arc<Notify>>,
    outputs: Vec<JoinHandle<()>>,
}

impl Copiers {
    /// Ends stdin after what containerd already wrote (CloseIO).
    pub fn close_stdin(&self) {
        if let Some(n) = &self.close_stdin {
            n.notify_one();
        }
    }

    /// Waits until every output stream has been copied to the end.
    pub async fn wait_outputs(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }

    /// Waits up to `limit` until every output stream has been copied to the end; the copies
    /// still running then are stopped. Returns whether everything was copied.
    pub async fn drain_outputs(&mut self, limit: std::time::Duration) -> bool {
        let handles: Vec<JoinHandle<()>> = self.outputs.drain(..).collect();
        let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_ok() {
            return true;
        }
        for a in aborts {
            a.abort();
        }
        false
    }

    /// Takes the output copies out (to wait for them without holding a lock).
    pub fn take(&mut self) -> Copiers {
        Copiers {
            close_stdin: self.close_stdin.clone(),
            outputs: self.outputs.drain(..).collect(),
        }
    }

    /// Stops the copies (after delete, when nobody reads any more).
    pub fn abort(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        self.close_stdin();
    }
}

/// Whose stdio a copier carries: the fields of its log lines.
#[derive(Debug, Clone, Default)]
pub struct LogIds {
    /// The sandbox id.
    pub sandbox: String,
    /// The container id.
    pub container: String,
    /// The exec id (empty for the container's init).
    pub exec: String,
}

/// Opens the agent's streams named in `ids` and starts copying between them and the FIFOs.
pub async fn attach<S: PodSandbox + ?Sized>(
    sandbox: &S,
    ids: &StdioStreams,
    paths: &StdioPaths,
    log_ids: LogIds,
) -> Result<Copiers, StdioError> {
    let mut copiers = Copiers::default();
    let fifo_err = |path: &str| {
        let path = path.to_string();
        move |source| StdioError::Fifo { path, source }
    };
    if !ids.stdin.is_empty() {
        // Opened read-only and non-blocking: Linux reports no readiness on a FIFO whose
        // writer has not opened yet, and hang-up (EOF) once every writer that opened has
        // closed it, which is how containerd's clients end stdin; CloseIO ends it too.
        let fifo = pipe::OpenOptions::new()
            .open_receiver(&paths.stdin)
            .map_err(fifo_err(&paths.stdin))?;
        let stream = sandbox.open_stream(&ids.stdin).await?;
        let close = Arc::new(Notify::new());
        copiers.close_stdin = Some(close.clone());
        let l = log_ids.clone();
        tokio::spawn(async move {
            if let Err(e) = copy_stdin(fifo, stream, close).await {
                warn!(
                    sandbox = l.sandbox.as_str(), container = l.container.as_str(),
                    exec = l.exec.as_str();
                    "stdin copy ended: {e}"
                );
            }
        });
    }
    for (id, path) in [(&ids.stdout, &paths.stdout), (&ids.stderr, &paths.stderr)] {
        if id.is_empty() {
            continue;
        }
        let fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)
            .map_err(fifo_err(path))?;
        let stream = sandbox.open_stream(id).await?;
        let l = log_ids.clone();
        copiers.outputs.push(tokio::spawn(async move {
            if let Err(e) = copy_output(stream, fifo).await {
                warn!(
                    sandbox = l.sandbox.as_str(), container = l.container.as_str(),
                    exec = l.exec.as_str();
                    "output copy ended: {e}"
                );
            }
        }));
    }
    Ok(copiers)
}

async fn copy_output(
    mut stream: tokio::net::UnixStream,
    mut fifo: pipe::Sender,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        fifo.write_all(&buf[..n]).await?;
    }
}

async fn copy_stdin(
    mut fifo: pipe::Receiver,
    mut stream: tokio::net::UnixStream,
    close: Arc<Notify>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = fifo.read(&mut buf) => {
                let n = r?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
            }
            _ = close.notified() => {
                // Drain what is already in the FIFO, then give the process EOF.
                loop {
                    match fifo.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => stream.write_all(&buf[..n]).await?,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                break;
            }
        }
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_follow_what_containerd_asked_for() {
        let paths = StdioPaths {
            stdin: String::new(),
            stdout: "/fifo/out".into(),
            stderr: "/fifo/err".into(),
            terminal: false,
        };
        let s = stream_ids("c1", "", &paths).unwrap();
        assert_eq!(s.stdin, "");
        assert!(s.stdout.starts_with("c1.init."), "{}", s.stdout);
        assert!(s.stdout.ends_with(".stdout"), "{}", s.stdout);
        assert!(s.stderr.ends_with(".stderr"), "{}", s.stderr);
        let tty = StdioPaths {
            stdin: "/fifo/in".into(),
            terminal: true,
            ..paths
        };
        let s = stream_ids("c1", "e1", &tty).unwrap();
        assert!(s.stdin.starts_with("c1.e1."), "{}", s.stdin);
        assert!(s.stdin.ends_with(".stdin"), "{}", s.stdin);
        assert_eq!(s.stderr, "", "a terminal has no separate stderr stream");
    }

    #[tokio::test]
    async fn draining_waits_for_the_copies_and_stops_the_ones_that_do_not_end() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let mut c = Copiers::default();
        c.outputs.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            d.store(true, Ordering::SeqCst);
        }));
        assert!(
            c.take()
                .drain_outputs(std::time::Duration::from_secs(10))
                .await
        );
        assert!(
            done.load(Ordering::SeqCst),
            "returned before the copy ended"
        );

        let stuck = tokio::spawn(std::future::pending::<()>());
        let abort = stuck.abort_handle();
        let mut c = Copiers::default();
        c.outputs.push(stuck);
        let t = std::time::Instant::now();
        assert!(!c.drain_outputs(std::time::Duration::from_millis(200)).await);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(abort.is_finished(), "the stuck copy was not stopped");
    }

    #[test]
    fn stream_ids_carry_128_fresh_random_bits() {
        let paths = StdioPaths {
            stdin: "/fifo/in".into(),
            stdout: "/fifo/out".into(),
            stderr: String::new(),
            terminal: false,
        };
        let nonce = |s: &str| s.split('.').nth(2).unwrap().to_string();
        let a = stream_ids("c1", "", &paths).unwrap();
        let b = stream_ids("c1", "", &paths).unwrap();
        let n = nonce(&a.stdout);
        assert_eq!(n.len(), 32, "{}", a.stdout);
        assert!(n.chars().all(|c| c.is_ascii_hexdigit()), "{n}");
        assert_eq!(nonce(&a.stdin), n, "one nonce per process");
        assert_ne!(nonce(&b.stdout), n, "a fresh nonce per process");
    }
}
