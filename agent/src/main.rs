//! `ember-agent`: the agent that runs as PID 1 inside an ember microVM (or as a host
//! process for the `process` sandbox backend).
//!
//! It owns the guest's init duties (mounting /proc, /sys, /dev, reaping zombies), the
//! ttrpc server of `ember-agent-protocol`, the container lifecycle (through youki's
//! `libcontainer`) and the stdio streams of container processes.
//!
//! ```text
//! ember-agent [--listen unix://PATH | vsock://PORT] [--state-dir DIR] [--log-level LEVEL]
//! ```
//! The stdio stream listener is at the derived address (`unix://PATH.stdio`,
//! `vsock://PORT+1`), see `ember_agent_protocol::Address::stdio_address`.

mod cgroup;
mod container;
mod network;
mod peer;
mod pid1;
mod reaper;
mod sandbox;
mod service;
mod spawn;
mod spec;
mod stdio;
mod storage;
mod syscall;
mod tty;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ember_agent_protocol::agent_ttrpc::{create_agent, create_health};
use ember_agent_protocol::Address;
use slog::{error, info, o, Drain, Logger};
use tokio::signal::unix::{signal, SignalKind};

/// Command line of `ember-agent`.
#[derive(Parser, Debug)]
#[command(
    name = "ember-agent",
    version,
    about = "ember's agent: creates and manages container processes"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Where to serve ttrpc: unix://PATH or vsock://PORT. Default: vsock on the port of the
    /// kernel command line's ember.agent_port= (1024 without it).
    #[arg(long)]
    listen: Option<String>,
    /// Directory for container state, bundles and console sockets.
    #[arg(long, default_value = "/run/ember-agent")]
    state_dir: PathBuf,
    /// Least severe log level shown: critical, error, warning, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// What to set up at start: `vm` (the guest's init: /proc, /sys, /dev, cgroup2, lo),
    /// `namespace` (the process sandbox backend: PID 1 of fresh namespaces on the host,
    /// mounts /proc and makes / rslave), `none` (an ordinary host process), or `auto`
    /// (`vm` when PID 1, else `none`).
    #[arg(long, value_enum, default_value = "auto")]
    init: pid1::InitMode,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Internal: the single-threaded helper that creates a container process (see spawn.rs).
    #[command(hide = true)]
    Spawn,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("--listen: {0}")]
    Address(#[from] ember_agent_protocol::AddressError),
    #[error("--log-level {0:?}: expected critical, error, warning, info, debug or trace")]
    LogLevel(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Reaper(#[from] reaper::ReaperError),
    #[error(transparent)]
    Pid1(#[from] pid1::Pid1Error),
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}

fn logger(level: &str) -> Result<Logger, AgentError> {
    let level: slog::Level = level
        .parse()
        .map_err(|_| AgentError::LogLevel(level.to_string()))?;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).build().fuse();
    Ok(Logger::root(
        drain.filter_level(level).fuse(),
        o!("agent" => std::process::id()),
    ))
}

/// Sends the `log` facade's records to `log` at the same level, through the libraries made
/// for it (`slog-stdlog` forwards to `slog-scope`'s global logger). Keep the guard: the
/// global logger is unset when it drops.
fn bridge_log_facade(log: &Logger, level: &str) -> Option<slog_scope::GlobalLoggerGuard> {
    let level = match level.parse::<slog::Level>().ok()? {
        slog::Level::Critical | slog::Level::Error => log::Level::Error,
        slog::Level::Warning => log::Level::Warn,
        slog::Level::Info => log::Level::Info,
        slog::Level::Debug => log::Level::Debug,
        slog::Level::Trace => log::Level::Trace,
    };
    let guard = slog_scope::set_global_logger(log.new(o!("from" => "log")));
    if let Err(e) = slog_stdlog::init_with_level(level) {
        slog::warn!(log, "library log lines stay unlogged"; "error" => %e);
    }
    Some(guard)
}

enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Vsock(tokio_vsock::VsockListener),
}

fn bind(addr: &Address) -> Result<Listener, AgentError> {
    let err = |source| AgentError::Listen {
        addr: addr.to_string(),
        source,
    };
    match addr {
        Address::Unix(p) => {
            let _ = std::fs::remove_file(p);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            // Bound and listening under a temporary name, then renamed: the socket path
            // appears only once it accepts connections, so waiting for it is enough.
            let mut tmp = p.clone().into_os_string();
            tmp.push(format!(".tmp{}", std::process::id()));
            let tmp = PathBuf::from(tmp);
            let _ = std::fs::remove_file(&tmp);
            let listener = tokio::net::UnixListener::bind(&tmp).map_err(err)?;
            std::fs::rename(&tmp, p).map_err(err)?;
            Ok(Listener::Unix(listener, p.clone()))
        }
        Address::Vsock { port, .. } => Ok(Listener::Vsock(
            tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                *port,
            ))
            .map_err(err)?,
        )),
    }
}

