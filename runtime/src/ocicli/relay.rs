//! The relay of one process (a container's init in the holder, or an exec): its stdio
//! between this process's fds 0–2 (or the slave of a host terminal) and the agent's stdio
//! streams, the signals this process receives passed on to it, and its exit status.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use ember_agent_protocol::agent::{
    SignalProcessRequest, StdioStreams, TtyWinResizeRequest, WaitProcessRequest,
};
use ember_agent_protocol::AgentConnection;
use log::{info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::endpoint::{AgentEndpoint, EndpointError};
use crate::sandbox::{ctx, ctx_no_timeout, rpc_message};

/// The signals passed on to the process (SIGKILL and SIGSTOP cannot be caught: a relay
/// killed with them leaves the process to `delete --force`).
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// This side of a process's stdio.
#[derive(Debug)]
pub enum ProcessIo {
    /// This process's fds 0–2 (pipes or files the caller gave).
    Stdio,
    /// The slave of a host terminal whose master went to the console socket.
    Pty(OwnedFd),
}

/// Which process of which container.
#[derive(Debug, Clone)]
pub struct Target {
    /// Container id.
    pub container_id: String,
    /// Exec id (empty: the init).
    pub exec_id: String,
}

impl std::fmt::Display for Target {
    /// `container=ID` and, for an exec, ` exec=ID`: the prefix of every relay log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "container={}", self.container_id)?;
        if !self.exec_id.is_empty() {
            write!(f, " exec={}", self.exec_id)?;
        }
        Ok(())
    }
}

/// Running stdio copies.
#[derive(Debug, Default)]
pub struct Relay {
    outputs: Vec<JoinHandle<()>>,
}

fn dup_file(fd: &OwnedFd) -> std::io::Result<tokio::fs::File> {
    Ok(tokio::fs::File::from_std(std::fs::File::from(
        fd.try_clone()?,
    )))
}

async fn copy_out<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

impl Relay {
    /// Opens the process's streams (each within `limit`, `agent.dial_timeout_ms`) and
    /// starts copying. Stdin is copied until this side ends, then half-closed (the process
    /// reads EOF); output until the agent closes the stream.
    pub async fn attach(
        endpoint: &AgentEndpoint,
        streams: &StdioStreams,
        io: &ProcessIo,
        limit: Duration,
    ) -> Result<Relay, EndpointError> {
        let io_err = |id: &str, e: std::io::Error| EndpointError::Connect {
            what: format!("terminal for stream {id}"),
            source: e,
        };
        let mut relay = Relay::default();
        if !streams.stdin.is_empty() {
            let mut s = endpoint.open_stream(&streams.stdin, limit).await?;
            match io {
                ProcessIo::Stdio => {
                    tokio::spawn(async move {
                        let mut input = tokio::io::stdin();
                        let _ = tokio::io::copy(&mut input, &mut s).await;
                        let _ = s.shutdown().await;
                    });
                }
                ProcessIo::Pty(slave) => {
                    let mut input = dup_file(slave).map_err(|e| io_err(&streams.stdin, e))?;
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut input, &mut s).await;
                        let _ = s.shutdown().await;
                    });
                }
            }
        }
        if !streams.stdout.is_empty() {
            let s = endpoint.open_stream(&streams.stdout, limit).await?;
            relay.outputs.push(match io {
                ProcessIo::Stdio => tokio::spawn(copy_out(s, tokio::io::stdout())),
                ProcessIo::Pty(slave) => {
                    let out = dup_file(slave).map_err(|e| io_err(&streams.stdout, e))?;
                    tokio::spawn(copy_out(s, out))
                }
            });
        }
        if !streams.stderr.is_empty() {
            let s = endpoint.open_stream(&streams.stderr, limit).await?;
            relay
                .outputs
                .push(tokio::spawn(copy_out(s, tokio::io::stderr())));
        }
        Ok(relay)
    }

    /// Waits for the output copies to reach the end of their streams, at most `limit`
    /// ([`crate::sandbox::exit_output_drain`]): this process exits with the container's
    /// status right after, and its caller (the runc shim, conmon) stops reading then.
    pub async fn drain(self, target: &Target, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for o in self.outputs {
            if tokio::time::timeout_at(deadline, o).await.is_err() {
                warn!("{target}: output still open {limit:?} after the process exited; the rest is dropped");
            }
        }
    }
}

/// Passes the terminal's window size (rows, columns) to the process.
pub async fn resize(agent: &AgentConnection, target: &Target, pty: &OwnedFd) {
    if let Some((rows, cols)) = ember_sys::tty::window_size(pty.as_fd()) {
        let mut r = TtyWinResizeRequest::new();
        r.container_id = target.container_id.clone();
        r.exec_id = target.exec_id.clone();
        r.rows = rows;
        r.cols = cols;
        if let Err(e) = agent.agent.tty_win_resize(ctx(), &r).await {
            info!("{target}: resize: {}", rpc_message(&e));
        }
    }
}

/// Waits for the process to exit while passing on the signals this process receives (and,
/// with a terminal, its window size changes). Returns its exit status (code, or 128 +
/// signal); 137 when the agent lost it (removed by `delete --force`, or the sandbox died).
pub async fn wait(agent: &AgentConnection, target: &Target, pty: Option<&OwnedFd>) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    // One task per caught signal; 0 stands for SIGWINCH (a window size change).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<libc::c_int>();
    let mut caught: Vec<libc::c_int> = FORWARDED.to_vec();
    if pty.is_some() {
        caught.push(libc::SIGWINCH);
    }
    for s in caught {
        match signal(SignalKind::from_raw(s)) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!("{target}: cannot catch signal {s}: {e}"),
        }
    }
    let mut w = WaitProcessRequest::new();
    w.container_id = target.container_id.clone();
    w.exec_id = target.exec_id.clone();
    let waiting = agent.agent.wait_process(ctx_no_timeout(), &w);
    tokio::pin!(waiting);
    loop {
        tokio::select! {
            r = &mut waiting => {
                return match r {
                    Ok(r) => r.exit_status,
                    Err(e) => {
                        warn!("{target}: wait: {}", rpc_message(&e));
                        128 + libc::SIGKILL
                    }
                };
            }
            Some(sig) = rx.recv() => {
                if sig == libc::SIGWINCH {
                    if let Some(p) = pty {
                        resize(agent, target, p).await;
                    }
                    continue;
                }
                let mut r = SignalProcessRequest::new();
                r.container_id = target.container_id.clone();
                r.exec_id = target.exec_id.clone();
                r.signal = sig as u32;
                if let Err(e) = agent.agent.signal_process(ctx(), &r).await {
                    warn!("{target}: passing on signal {sig}: {}", rpc_message(&e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_the_container_and_the_exec() {
        let mut t = Target {
            container_id: "c1".into(),
            exec_id: String::new(),
        };
        assert_eq!(t.to_string(), "container=c1");
        t.exec_id = "e2".into();
        assert_eq!(t.to_string(), "container=c1 exec=e2");
    }
}
