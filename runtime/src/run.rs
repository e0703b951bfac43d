//! `ember run`: one container from an OCI bundle without containerd, with this terminal's
//! stdio attached, in its own sandbox that is removed when the container ends.

use std::os::fd::AsFd;
use std::path::PathBuf;

use ember_agent_protocol::agent::{
    SignalProcessRequest, StartContainerRequest, StdioStreams, WaitProcessRequest,
};
use ember_config::Config;
use log::warn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oci::BundleSpec;
use crate::sandbox::{
    ctx, ctx_no_timeout, rpc_message, ContainerRequest, Sandbox, SandboxError, SandboxOptions,
};

/// Errors of `ember run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The sandbox or container could not be made.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// An agent call failed.
    #[error("{rpc}: {message}")]
    Rpc {
        /// The call.
        rpc: &'static str,
        /// The agent's error.
        message: String,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Container (and sandbox) id.
    pub id: String,
    /// The configuration.
    pub config: Config,
}

/// Runs the container to its end and returns its exit status (code, or 128 + signal).
/// Everything it made is removed before returning, also on failure.
pub async fn run(opts: RunOptions) -> Result<i32, RunError> {
    let spec = BundleSpec::load(&opts.bundle).map_err(SandboxError::from)?;
    spec.check_rootfs().map_err(SandboxError::from)?;
    let terminal = spec.terminal();
    let sb = Sandbox::start(SandboxOptions {
        id: opts.id.clone(),
        config: opts.config,
        netns: spec.network_namespace_path(),
        hostname: spec.hostname().map(str::to_string),
        namespace: String::new(),
    })
    .await?;
    let result = run_in(&sb, &opts.id, spec, terminal).await;
    if let Err(e) = sb.remove_container(&opts.id, true).await {
        warn!("container={}: remove: {e}", opts.id);
    }
    sb.destroy().await?;
    result
}

async fn run_in(sb: &Sandbox, id: &str, spec: BundleSpec, terminal: bool) -> Result<i32, RunError> {
    let mut streams = StdioStreams::new();
    streams.stdin = format!("{id}.init.stdin");
    streams.stdout = format!("{id}.init.stdout");
    if !terminal {
        streams.stderr = format!("{id}.init.stderr");
    }
    sb.create_container(ContainerRequest {
        id: id.to_string(),
        spec,
        rootfs_mounts: Vec::new(),
        stdio: streams.clone(),
    })
    .await?;
    let stdin = sb.open_stream(&streams.stdin).await?;
    let stdout = sb.open_stream(&streams.stdout).await?;
    let stderr = if terminal {
        None
    } else {
        Some(sb.open_stream(&streams.stderr).await?)
    };
    // With a terminal, ours goes raw (the container's terminal does the line editing and
    // echo) and the container's gets our window size; restored when this guard drops.
    let _raw = if terminal { RawTerminal::enter() } else { None };
    if terminal {
        if let Some((rows, cols)) = ember_sys::tty::window_size(std::io::stdin().as_fd()) {
            let mut r = ember_agent_protocol::agent::TtyWinResizeRequest::new();
            r.container_id = id.to_string();
            r.rows = rows;
            r.cols = cols;
            let _ = sb.agent().agent.tty_win_resize(ctx(), &r).await;
        }
    }
    // stdin: copied until our stdin ends, then half-closed (the process reads EOF).
    tokio::spawn(async move {
        let mut stdin_stream = stdin;
        let mut input = tokio::io::stdin();
        let _ = tokio::io::copy(&mut input, &mut stdin_stream).await;
        let _ = stdin_stream.shutdown().await;
    });
    let out = tokio::spawn(copy_out(stdout, false));
    let err = stderr.map(|s| tokio::spawn(copy_out(s, true)));

    let mut r = StartContainerRequest::new();
    r.container_id = id.to_string();
    sb.agent()
        .agent
        .start_container(ctx(), &r)
        .await
        .map_err(|e| RunError::Rpc {
            rpc: "StartContainer",
            message: rpc_message(&e),
        })?;

    // Ctrl-C and SIGTERM go to the container, as with `docker run` attached.
    let agent = sb.agent().clone();
    let cid = id.to_string();
    let forward = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            let mut r = SignalProcessRequest::new();
            r.container_id = cid.clone();
            r.signal = sig as u32;
            let _ = agent.agent.signal_process(ctx(), &r).await;
        }
    });
    let mut w = WaitProcessRequest::new();
    w.container_id = id.to_string();
    let status = sb
        .agent()
        .agent
        .wait_process(ctx_no_timeout(), &w)
        .await
        .map_err(|e| RunError::Rpc {
            rpc: "WaitProcess",
            message: rpc_message(&e),
        })?
        .exit_status;
    forward.abort();
    let _ = out.await;
    if let Some(e) = err {
        let _ = e.await;
    }
    Ok(status)
}

async fn copy_out(mut stream: tokio::net::UnixStream, stderr: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut so = tokio::io::stdout();
    let mut se = tokio::io::stderr();
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let r = if stderr {
                    se.write_all(&buf[..n]).await.and(se.flush().await)
                } else {
                    so.write_all(&buf[..n]).await.and(so.flush().await)
                };
                if r.is_err() {
                    break;
                }
            }
        }
    }
}

/// This process's terminal in raw mode, restored on drop.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    /// Makes stdin raw when it is a terminal.
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
