//! The configuration schema: one struct per TOML section, with ember's built-in defaults.
//!
//! Every struct denies unknown fields, so a typo never silently falls back to a default;
//! [`crate::load`] turns such a typo into an error that names the key, file and line.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where ember looks for its guest kernel when the config does not say (`make install`).
pub const DEFAULT_KERNEL: &str = "/usr/share/ember/vmlinux";
/// Where ember looks for its guest initramfs when the config does not say (`make install`).
pub const DEFAULT_INITRD: &str = "/usr/share/ember/initramfs.cpio";
/// The default root of per-sandbox state directories.
pub const DEFAULT_STATE_DIR: &str = "/run/ember";
/// The default vsock port the agent listens on inside the guest.
pub const DEFAULT_AGENT_PORT: u32 = 1024;
/// The default number of empty virtio-blk slots per sandbox VM (see
/// [`HypervisorConfig::block_slots`]).
pub const DEFAULT_BLOCK_SLOTS: u32 = 4;
/// The default cap of a sandbox VM's console log, in bytes: 1 MiB (see
/// [`HypervisorConfig::console_log_max_bytes`]).
pub const DEFAULT_CONSOLE_LOG_MAX_BYTES: u64 = 1 << 20;

/// The whole ember configuration (`config.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[hypervisor]`: the microVM's kernel, guest image and size.
    pub hypervisor: HypervisorConfig,
    /// `[sandbox]`: which backend runs sandboxes and where their state lives.
    pub sandbox: SandboxConfig,
    /// `[agent]`: how the runtime reaches the in-guest agent.
    pub agent: AgentConfig,
    /// `[log]`: logging of the host-side components (shim, runtime, VMM).
    pub log: LogConfig,
}

/// `[hypervisor]`: what the microVM boots and how big it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    /// Guest kernel: an uncompressed ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// Guest initramfs (newc cpio) whose `/init` is the agent. Exclusive with `image`.
    pub initrd: Option<PathBuf>,
    /// Guest root disk image (ext4) whose `/init` is the agent. Exclusive with `initrd`.
    pub image: Option<PathBuf>,
    /// Number of vCPUs of each sandbox VM.
    pub vcpus: u32,
    /// Guest memory of each sandbox VM, in MiB.
    pub memory_mib: u32,
    /// Extra kernel command-line parameters, appended after ember's own.
    pub kernel_params: String,
    /// Which CPU features the guest sees; see [`CpuProfile`].
    pub cpu_profile: CpuProfile,
    /// Empty virtio-blk slots each sandbox VM boots with, for block volumes (a mount of a
    /// host block device or image file with a filesystem type): virtio-mmio has no
    /// hot-plug, so a volume is attached to a free slot and the guest sees the slot's
    /// capacity change. This is the most block volumes a pod can use at once.
    ///
    /// The default, [`DEFAULT_BLOCK_SLOTS`] = 4, covers a pod with a few volumes while
    /// costing little: an empty slot holds no host file, is a few hundred bytes in the VMM
    /// and one virtio-mmio window, and adds one disk probe to the guest's boot (measured
    /// under KVM's instruction emulator on a PVM host: 4 slots made the boot 1.4 s longer,
    /// so not many). The limit, [`crate::BLOCK_SLOTS_RANGE`], comes
    /// from the IRQs: the VMM gives virtio devices IRQs 5 to 23 (19), and a sandbox VM
    /// uses up to 5 itself (root image disk, rng, vsock, the shared virtio-fs folder, the
    /// pod NIC), which leaves 14.
    pub block_slots: u32,
    /// Most bytes a sandbox VM's `console.log` (the guest's serial output, in the sandbox's
    /// state directory: a tmpfs, so host memory) holds. The guest decides what and how much
    /// it prints, so the log is capped: once full, its older half is dropped (a marker line
    /// says so) and it goes on with the guest's latest output, which is what an error
    /// message quotes when a guest fails. Default [`DEFAULT_CONSOLE_LOG_MAX_BYTES`] (1 MiB);
    /// allowed range [`crate::CONSOLE_LOG_MAX_BYTES_RANGE`].
    pub console_log_max_bytes: u64,
    /// Confine the VMM's threads with their seccomp filters (a vCPU thread and the device
    /// thread may make only the system calls they need; any other kills the process that
    /// runs the VMM, with SIGSYS). On by default; turn it off only to diagnose a suspected
    /// missing system call.
    pub seccomp: bool,
    /// `[hypervisor.block_rate_limit]`: the rate limiter of each virtio-blk device of a
    /// sandbox VM (the image disk and every block-volume slot, each with its own limiter of
    /// these settings). Unlimited by default.
    pub block_rate_limit: RateLimit,
    /// `[hypervisor.net_rate_limit]`: the rate limiters of the pod NIC, for frames the guest
    /// receives (`rx`) and sends (`tx`). Unlimited by default.
    pub net_rate_limit: NetRateLimit,
    /// `[hypervisor.fs_rate_limit]`: the rate limiter of the sandbox VM's virtio-fs device
    /// (the shared folder): one operation per FUSE request, and its data bytes (the payload
    /// of reads and writes; for other requests, the bytes of the request). Unlimited by
    /// default.
    pub fs_rate_limit: RateLimit,
}

