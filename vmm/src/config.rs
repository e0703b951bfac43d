//! The typed configuration of one VM, from the library API, the CLI or a `vm.toml` file.

pub use crate::rate_limiter::config::{
    BucketConfig, NetRateLimitConfig, RateLimitConfig, MAX_BUCKET_SIZE, MAX_REFILL_TIME_MS,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Smallest guest memory the VMM accepts, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most vCPUs the VMM accepts (the MP table and IOAPIC address 254 APIC ids).
pub const MAX_VCPUS: u8 = 254;

/// Most virtio devices one VM can have: one IRQ each, from
/// [`VIRTIO_IRQ_BASE`](crate::layout::VIRTIO_IRQ_BASE) to [`IRQ_MAX`](crate::layout::IRQ_MAX).
pub const MAX_VIRTIO_DEVICES: usize =
    (crate::layout::IRQ_MAX - crate::layout::VIRTIO_IRQ_BASE + 1) as usize;

/// The default cap of a file serial sink ([`VmConfig::serial_max_bytes`]): 1 MiB.
pub const DEFAULT_SERIAL_MAX_BYTES: u64 = 1 << 20;

/// The CPU feature profile offered to the guest (the VMM's own type; ember's config has
/// a setting of the same name that the runtime maps onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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

impl std::str::FromStr for CpuProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            "emulation-safe" => Ok(Self::EmulationSafe),
            _ => Err(format!(
                "unknown cpu profile `{s}`: expected auto, host or emulation-safe"
            )),
        }
    }
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialSink {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file (created or truncated, mode 0600), capped at [`VmConfig::serial_max_bytes`]
    /// as a [`crate::devices::legacy::console_log::ConsoleLog`].
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialSink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdout" => Self::Stdout,
            "none" => Self::None,
            "" => return Err("empty serial sink: expected stdout, none or a file path".into()),
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl Serialize for SerialSink {
    /// The same words as parsing: `stdout`, `none`, or the file's path.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Stdout => s.serialize_str("stdout"),
            Self::None => s.serialize_str("none"),
            Self::File(path) => path.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SerialSink {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file or host block device backing the disk.
    pub path: PathBuf,
    /// Reject guest writes.
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;
    /// `PATH` or `PATH,ro`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some((_, opt)) => {
                return Err(format!(
                    "unknown disk option `{opt}` in `{s}`: expected ro or rw"
                ))
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The vsock device: the host side is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Unix socket for host-initiated connections (`CONNECT <port>`); guest-initiated
    /// connections to host port P go to `<path>_<P>`.
    pub path: PathBuf,
    /// The guest's context id (3 or more).
    #[serde(default = "default_cid")]
    pub cid: u64,
}

fn default_cid() -> u64 {
    3
}

impl std::str::FromStr for VsockConfig {
    type Err = String;
    /// `PATH` or `PATH,cid=N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, cid) = match s.rsplit_once(",cid=") {
            Some((p, c)) => (
                p,
                c.parse()
                    .map_err(|_| format!("bad cid `{c}` in `{s}`: expected a number >= 3"))?,
            ),
            None => (s, default_cid()),
        };
        if path.is_empty() {
            return Err("empty vsock socket path".into());
        }
        if cid < 3 {
            return Err(format!("cid {cid} is reserved: use 3 or more"));
        }
        Ok(Self {
            path: PathBuf::from(path),
            cid,
        })
    }
}

/// A host directory shared over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG /mnt`, or `root=TAG`).
    pub tag: String,
    /// The host directory.
    pub dir: PathBuf,
    /// Refuse every modification.
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    /// `TAG=DIR` or `TAG=DIR,ro`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (tag, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected TAG=DIR[,ro]"))?;
        let (dir, read_only) = match rest.rsplit_once(',') {
            Some((d, "ro")) => (d, true),
            Some((d, "rw")) => (d, false),
            _ => (rest, false),
        };
        if tag.is_empty() || tag.len() > 36 || dir.is_empty() {
            return Err(format!(
                "`{s}`: the tag must be 1 to 36 bytes and the folder non-empty"
            ));
        }
        Ok(Self {
            tag: tag.to_string(),
            dir: PathBuf::from(dir),
            read_only,
        })
    }
}

