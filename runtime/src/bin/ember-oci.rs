//! `ember-oci`: ember as a runc-compatible OCI runtime command line.
//!
//! For the callers that drive only runc's command line: Docker 20.10 (daemon.json
//! `runtimes: {"ember": {"path": "/usr/local/bin/ember-oci"}}`), Podman (`--runtime`) and
//! `ctr run --runtime io.containerd.runc.v2 --runc-binary ember-oci`. A separate binary
//! rather than `ember` subcommands: runc's global options (`--root`, `--log`, ...) and
//! subcommand names (`run`, `list`, `delete`) would collide with `ember`'s own, and callers
//! take a path to one executable. See `ember_runtime::ocicli` for the design.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ember_config::{AssetCheck, LoadOptions};
use ember_runtime::ocicli::{
    commands, exec, holder,
    log::{LogFormat, Logger},
    signal, spec,
    store::{Store, DEFAULT_ROOT},
    OciCliError,
};

/// ember's runc-compatible OCI runtime command line: each container in its own sandbox.
#[derive(Debug, Parser)]
#[command(name = "ember-oci", version, about, long_about = None)]
struct Cli {
    /// Where the containers' records live.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Append errors to this file (as runc does; its callers read them back).
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Format of the --log lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accepted for runc compatibility and ignored: ember always places a container's
    /// cgroup at `/ember/<sandbox>/<container>` with the cgroupfs driver (in the agent's
    /// view of the host's cgroups on the process backend, in the guest on the microvm
    /// one); it creates no systemd unit or slice and ignores a systemd-style cgroupsPath.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (set EMBER_LOG=debug for the holder's log).
    #[arg(long, global = true, hide = true)]
    debug: bool,
    /// ember's config file when EMBER_CONFIG is not set (default /etc/ember/config.toml,
    /// then built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// `ps --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PsFormat {
    /// The matching lines of `ps -ef`.
    Table,
    /// A JSON array of host pids.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container (not started): its sandbox, the container in it, and a holder
    /// process that relays its stdio and exits with its status; the holder's pid goes to
    /// --pid-file.
    Create {
        /// The bundle: a directory with config.json and the rootfs it names.
        #[arg(long, short = 'b', value_name = "DIR", default_value = ".")]
        bundle: PathBuf,
        /// Write the holder's pid here.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Send the terminal's master here (needed when process.terminal is true).
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        /// Accepted and ignored: the agent always uses pivot_root.
        #[arg(long)]
        no_pivot: bool,
        /// Accepted and ignored: the agent makes no session keyring.
        #[arg(long)]
        no_new_keyring: bool,
        /// Only 0: extra fds cannot cross into the sandbox (the process runs under the
        /// sandbox's agent), so a request for any is refused rather than dropped.
        #[arg(long, value_name = "N")]
        preserve_fds: Option<u32>,
        /// Container id.
        id: String,
    },
    /// Start a created container's process.
    Start {
        /// Container id.
        id: String,
    },
    /// Print the container's OCI state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to the container's init.
    Kill {
        /// Signal every process of the container.
        #[arg(long, short = 'a')]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name (TERM, SIGKILL) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container and everything its sandbox left.
    Delete {
        /// Kill and delete a container that still runs.
        #[arg(long, short = 'f')]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Run a new process in a running container.
    Exec {
        /// The process as OCI `process` JSON.
        #[arg(long, short = 'p', value_name = "FILE")]
        process: Option<PathBuf>,
        /// Return once the process runs; a relay process stays for it.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Write the relay's pid here.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Send the terminal's master here.
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        /// Give the process a terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Only 0: extra fds cannot cross into the sandbox, so a request for any is
        /// refused rather than dropped.
        #[arg(long, value_name = "N")]
        preserve_fds: Option<u32>,
        /// Container id.
        id: String,
        /// The command (without --process).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the container's processes.
    Ps {
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = PsFormat::Table)]
        format: PsFormat,
        /// Container id.
        id: String,
        /// Options for ps (table format; default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze the container's processes.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw the container's processes.
    Resume {
        /// Container id.
        id: String,
    },
    /// Apply new resource limits.
    Update {
        /// OCI linux.resources JSON ("-": stdin).
        #[arg(long, short = 'r', value_name = "FILE")]
        resources: PathBuf,
        /// Container id.
        id: String,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Write a default config.json into the bundle directory.
    Spec {
        /// The bundle directory.
        #[arg(long, short = 'b', value_name = "DIR", default_value = ".")]
        bundle: PathBuf,
        /// Accepted for runc compatibility; the spec is the same.
        #[arg(long)]
        rootless: bool,
    },
}

/// `--preserve-fds N` with N > 0 asks for fds 3 to 3+N-1 in the container's process; they
/// cannot reach a process that the sandbox's agent starts (in a microVM, another kernel),
/// so the request fails instead of running the process without them.
fn refuse_preserved_fds(n: Option<u32>) -> Result<(), OciCliError> {
    match n {
        None | Some(0) => Ok(()),
        Some(n) => Err(OciCliError::Usage(format!(
            "--preserve-fds {n}: ember cannot pass extra file descriptors into a sandbox (its processes are started by the sandbox's agent); run without it"
        ))),
    }
}

fn run(cli: Cli) -> Result<ExitCode, OciCliError> {
    let store = Store::new(&cli.root);
    match cli.command {
        Command::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => {
            refuse_preserved_fds(preserve_fds)?;
            let config =
                ember_config::load(&LoadOptions::from_env(cli.config).assets(AssetCheck::Require))
                    .map_err(|e| OciCliError::Config(e.to_string()))?
                    .config;
            holder::create(
                &store,
                holder::CreateOptions {
                    id,
                    bundle,
                    pid_file,
                    console_socket,
                    config,
                },
            )?;
        }
        Command::Start { id } => commands::start(&store, &id)?,
        Command::State { id } => print_json(&commands::state(&store, &id)?),
        Command::Kill { all, id, signal } => {
            commands::kill(&store, &id, signal::parse(&signal)?, all)?
        }
        Command::Delete { force, id } => commands::delete(&store, &id, force)?,
        Command::Exec {
            process,
            detach,
            pid_file,
            console_socket,
            tty,
            preserve_fds,
            id,
            args,
        } => {
            refuse_preserved_fds(preserve_fds)?;
            let code = exec::exec(
                &store,
                exec::ExecOptions {
                    id,
                    process,
                    args,
                    detach,
                    pid_file,
                    console_socket,
                    tty,
                },
            )?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = commands::pids(&store, &id)?;
            match format {
                PsFormat::Json => print_json(&pids),
                PsFormat::Table => print!("{}", commands::ps_table(&pids, &ps_args)?),
            }
        }
        Command::Pause { id } => commands::pause(&store, &id, true)?,
        Command::Resume { id } => commands::pause(&store, &id, false)?,
        Command::Update { resources, id } => commands::update(&store, &id, &resources)?,
        Command::Features => print_json(&spec::features()),
        Command::Spec { bundle, .. } => {
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(OciCliError::Usage(format!(
                    "{}: exists; remove it first",
                    path.display()
                )));
            }
            let text = serde_json::to_string_pretty(&spec::default_spec()).expect("serializes");
            std::fs::write(&path, text).map_err(OciCliError::io(&path))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `v` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logger = Logger {
        file: cli.log.clone(),
        format: cli.log_format,
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            logger.error(&msg);
            eprintln!("ember-oci: {msg}");
            ExitCode::from(1)
        }
    }
}