/// Accepts stdio stream connections forever.
fn serve_streams(listener: Listener, streams: stdio::StreamRegistry, log: Logger) {
    tokio::spawn(async move {
        let mut refusals = peer::RefusalLog::default();
        loop {
            match &listener {
                Listener::Unix(l, _) => match l.accept().await {
                    Ok((conn, _)) => {
                        let (s, log) = (streams.clone(), log.clone());
                        tokio::spawn(async move {
                            s.accept(conn, |c| c.into_std().map(OwnedFd::from), &log)
                                .await
                        });
                    }
                    Err(e) => error!(log, "stdio accept failed"; "error" => %e),
                },
                Listener::Vsock(l) => match peer::accept_host(l, &mut refusals, &log).await {
                    Ok(conn) => {
                        let (s, log) = (streams.clone(), log.clone());
                        tokio::spawn(async move {
                            s.accept(
                                conn,
                                |c| {
                                    // SAFETY: into_raw_fd hands over the connection's fd,
                                    // which nothing else owns from here on.
                                    Ok(unsafe { OwnedFd::from_raw_fd(c.into_raw_fd()) })
                                },
                                &log,
                            )
                            .await
                        });
                    }
                    Err(e) => error!(log, "stdio accept failed"; "error" => %e),
                },
            }
        }
    });
}