/// A virtio-net device on a tap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface (created if missing).
    pub tap: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`); a random local one if unset.
    #[serde(default)]
    pub mac: Option<String>,
    /// Network namespace file to create the tap in (e.g. `/var/run/netns/pod1`).
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

impl NetConfig {
    /// The MAC address as bytes: the configured one ([`ember_sys::mac::parse`]'s rule:
    /// six pairs of hex digits separated by `:`, unicast), or a random locally
    /// administered unicast one.
    pub fn mac_bytes(&self) -> Result<[u8; 6], String> {
        match &self.mac {
            Some(m) => parse_mac(m),
            None => ember_sys::mac::random_local()
                .map_err(|e| format!("cannot make a random MAC for tap {}: {e}", self.tap)),
        }
    }
}

/// [`ember_sys::mac::parse`], its error as the message.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    ember_sys::mac::parse(s).map_err(|e| e.to_string())
}

impl std::str::FromStr for NetConfig {
    type Err = String;
    /// `TAP[,mac=..][,netns=PATH]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let tap = parts.next().unwrap_or_default().to_string();
        if tap.is_empty() || tap.len() > 15 {
            return Err(format!("`{s}`: the tap name must be 1 to 15 bytes"));
        }
        let mut c = Self {
            tap,
            mac: None,
            netns: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("mac", m)) => {
                    parse_mac(m)?;
                    c.mac = Some(m.to_string());
                }
                Some(("netns", n)) => c.netns = Some(PathBuf::from(n)),
                _ => return Err(format!("`{p}` in `{s}`: expected mac=.. or netns=PATH")),
            }
        }
        Ok(c)
    }
}

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the VMM appends its device and profile parameters).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Empty virtio-blk slots after the disks: devices of capacity 0 whose backing
    /// [`crate::Vm::block_slots`] handles attach and detach while the VM runs.
    #[serde(default)]
    pub block_slots: u8,
    /// COM1 output.
    #[serde(default)]
    pub serial: SerialSink,
    /// Most bytes a [`SerialSink::File`] holds (its older half is dropped when full; see
    /// [`crate::devices::legacy::console_log::ConsoleLog`]).
    #[serde(default = "default_serial_max_bytes")]
    pub serial_max_bytes: u64,
    /// A virtio-rng device fed from the host's getrandom.
    #[serde(default)]
    pub rng: bool,
    /// A virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Shared folders (virtio-fs), as `[[fs]]` tables.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// Network devices, as `[[net]]` tables.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The rate limiter of each virtio-blk device (every disk and slot has its own with
    /// these settings); all zero (the default): unlimited. `[block_rate_limit.bandwidth]`
    /// and `[block_rate_limit.ops]` in `vm.toml`.
    #[serde(default)]
    pub block_rate_limit: RateLimitConfig,
    /// The rate limiters of each virtio-net device, received (`rx`) and sent (`tx`)
    /// frames; all zero (the default): unlimited.
    #[serde(default)]
    pub net_rate_limit: NetRateLimitConfig,
    /// The rate limiter of each virtio-fs device (every shared folder has its own with
    /// these settings): one operation per FUSE request, and its data bytes (see
    /// [`crate::devices::virtio::fs::cost`]); all zero (the default): unlimited.
    /// `[fs_rate_limit.bandwidth]` and `[fs_rate_limit.ops]` in `vm.toml`.
    #[serde(default)]
    pub fs_rate_limit: RateLimitConfig,
    /// CPU feature profile.
    #[serde(default)]
    pub cpu_profile: CpuProfile,
    /// Confine each VMM thread with its seccomp filter ([`crate::seccomp`]); on by
    /// default. Off only to diagnose a suspected missing system call (`--no-seccomp`).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
}

fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".to_string()
}
fn default_serial_max_bytes() -> u64 {
    DEFAULT_SERIAL_MAX_BYTES
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    256
}
fn default_seccomp() -> bool {
    true
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            disks: Vec::new(),
            block_slots: 0,
            serial: SerialSink::default(),
            serial_max_bytes: default_serial_max_bytes(),
            rng: false,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            block_rate_limit: RateLimitConfig::default(),
            net_rate_limit: NetRateLimitConfig::default(),
            fs_rate_limit: RateLimitConfig::default(),
            cpu_profile: CpuProfile::default(),
            seccomp: default_seccomp(),
        }
    }

    /// Read a `vm.toml` file (keys as in this struct; disks as `[[disks]]` tables).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// How many virtio-mmio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + usize::from(self.block_slots)
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + self.fs.len()
            + self.net.len()
    }

    /// Check the configuration against the host before anything is allocated.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(ConfigError::MissingFile {
                what: "kernel",
                path: self.kernel.clone(),
            });
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::MissingFile {
                    what: "initrd",
                    path: initrd.clone(),
                });
            }
        }
        for d in &self.disks {
            // A disk is an image file or a host block device (Block sizes both by seeking).
            let usable = std::fs::metadata(&d.path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.is_file() || m.file_type().is_block_device()
            });
            if !usable {
                return Err(ConfigError::MissingDisk {
                    path: d.path.clone(),
                });
            }
        }
        for n in &self.net {
            if let Some(m) = &n.mac {
                parse_mac(m).map_err(ConfigError::Invalid)?;
            }
            if let Some(ns) = &n.netns {
                if !ns.exists() {
                    return Err(ConfigError::MissingFile {
                        what: "network namespace",
                        path: ns.clone(),
                    });
                }
            }
        }
        for f in &self.fs {
            if !f.dir.is_dir() {
                return Err(ConfigError::MissingFile {
                    what: "shared folder",
                    path: f.dir.clone(),
                });
            }
        }
        if let Some(v) = &self.vsock {
            match v.path.parent() {
                Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
                _ => {
                    return Err(ConfigError::MissingFile {
                        what: "vsock socket folder",
                        path: v.path.parent().map(Path::to_path_buf).unwrap_or_default(),
                    })
                }
            }
        }
        for (key, limit) in [
            ("block_rate_limit", &self.block_rate_limit),
            ("net_rate_limit.rx", &self.net_rate_limit.rx),
            ("net_rate_limit.tx", &self.net_rate_limit.tx),
            ("fs_rate_limit", &self.fs_rate_limit),
        ] {
            limit
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("{key}.{e}")))?;
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        let host_mib = host_memory_mib();
        if self.memory_mib < MIN_MEMORY_MIB || host_mib.is_some_and(|h| self.memory_mib > h) {
            return Err(ConfigError::Memory {
                mib: self.memory_mib,
                host_mib: host_mib.unwrap_or(u64::MAX),
            });
        }
        let max_devices = MAX_VIRTIO_DEVICES;
        if self.virtio_device_count() > max_devices {
            return Err(ConfigError::TooManyDevices(
                self.virtio_device_count(),
                max_devices,
            ));
        }
        Ok(())
    }
}

/// The host's physical memory in MiB, from sysconf.
pub fn host_memory_mib() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page_size > 0).then(|| (pages as u64 * page_size as u64) >> 20)
}

