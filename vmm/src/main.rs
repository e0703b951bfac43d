//! `ember-vmm`: boot a guest on ember's VMM from the command line.

use clap::Parser;
use ember_vmm::{CpuProfile, DiskConfig, ExitReason, SerialSink, Vm, VmConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit statuses of `ember-vmm`.
mod status {
    pub const POWER_OFF: u8 = 0;
    pub const VMM_ERROR: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const RESET: u8 = 3;
    pub const TRIPLE_FAULT: u8 = 4;
    pub const STOPPED: u8 = 5;
}

/// Boot a Linux kernel (or any ELF/bzImage guest) in a KVM microVM on ember's VMM.
///
/// Exit status: 0 the guest powered off (wrote I/O port 0x501); 1 the VMM failed
/// (KVM error, vCPU internal error); 2 bad input (missing or unreadable kernel, initrd
/// or disk, not an ELF/bzImage, memory below 64 MiB or above the host's, bad options);
/// 3 the guest asked for a reset (i8042 reset, `reboot`); 4 a vCPU triple-faulted;
/// 5 the VM was stopped by the host.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Guest kernel: uncompressed ELF vmlinux (PVH entry if present, else 64-bit) or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config", "control_fd"])]
    kernel: Option<PathBuf>,
    /// Initramfs to pass to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (ember appends its virtio-mmio devices and CPU-profile parameters).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// Guest memory in MiB (64 to the host's memory).
    #[arg(long, value_name = "N")]
    memory_mib: Option<u64>,
    /// A virtio-blk disk backed by an image file or a host block device: PATH or PATH,ro.
    /// Repeat for more disks.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,
    /// Add N empty virtio-blk slots after the disks: devices of capacity 0 (reads and
    /// writes fail) that the library API (`Vm::block_slots`) backs with a file or block
    /// device while the VM runs; the guest sees the capacity change. From the command
    /// line they stay empty.
    #[arg(long, value_name = "N")]
    block_slots: Option<u8>,
    /// A virtio-vsock device whose host side is the Unix socket PATH: connect and write
    /// `CONNECT <guest-port>\n` to reach a guest port; guest connections to host port P
    /// go to `PATH_P`. The guest CID defaults to 3.
    #[arg(long, value_name = "PATH[,cid=N]")]
    vsock: Option<ember_vmm::config::VsockConfig>,
    /// Share a host folder over virtio-fs under TAG (the guest mounts it with
    /// `mount -t virtiofs TAG /mnt`, or boots from it with `rootfstype=virtiofs root=TAG`).
    /// Repeat for more folders.
    #[arg(long = "fs", value_name = "TAG=DIR[,ro]")]
    fs: Vec<ember_vmm::config::FsConfig>,
    /// A virtio-net device on tap TAP (created if missing), optionally with a fixed MAC
    /// and inside the network namespace file PATH. Repeat for more interfaces.
    #[arg(long = "net", value_name = "TAP[,mac=..,netns=PATH]")]
    net: Vec<ember_vmm::config::NetConfig>,
    /// Rate-limit each virtio-blk device (every --disk and --block-slots slot has its own
    /// limiter): comma-separated `bandwidth=SIZE/MS` (SIZE bytes every MS milliseconds),
    /// `ops=SIZE/MS` (SIZE requests every MS milliseconds), `bandwidth_burst=N` and
    /// `ops_burst=N` (N extra tokens, once, at the start). Example:
    /// `bandwidth=10485760/1000,ops=1000/1000` is 10 MiB/s and 1000 requests/s.
    /// Unlimited by default.
    #[arg(long, value_name = "LIMITS")]
    block_rate_limit: Option<ember_vmm::config::RateLimitConfig>,
    /// Rate-limit the frames each virtio-net device delivers to the guest, in bytes and
    /// frames; same LIMITS as --block-rate-limit. Unlimited by default.
    #[arg(long, value_name = "LIMITS")]
    net_rx_rate_limit: Option<ember_vmm::config::RateLimitConfig>,
    /// Rate-limit the frames the guest sends through each virtio-net device, in bytes and
    /// frames; same LIMITS as --block-rate-limit. Unlimited by default.
    #[arg(long, value_name = "LIMITS")]
    net_tx_rate_limit: Option<ember_vmm::config::RateLimitConfig>,
    /// Rate-limit each virtio-fs device (every --fs folder has its own limiter): one
    /// operation per FUSE request, and its data bytes (the payload of reads and writes);
    /// same LIMITS as --block-rate-limit. Unlimited by default.
    #[arg(long, value_name = "LIMITS")]
    fs_rate_limit: Option<ember_vmm::config::RateLimitConfig>,
    /// Add a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Where COM1 output goes: stdout, none, or a file path.
    #[arg(long, value_name = "stdout|PATH|none")]
    serial: Option<SerialSink>,
    /// Most bytes a --serial file keeps (its older half is dropped when full; default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    serial_max_bytes: Option<u64>,
    /// CPU features for the guest: auto (emulation-safe without hardware virtualization or
    /// on a CPU that QEMU's TCG emulates, host otherwise), host, or emulation-safe.
    #[arg(long, value_name = "PROFILE")]
    cpu_profile: Option<CpuProfile>,
    /// Run the VMM's threads without their seccomp filters (on by default: each vCPU and
    /// the device thread may make only the system calls it needs, any other kills the
    /// VMM with SIGSYS). For diagnosing a suspected missing system call only.
    #[arg(long)]
    no_seccomp: bool,
    /// A vm.toml with the same settings (kernel, initrd, cmdline, vcpus, memory_mib,
    /// [[disks]] path/read_only, block_slots, serial, serial_max_bytes, cpu_profile, seccomp,
    /// [block_rate_limit.bandwidth] / [block_rate_limit.ops] and [net_rate_limit.rx.*] /
    /// [net_rate_limit.tx.*], [fs_rate_limit.bandwidth] / [fs_rate_limit.ops] with size,
    /// one_time_burst, refill_time in ms); options given
    /// here override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Be driven by the runtime over the control channel on this fd (a connected
    /// SOCK_SEQPACKET Unix socket): the first message carries the VM's configuration and
    /// the jail's root; the VMM builds the VM, jails itself (namespaces, pivot_root into
    /// the root, capabilities, rlimits), starts it and answers requests until it ends.
    /// Every other option but --log-level is ignored. Exit status as above.
    #[arg(long, value_name = "FD", conflicts_with = "config")]
    control_fd: Option<i32>,
    /// Log level of the VMM's messages on stderr (error, warn, info, debug, trace).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: log::LevelFilter,
}

