//! `ember`: ember's command-line tool.
//!
//! Subcommands: `check` (what this host can run), `run` (a container from an OCI bundle,
//! without containerd), `list` (sandboxes on this host) and `cleanup` (remove what crashed
//! sandboxes left behind).

use clap::{Parser, Subcommand};
use ember_config::{AssetCheck, LoadOptions};
use ember_runtime::check::{self, CapabilitySource, Host};
use std::path::PathBuf;
use std::process::ExitCode;

/// ember: an OCI container runtime that runs every pod in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file to use when EMBER_CONFIG is not set (default: /etc/ember/config.toml,
    /// then built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check whether this host can run ember, and with which sandbox backend.
    ///
    /// Prints one line per requirement (/dev/kvm, hardware virtualization vs PVM vs none,
    /// KVM capabilities, /dev/net/tun, cgroups, privileges, guest kernel and initrd,
    /// containerd) as OK, WARN or FAIL with what to do. Exits 0 when the configured
    /// backend can run on this host, 1 when it cannot.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Read /proc, /sys and /dev under this folder instead of / (for fixture trees).
        #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
        host_root: PathBuf,
    },
    /// Run one container from an OCI bundle with this terminal's stdio attached.
    ///
    /// The container gets its own sandbox (microVM, or the agent in fresh namespaces with
    /// `sandbox.backend = "process"`), which is removed when it ends. Exits with the
    /// container's exit status (128 + N when killed by signal N); Ctrl-C and SIGTERM are
    /// passed to the container.
    Run {
        /// The bundle: a directory with `config.json` and the rootfs it names.
        #[arg(long, value_name = "DIR", default_value = ".")]
        bundle: PathBuf,
        /// Container id (default: `ember-run-<pid>`).
        #[arg(long)]
        id: Option<String>,
    },
    /// List the sandboxes on this host (from their state directories).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove what sandboxes whose owner (shim or `ember run`) died left behind: agent
    /// processes, mounts, sockets, taps, cgroups and state directories.
    Cleanup {
        /// Also remove sandboxes whose owner still runs (kills their agents).
        #[arg(long)]
        force: bool,
        /// Only these sandbox ids (default: every stale sandbox).
        ids: Vec<String>,
    },
}

fn load_config(
    explicit: Option<PathBuf>,
    assets: AssetCheck,
) -> Result<ember_config::Config, ExitCode> {
    ember_config::load(&LoadOptions::from_env(explicit).assets(assets))
        .map(|l| l.config)
        .map_err(|e| {
            eprintln!("ember: {e}");
            ExitCode::from(2)
        })
}

/// Logs to stderr at `log.level`; `ember run` shares stderr with the container, so there
/// `info` is raised to `warn` (EMBER_LOG overrides both, e.g. EMBER_LOG=debug).
fn init_logging(level: ember_config::LogLevel, attached: bool) {
    let filter = match level {
        ember_config::LogLevel::Info if attached => "warn",
        l => l.filter(),
    };
    env_logger::Builder::new()
        .parse_filters(&std::env::var("EMBER_LOG").unwrap_or_else(|_| filter.to_string()))
        .format_timestamp(None)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { json, host_root } => {
            let config =
                ember_config::load(&LoadOptions::from_env(cli.config).assets(AssetCheck::Skip))
                    .map(|l| (l.config, l.source.describe()))
                    .map_err(|e| e.to_string());
            let inputs = check::Inputs {
                host: Host::new(host_root),
                capabilities: CapabilitySource::Device,
                path_var: std::env::var_os("PATH").unwrap_or_default(),
                config,
            };
            let report = check::run(&inputs);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::from(report.exit_code() as u8)
        }
        Command::Run { bundle, id } => {
            let config = match load_config(cli.config, AssetCheck::Require) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(config.log.level, true);
            let id = id.unwrap_or_else(|| format!("ember-run-{}", std::process::id()));
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let result = rt.block_on(ember_runtime::run::run(ember_runtime::run::RunOptions {
                bundle,
                id,
                config,
            }));
            // The stdin copy may still sit in a blocking read of the terminal: do not wait.
            rt.shutdown_background();
            match result {
                Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("ember run: {e}");
                    ExitCode::from(125)
                }
            }
        }
        Command::List { json } => {
            let config = match load_config(cli.config, AssetCheck::Skip) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let list = match ember_runtime::cleanup::list(&config.sandbox.state_dir) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ember list: {e}");
                    return ExitCode::from(1);
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<8} CONTAINERS",
                    "SANDBOX", "BACKEND", "NAMESPACE", "OWNER"
                );
                for s in &list {
                    match &s.record {
                        Some(r) => println!(
                            "{:<24} {:<8} {:<10} {:<8} {}",
                            r.sandbox_id,
                            r.backend,
                            if r.namespace.is_empty() {
                                "-"
                            } else {
                                &r.namespace
                            },
                            if s.owner_alive {
                                r.owner.pid.to_string()
                            } else {
                                "dead".into()
                            },
                            r.containers.iter().cloned().collect::<Vec<_>>().join(",")
                        ),
                        None => println!(
                            "{:<24} unreadable: {}",
                            s.dir.display(),
                            s.error.as_deref().unwrap_or("")
                        ),
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Cleanup { force, ids } => {
            let config = match load_config(cli.config, AssetCheck::Skip) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let out = ember_runtime::cleanup::cleanup(&config.sandbox.state_dir, &ids, force);
            let mut failed = false;
            for o in &out {
                println!("{}: {}", o.dir.display(), o.result);
                failed |= !o.removed && !o.result.starts_with("skipped");
            }
            if out.is_empty() {
                println!(
                    "nothing to clean up in {}",
                    config.sandbox.state_dir.display()
                );
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