/// Errors in a VM configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file the VM needs does not exist.
    #[error("{what} {path} does not exist or is not a regular file")]
    MissingFile {
        /// kernel, initrd or disk.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A disk is neither an image file nor a block device.
    #[error("disk {path} does not exist or is neither a regular file nor a block device")]
    MissingDisk {
        /// The path.
        path: PathBuf,
    },
    /// Bad vCPU count.
    #[error("vcpus = {0} is out of range: allowed 1 to 254")]
    Vcpus(u8),
    /// Bad memory size.
    #[error(
        "memory {mib} MiB is out of range: allowed 64 MiB to {host_mib} MiB (the host's memory)"
    )]
    Memory {
        /// Requested.
        mib: u64,
        /// What the host has.
        host_mib: u64,
    },
    /// A value that does not parse.
    #[error("{0}")]
    Invalid(String),
    /// More devices than IRQs.
    #[error("{0} virtio devices requested, but only {1} fit the IOAPIC's IRQs")]
    TooManyDevices(usize, usize),
    /// A `vm.toml` that cannot be read.
    #[error("cannot read VM config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `vm.toml` that cannot be parsed.
    #[error("VM config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_image_files_or_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"").unwrap();
        let with_disk = |path: &Path| {
            let mut c = VmConfig::new(&kernel);
            c.disks.push(DiskConfig {
                path: path.to_path_buf(),
                read_only: true,
            });
            c.validate()
        };
        let image = dir.path().join("disk.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        assert!(with_disk(&image).is_ok());
        for bad in [dir.path().to_path_buf(), dir.path().join("missing")] {
            let e = with_disk(&bad).unwrap_err().to_string();
            assert!(
                e.contains(&bad.display().to_string()) && e.contains("block device"),
                "{e}"
            );
        }
        // Any block device of this host (opening is not needed to validate).
        use std::os::unix::fs::FileTypeExt;
        let dev = std::fs::read_dir("/dev").ok().and_then(|d| {
            d.flatten()
                .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
                .map(|e| e.path())
        });
        match dev {
            Some(dev) => assert!(with_disk(&dev).is_ok(), "{}", dev.display()),
            None => eprintln!(
                "note: disks_are_image_files_or_block_devices: no block device in /dev, so only image files were checked"
            ),
        }
    }

    #[test]
    fn disk_and_serial_syntax() {
        assert_eq!(
            "a.img,ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: true
            }
        );
        assert!(!"a.img".parse::<DiskConfig>().unwrap().read_only);
        assert!("a.img,xx"
            .parse::<DiskConfig>()
            .unwrap_err()
            .contains("unknown disk option `xx`"));
        assert_eq!("none".parse::<SerialSink>().unwrap(), SerialSink::None);
        assert_eq!(
            "/tmp/s".parse::<SerialSink>().unwrap(),
            SerialSink::File("/tmp/s".into())
        );
        assert!("turbo".parse::<CpuProfile>().is_err());
        let n: NetConfig = "tap0,mac=02:00:00:00:00:01,netns=/run/netns/p"
            .parse()
            .unwrap();
        assert_eq!(n.mac_bytes().unwrap(), [2, 0, 0, 0, 0, 1]);
        assert!("tap0,mac=01:00:00:00:00:01"
            .parse::<NetConfig>()
            .unwrap_err()
            .contains("multicast"));
        assert!("tap0,speed=1".parse::<NetConfig>().is_err());
        let random = NetConfig {
            tap: "t".into(),
            mac: None,
            netns: None,
        }
        .mac_bytes()
        .unwrap();
        assert_eq!(random[0] & 3, 2, "local unicast");
        let f: FsConfig = "root=/srv/share,ro".parse().unwrap();
        assert_eq!(
            (f.tag.as_str(), f.dir.as_path(), f.read_only),
            ("root", Path::new("/srv/share"), true)
        );
        assert!("noequals".parse::<FsConfig>().is_err());
        let v: VsockConfig = "/run/v.sock,cid=7".parse().unwrap();
        assert_eq!((v.path, v.cid), ("/run/v.sock".into(), 7));
        assert_eq!("/run/v.sock".parse::<VsockConfig>().unwrap().cid, 3);
        assert!("/x,cid=2"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("reserved"));
    }

    #[test]
    fn toml_file_names_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.toml");
        std::fs::write(&p, "kernel = \"/k\"\nvcpu = 2\n").unwrap();
        let e = VmConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("vcpu") && e.contains("line 2"), "{e}");
        std::fs::write(
            &p,
            "kernel = \"/k\"\nvcpus = 2\n[[disks]]\npath = \"/d\"\nread_only = true\n",
        )
        .unwrap();
        let c = VmConfig::from_file(&p).unwrap();
        assert_eq!((c.vcpus, c.disks.len(), c.disks[0].read_only), (2, 1, true));
        assert_eq!(c.block_slots, 0, "no slots unless asked for");
        std::fs::write(&p, "kernel = \"/k\"\nblock_slots = 3\n").unwrap();
        let c = VmConfig::from_file(&p).unwrap();
        assert_eq!((c.block_slots, c.virtio_device_count()), (3, 3));
        assert!(c.seccomp, "seccomp is on unless turned off");
        assert!(VmConfig::new("/k").seccomp);
        std::fs::write(&p, "kernel = \"/k\"\nseccomp = false\n").unwrap();
        assert!(!VmConfig::from_file(&p).unwrap().seccomp);
    }

    #[test]
    fn rate_limits_in_vm_toml_and_their_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.toml");
        std::fs::write(
            &p,
            "kernel = \"/k\"\n[block_rate_limit.bandwidth]\nsize = 4096\nrefill_time = 100\n\
             [net_rate_limit.tx]\nops = { size = 10, refill_time = 1000, one_time_burst = 5 }\n\
             [fs_rate_limit]\nops = { size = 200, refill_time = 1000 }\n\
             bandwidth = { size = 1048576, refill_time = 500, one_time_burst = 65536 }\n",
        )
        .unwrap();
        let c = VmConfig::from_file(&p).unwrap();
        assert_eq!(c.fs_rate_limit.ops, BucketConfig::new(200, 1000));
        assert_eq!(
            c.fs_rate_limit.bandwidth,
            BucketConfig {
                size: 1 << 20,
                one_time_burst: 65536,
                refill_time: 500
            }
        );
        assert!(VmConfig::new("/k").fs_rate_limit.is_unlimited());
        assert_eq!(c.block_rate_limit.bandwidth, BucketConfig::new(4096, 100));
        assert!(c.block_rate_limit.ops.is_unlimited());
        assert_eq!(c.net_rate_limit.tx.ops.one_time_burst, 5);
        assert!(c.net_rate_limit.rx.is_unlimited());
        assert!(VmConfig::new("/k").block_rate_limit.is_unlimited());
        std::fs::write(
            &p,
            "kernel = \"/k\"\n[block_rate_limit.ops]\nsize = 1\nrefil = 5\n",
        )
        .unwrap();
        let e = VmConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("refil"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"").unwrap();
        let mut c = VmConfig::new(&kernel);
        c.net_rate_limit.rx.ops = BucketConfig::new(0, 100);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("net_rate_limit.rx.ops: size is 0"), "{e}");
        let mut c = VmConfig::new(&kernel);
        c.fs_rate_limit.bandwidth = BucketConfig::new(4096, 0);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("fs_rate_limit.bandwidth: refill_time is 0"),
            "{e}"
        );
        c.fs_rate_limit.bandwidth = BucketConfig::new(4096, 100);
        c.validate().unwrap();
    }
}