/// A rate limiter, shaped as Firecracker's: a `bandwidth` bucket (bytes) and an `ops`
/// bucket (requests, or frames). A bucket left out (or all zero) limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Bytes.
    pub bandwidth: RateLimitBucket,
    /// Operations: virtio-blk requests, network frames, or FUSE requests (virtio-fs).
    pub ops: RateLimitBucket,
}

/// One token bucket: `size` tokens, refilled from empty to full in `refill_time`
/// milliseconds, plus `one_time_burst` extra tokens spent first and never refilled. A
/// request larger than `size` still goes through once the bucket is full, and the next
/// ones wait until the excess is paid back. All zero: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitBucket {
    /// Tokens the bucket holds when full (1 to [`crate::RATE_LIMIT_SIZE_MAX`]).
    pub size: u64,
    /// Extra tokens available once, at the start (0 to [`crate::RATE_LIMIT_SIZE_MAX`]).
    pub one_time_burst: u64,
    /// Milliseconds to refill the bucket from empty to full
    /// ([`crate::RATE_LIMIT_REFILL_TIME_MS_RANGE`]).
    pub refill_time: u64,
}

/// The pod NIC's rate limiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NetRateLimit {
    /// Frames from the pod network to the guest.
    pub rx: RateLimit,
    /// Frames from the guest to the pod network.
    pub tx: RateLimit,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from(DEFAULT_KERNEL),
            initrd: Some(PathBuf::from(DEFAULT_INITRD)),
            image: None,
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            cpu_profile: CpuProfile::Auto,
            block_slots: DEFAULT_BLOCK_SLOTS,
            console_log_max_bytes: DEFAULT_CONSOLE_LOG_MAX_BYTES,
            seccomp: true,
            block_rate_limit: RateLimit::default(),
            net_rate_limit: NetRateLimit::default(),
            fs_rate_limit: RateLimit::default(),
        }
    }
}

/// The CPU feature profile offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CpuProfile {
    /// `emulation-safe` on hosts without hardware virtualization, `host` otherwise.
    #[default]
    Auto,
    /// Everything KVM supports on this host.
    Host,
    /// Keeps a stock kernel away from what KVM's instruction emulator cannot run
    /// (XSAVE, SMAP/SMEP, POPCNT, CMPXCHG16B); for PVM hosts.
    EmulationSafe,
}

/// `[sandbox]`: how sandboxes are run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The sandbox backend; see [`Backend`].
    pub backend: Backend,
    /// Root directory of per-sandbox state (sockets, records of host resources).
    pub state_dir: PathBuf,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Microvm,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// The sandbox backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Every sandbox is a KVM microVM (needs a guest kernel and image).
    #[default]
    Microvm,
    /// The agent runs on the host in fresh namespaces: no VM isolation.
    Process,
}

impl Backend {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Microvm => "microvm",
            Backend::Process => "process",
        }
    }
}

/// `[agent]`: how the runtime talks to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The vsock port the agent listens on inside the guest.
    pub port: u32,
    /// How long the runtime keeps retrying to reach a starting agent, in milliseconds.
    ///
    /// The default, 60 s, is far above what a microVM needs on real hardware (the agent
    /// answers within about 100 ms) so that nested or emulated virtualization (where the
    /// guest takes 10 to 30 s to boot) works with no configuration; a VM that dies while
    /// starting ends the wait at once, so only a hung guest waits this long.
    pub dial_timeout_ms: u64,
    /// The agent's own log level.
    pub log_level: LogLevel,
    /// Give the guest a debug shell on its console (needs a `--debug` guest image).
    pub debug_console: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_AGENT_PORT,
            dial_timeout_ms: 60_000,
            log_level: LogLevel::Info,
            debug_console: false,
        }
    }
}

/// `[log]`: logging of ember's host-side components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The minimum level that is logged.
    pub level: LogLevel,
    /// Output format of the CLIs; the shim always logs JSON to containerd.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

/// A log level, from the least to the most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The normal level.
    #[default]
    Info,
    /// Details for debugging ember.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as `log`/`env_logger` filters spell it (`error` ... `trace`).
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Terse human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod log_level_tests {
    use super::LogLevel;

    #[test]
    fn every_level_has_its_own_filter() {
        let all = [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ];
        let filters: Vec<&str> = all.iter().map(|l| l.filter()).collect();
        assert_eq!(filters, ["error", "warn", "info", "debug", "trace"]);
    }
}