impl Cli {
    fn into_config(self) -> Result<VmConfig, String> {
        let mut c = match &self.config {
            Some(p) => VmConfig::from_file(p).map_err(|e| e.to_string())?,
            None => VmConfig::new(self.kernel.clone().expect("clap requires --kernel")),
        };
        if let Some(k) = self.kernel {
            c.kernel = k;
        }
        if self.initrd.is_some() {
            c.initrd = self.initrd;
        }
        if let Some(v) = self.cmdline {
            c.cmdline = v;
        }
        if let Some(v) = self.vcpus {
            c.vcpus = v;
        }
        if let Some(v) = self.memory_mib {
            c.memory_mib = v;
        }
        if !self.disks.is_empty() {
            c.disks = self.disks;
        }
        if let Some(v) = self.block_slots {
            c.block_slots = v;
        }
        if let Some(v) = self.block_rate_limit {
            c.block_rate_limit = v;
        }
        if let Some(v) = self.net_rx_rate_limit {
            c.net_rate_limit.rx = v;
        }
        if let Some(v) = self.net_tx_rate_limit {
            c.net_rate_limit.tx = v;
        }
        if let Some(v) = self.fs_rate_limit {
            c.fs_rate_limit = v;
        }
        if self.rng {
            c.rng = true;
        }
        if !self.net.is_empty() {
            c.net = self.net;
        }
        if !self.fs.is_empty() {
            c.fs = self.fs;
        }
        if self.vsock.is_some() {
            c.vsock = self.vsock;
        }
        if let Some(v) = self.serial {
            c.serial = v;
        }
        if let Some(v) = self.serial_max_bytes {
            c.serial_max_bytes = v;
        }
        if let Some(v) = self.cpu_profile {
            c.cpu_profile = v;
        }
        if self.no_seccomp {
            c.seccomp = false;
        }
        Ok(c)
    }
}

