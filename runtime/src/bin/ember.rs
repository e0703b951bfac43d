//! `ember`: ember's command-line tool.
//!
//! Subcommands: `check` (what this host can run). Running containers without containerd
//! (`run`), listing and cleaning up sandboxes (`list`, `cleanup`) come with the runtime.

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
    }
}