async fn serve(cli: Cli, log: Logger) -> Result<(), AgentError> {
    let mode = cli.init.resolve();
    let pid1 = mode == pid1::InitMode::Vm;
    let sys: Arc<dyn syscall::Syscall> = Arc::new(syscall::Real);
    match mode {
        pid1::InitMode::Vm => pid1::setup(&*sys, &log)?,
        pid1::InitMode::Namespace => pid1::setup_namespace(&*sys, &log)?,
        _ => {}
    }
    let addr: Address = match &cli.listen {
        Some(a) => a.parse()?,
        None => Address::Vsock {
            cid: tokio_vsock::VMADDR_CID_ANY,
            port: pid1::agent_port(),
        },
    };
    let reaper = reaper::Reaper::start()?;
    let streams = stdio::StreamRegistry::default();
    let containers = container::Containers::new(
        log.clone(),
        sys.clone(),
        reaper,
        streams.clone(),
        &cli.state_dir,
    )
    .map_err(|source| AgentError::StateDir {
        path: cli.state_dir.clone(),
        source,
    })?
    .with_pod_network_sysctls(pid1);
    let containers = Arc::new(containers);
    let sandbox = sandbox::Sandbox::new(cli.state_dir.join("sandbox"), sys);
    let svc = service::AgentService::new(log.clone(), containers.clone(), sandbox);

    let stdio_addr = addr.stdio_address();
    serve_streams(
        bind(&stdio_addr)?,
        streams,
        log.new(o!("listener" => stdio_addr.to_string())),
    );
    let listener = bind(&addr)?;
    let mut sockets = Vec::new();
    let ttrpc_listener = match listener {
        Listener::Unix(l, p) => {
            sockets.push(p);
            ttrpc::asynchronous::transport::Listener::from(l)
        }
        Listener::Vsock(l) => {
            ttrpc::asynchronous::transport::Listener::new(peer::host_only(l, log.clone()))
        }
    };
    if let Address::Unix(p) = &stdio_addr {
        sockets.push(p.clone());
    }
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(ttrpc_listener)
        .register_service(create_health(svc.clone()))
        .register_service(create_agent(svc));
    server.start().await?;
    info!(log, "serving"; "address" => addr.to_string(), "stdio" => stdio_addr.to_string(), "pid1" => pid1);

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!(log, "shutting down: removing containers");
    // No new requests; the server's full shutdown is not awaited: it waits for clients to
    // hang up, and the runtime that sent the signal keeps its connection open.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(50), server.shutdown()).await;
    for id in containers.ids() {
        if let Err(e) = containers.remove(&id, true).await {
            error!(log, "remove on shutdown failed"; "container" => id, "error" => %e);
        }
    }
    containers.settle().await;
    containers.remove_spare_bundles();
    for p in sockets {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// The command line `args` (program name first). As the guest's init (`pid1`) the agent
/// also gets, as arguments, the kernel command line's parameters that the kernel does not
/// know itself (`noxsave`, which the kernel honours early but calls unknown, or a typo in
/// `hypervisor.kernel_params`): an init that exits on them panics the guest, so as PID 1
/// arguments that do not parse are named on stderr (the guest console) and ignored.
fn command_line(args: Vec<String>, pid1: bool) -> Result<Cli, clap::Error> {
    match Cli::try_parse_from(&args) {
        Err(e)
            if pid1
                && !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
        {
            eprintln!(
                "ember-agent: as the guest's init, ignoring the arguments the kernel passed on: {}",
                args[1..].join(" ")
            );
            Cli::try_parse_from(args.into_iter().take(1))
        }
        other => other,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cli = command_line(args, std::process::id() == 1).unwrap_or_else(|e| e.exit());
    // The spawn helper must stay single-threaded: no runtime, no logger thread.
    if let Some(Command::Spawn) = &cli.command {
        std::process::exit(spawn::helper_main());
    }
    let log = match logger(&cli.log_level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ember-agent: {e}");
            std::process::exit(2);
        }
    };
    // Crates the agent links that log through the `log` facade (ember-netlink, ttrpc) go
    // to the same drain: without a `log` logger their lines would be dropped.
    let _log_bridge = bridge_log_facade(&log, &cli.log_level);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)
        .and_then(|rt| {
            let r = rt.block_on(serve(cli, log.clone()));
            // Do not wait for idle connection tasks or blocking threads.
            rt.shutdown_background();
            r
        });
    if let Err(e) = result {
        error!(log, "agent failed"; "error" => %e);
        drop(log);
        eprintln!("ember-agent: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drain that keeps each record's message and level.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Drain for Capture {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level().as_short_str(), r.msg()));
            Ok(())
        }
    }

    #[test]
    fn library_log_lines_reach_the_agent_log_at_its_level() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Logger::root(Capture(seen.clone()).fuse(), o!());
        let guard = bridge_log_facade(&log, "debug");
        assert!(guard.is_some());
        log::debug!("rtnetlink: skipped an answer");
        log::trace!("below the level");
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|l| l == "DEBG rtnetlink: skipped an answer"),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|l| l.contains("below the level")),
            "{seen:?}"
        );
        assert!(bridge_log_facade(&log, "loud").is_none());
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn as_init_the_kernels_leftover_parameters_are_ignored() {
        let leftovers = args(&["/init", "noxsave"]);
        let cli = command_line(leftovers.clone(), true).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/run/ember-agent"));
        assert!(cli.listen.is_none() && cli.command.is_none());
        // Not as init: a bad argument is an error, as for any program.
        assert!(command_line(leftovers, false).is_err());
        // Good arguments are used either way.
        let cli = command_line(args(&["ember-agent", "--log-level", "debug"]), true).unwrap();
        assert_eq!(cli.log_level, "debug");
    }
}