/// Build and run the VM; SIGTERM or SIGINT stops it (exit status 5).
///
/// The two signals are blocked before any thread starts (threads inherit the mask) and
/// taken by one thread with `sigwait`, which triggers the VM's exit latch: no work in a
/// signal handler.
fn run(config: &VmConfig) -> Result<ExitReason, ember_vmm::VmError> {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask affects this thread and
    // the threads it creates afterwards.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut vm = Vm::new(config)?;
    let latch = vm.exit_latch();
    std::thread::Builder::new()
        .name("ember-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waits on the blocked set; writes the signal number into `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                log::info!("signal {sig}: stopping the VM");
                latch.trigger(ExitReason::Stopped);
            }
        })
        .map_err(|source| ember_vmm::VmError::Host {
            what: "signal thread",
            source,
        })?;
    vm.start()?;
    Ok(vm.wait())
}

/// Serve the runtime on the control channel `fd` (see `--control-fd`).
fn run_controlled(fd: i32) -> ExitCode {
    use ember_vmm::control::server::{run, Outcome};
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: F_GETFD only asks whether the fd is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        eprintln!("ember-vmm: --control-fd {fd}: not an open file descriptor");
        return ExitCode::from(status::BAD_INPUT);
    }
    // SAFETY: the fd is open (checked above) and handed to this process to own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut channel = ember_vmm::control::Channel::from_fd(owned);
    match run(&mut channel) {
        Outcome::Exited(reason) => {
            log::info!("guest exit: {reason:?}");
            ExitCode::from(exit_status(reason))
        }
        Outcome::StartFailed { bad_input: true } => ExitCode::from(status::BAD_INPUT),
        Outcome::StartFailed { bad_input: false } => ExitCode::from(status::VMM_ERROR),
        Outcome::Channel(e) => {
            eprintln!("ember-vmm: {e}");
            ExitCode::from(status::VMM_ERROR)
        }
    }
}

fn exit_status(reason: ExitReason) -> u8 {
    match reason {
        ExitReason::PowerOff => status::POWER_OFF,
        ExitReason::Reset => status::RESET,
        ExitReason::TripleFault => status::TRIPLE_FAULT,
        ExitReason::Stopped => status::STOPPED,
        ExitReason::Error => status::VMM_ERROR,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp(None)
        .format_target(false)
        .init();
    if let Some(fd) = cli.control_fd {
        return run_controlled(fd);
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember-vmm: {e}");
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    match run(&config) {
        Ok(reason) => {
            log::info!("guest exit: {reason:?}");
            ExitCode::from(exit_status(reason))
        }
        Err(e) => {
            eprintln!("ember-vmm: {e}");
            ExitCode::from(if e.is_bad_input() {
                status::BAD_INPUT
            } else {
                status::VMM_ERROR
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_vmm::config::{BucketConfig, RateLimitConfig};

    #[test]
    fn fs_rate_limit_flag_overrides_vm_toml() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("vm.toml");
        std::fs::write(
            &toml,
            "kernel = \"/k\"\n[fs_rate_limit.bandwidth]\nsize = 4096\nrefill_time = 100\n",
        )
        .unwrap();
        let from_file = Cli::try_parse_from(["ember-vmm", "--config", toml.to_str().unwrap()])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            from_file.fs_rate_limit.bandwidth,
            BucketConfig::new(4096, 100)
        );
        let c = Cli::try_parse_from([
            "ember-vmm",
            "--config",
            toml.to_str().unwrap(),
            "--fs-rate-limit",
            "ops=100/1000,ops_burst=10",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            c.fs_rate_limit,
            RateLimitConfig {
                bandwidth: BucketConfig::default(),
                ops: BucketConfig {
                    size: 100,
                    one_time_burst: 10,
                    refill_time: 1000
                },
            },
            "the flag replaces the file's limiter as a whole, as --block-rate-limit does"
        );
        assert!(c.block_rate_limit.is_unlimited());
        let bad = Cli::try_parse_from(["ember-vmm", "--kernel", "/k", "--fs-rate-limit", "ops=5"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("--fs-rate-limit"), "{bad}");
    }
}
