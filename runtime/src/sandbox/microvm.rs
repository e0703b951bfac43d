//! The `microvm` backend: the pod runs in a KVM microVM built by ember's VMM in a process
//! of its own (`ember-vmm --control-fd 3`, [`super::vmm_process`]), which jails itself
//! once the VM is built (namespaces, `pivot_root` into the sandbox's state directory,
//! capabilities, seccomp on every thread) and sits in the sandbox's cgroup
//! (`/ember/<sandbox>/vmm`); the guest kernel boots with the agent as PID 1.
//!
//! The VM gets:
//! - the `[hypervisor]` kernel and either the initramfs or the ext4 image (a read-only
//!   virtio-blk root disk), vCPUs, memory and CPU profile;
//! - a kernel command line that makes the agent PID 1 and tells it its vsock port
//!   (`ember.agent_port=`), then `hypervisor.kernel_params`;
//! - virtio-rng, and hybrid vsock whose Unix socket is `vsock.sock` in the sandbox's state
//!   directory (the agent's [`AgentEndpoint::HybridVsock`]);
//! - the sandbox's shared directory over virtio-fs, tag [`SHARED_TAG`], which the agent
//!   mounts at [`AGENT_SHARED_DIR`] at CreateSandbox;
//! - with a pod network namespace, a virtio-net NIC on a tap in that namespace, joined to
//!   the pod's interface by tc redirects ([`crate::network`]); the NIC takes the pod
//!   interface's MAC;
//! - `hypervisor.block_slots` empty virtio-blk slots, right after the image disk, for the
//!   containers' block volumes ([`super::block`]): each volume is attached to a free slot
//!   and mounted by the agent under [`AGENT_STORAGE_DIR`];
//! - `hypervisor.block_rate_limit` on each virtio-blk device (image disk and slots),
//!   `hypervisor.net_rate_limit` on the NIC and `hypervisor.fs_rate_limit` on the shared
//!   folder's virtio-fs device ([`rate_limit`]).
//!
//! The serial console goes to `console.log` in the state directory.
//!
//! The backend refuses, before anything is made, a host without hardware virtualization
//! (PVM, or KVM without vmx/svm): there a stock guest kernel runs only under KVM's
//! instruction emulator and stops at its first user-space instruction, so the agent would
//! never answer ([`MicrovmError::NoHardwareVirtualization`]).
//!
//! The pod interface's addresses, routes and MTU ([`MicrovmBackend::network`]) reach the
//! guest NIC through the agent's UpdateNetwork ([`update_network_request`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ember_agent_protocol::agent::{
    storage::Driver, Interface, Route, Storage, UpdateNetworkRequest,
};
use ember_config::{Backend as BackendKind, Config};
use ember_vmm::Virtualization;
use ember_vmm::{
    BucketConfig, FsConfig, NetConfig, NetRateLimitConfig, RateLimitConfig, VsockConfig, MAX_VCPUS,
    MIN_MEMORY_MIB,
};
use ember_vmm::{ControlReply, ControlRequest, JailConfig};
use ember_vmm::{DiskConfig, ExitReason, SerialSink, VmConfig};
use log::{info, warn};

use super::block::{BlockSlots, BlockVolumeError, SlotControl};
use super::vmm_process::{vmm_binary, VmmEnd, VmmProcess, VmmProcessError};
use super::{Backend, SandboxError, SandboxExit, StartContext};
use crate::endpoint::AgentEndpoint;
use crate::network::{self, NetworkError, PodNetwork};
use crate::oci::BlockVolume;
use crate::state::{ProcessId, Resource};

/// The virtio-fs tag of the sandbox's shared directory.
pub const SHARED_TAG: &str = "ember-shared";
/// Where the agent mounts the shared directory in the guest.
pub const AGENT_SHARED_DIR: &str = "/run/ember/shared";
/// Where the agent mounts block volumes in the guest: `<dir>/<container>/<mount index>`.
pub const AGENT_STORAGE_DIR: &str = "/run/ember/storage";
/// The hybrid-vsock Unix socket's name in the sandbox's state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The serial console log's name in the sandbox's state directory (mode 0600, at most
/// `hypervisor.console_log_max_bytes`: the VMM's `ConsoleLog`).
pub const CONSOLE_LOG: &str = "console.log";
/// The guest's vsock context id.
pub const GUEST_CID: u64 = 3;
/// Longest Unix socket path (sun_path holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long stopping a VM waits at least for the VMM to exit (see `stop`).
const VMM_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long the VMM may take to build and start the VM.
const VMM_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The VMM's cgroup under the sandbox's (`/ember/<sandbox>/vmm`).
const VMM_CGROUP_LEAF: &str = "vmm";
/// The host cgroup of sandbox `sandbox_id`'s VMM (`/ember/<sandbox>/vmm`).
pub fn vmm_cgroup(sandbox_id: &str) -> String {
    format!(
        "{}/{VMM_CGROUP_LEAF}",
        crate::cgroups::sandbox_parent(sandbox_id)
    )
}

/// The fixed part of the kernel command line: serial console, showing the kernel's errors
/// only (`quiet`), and a guest that panics reboots at once, which ends the VM (the VMM
/// treats a reset as the VM's end). Each byte written to the serial port is an exit to the
/// VMM: the 120-odd lines of a verbose boot doubled the time to the agent in the nested KVM
/// test host (7.0 s, 3.3 s with `quiet`). `hypervisor.kernel_params = "loglevel=7"` (it
/// comes later, and wins) brings them back into the sandbox's console log.
const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=1";
/// What an ext4 image root adds: the first disk, read-only, with the agent as init.
const IMAGE_CMDLINE: &str = "root=/dev/vda ro rootfstype=ext4 init=/init";

/// Errors of the `microvm` backend, each naming the setting or path to fix.
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// A guest asset the configuration names does not exist.
    #[error("{key}: {path} does not exist (build the guest assets with `make guest` and install them with `make install`, or point {key} at them)")]
    MissingFile {
        /// The configuration key.
        key: &'static str,
        /// The path it names.
        path: PathBuf,
    },
    /// A setting the VM cannot use.
    #[error("{key}: {message}")]
    Setting {
        /// The configuration key.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// KVM cannot be used.
    #[error("{problem}: the microvm backend needs KVM; run `ember check` to see what this host can run, or set sandbox.backend = \"process\" (no VM isolation)")]
    NoKvm {
        /// What is wrong with /dev/kvm.
        problem: String,
    },
    /// KVM is there but without hardware virtualization: a guest kernel would run only
    /// under KVM's instruction emulator and stop at its first user-space instruction.
    #[error("the microvm backend needs hardware virtualization (Intel VT-x or AMD-V) and this host has {host}, under which a guest stops at its first user-space instruction; set `[sandbox] backend = \"process\"` (no VM isolation) or use a host with hardware KVM; `ember check` shows what this host can run")]
    NoHardwareVirtualization {
        /// The host's virtualization, described.
        host: &'static str,
    },
    /// The vsock socket path does not fit a Unix socket address.
    #[error("the vsock socket path {path} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows; set a shorter sandbox.state_dir")]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The pod network could not be set up.
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    /// The VMM could not build or start the VM.
    #[error("cannot start the VM: {0}")]
    Vm(String),
    /// The VMM process could not be started, placed or reached.
    #[error(transparent)]
    Vmm(#[from] VmmProcessError),
}

/// The kernel command line for `config`: ember's part (console, root, agent port) then
/// `hypervisor.kernel_params`, so that a user's parameter comes last and wins. (The VMM
/// appends its virtio-mmio device parameters and, under `cpu_profile = auto` on a host
/// without hardware virtualization, the emulation-safe ones.)
pub fn kernel_cmdline(config: &Config) -> String {
    let mut c = String::from(BASE_CMDLINE);
    if config.hypervisor.image.is_some() {
        c.push(' ');
        c.push_str(IMAGE_CMDLINE);
    }
    c.push_str(&format!(" ember.agent_port={}", config.agent.port));
    let extra = config.hypervisor.kernel_params.trim();
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

fn existing(key: &'static str, path: &Path) -> Result<PathBuf, MicrovmError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(MicrovmError::MissingFile {
            key,
            path: path.to_path_buf(),
        })
    }
}

/// The VM of a sandbox whose state directory is `state_dir` and whose shared directory
/// is `shared_dir`, with a NIC on the pod network when there is one. Checks every path and
/// size against the configuration keys that name them; touches nothing.
pub fn vm_config(
    config: &Config,
    state_dir: &Path,
    shared_dir: &Path,
    network: Option<&PodNetwork>,
) -> Result<VmConfig, MicrovmError> {
    let h = &config.hypervisor;
    let mut vm = VmConfig::new(existing("hypervisor.kernel", &h.kernel)?);
    match (&h.initrd, &h.image) {
        (Some(_), Some(_)) => {
            return Err(MicrovmError::Setting {
                key: "hypervisor.image",
                message: "set either hypervisor.initrd or hypervisor.image, not both".into(),
            })
        }
        (None, None) => {
            return Err(MicrovmError::Setting {
                key: "hypervisor.initrd",
                message: "neither hypervisor.initrd nor hypervisor.image is set: the guest needs one, holding the agent as /init".into(),
            })
        }
        (Some(initrd), None) => vm.initrd = Some(existing("hypervisor.initrd", initrd)?),
        (None, Some(image)) => vm.disks.push(DiskConfig {
            path: existing("hypervisor.image", image)?,
            read_only: true,
        }),
    }
    vm.vcpus = match u8::try_from(h.vcpus) {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => n,
        _ => {
            return Err(MicrovmError::Setting {
                key: "hypervisor.vcpus",
                message: format!("{} is out of range: allowed 1 to {MAX_VCPUS}", h.vcpus),
            })
        }
    };
    if u64::from(h.memory_mib) < MIN_MEMORY_MIB {
        return Err(MicrovmError::Setting {
            key: "hypervisor.memory_mib",
            message: format!(
                "{} MiB is too small: the VM needs at least {MIN_MEMORY_MIB} MiB",
                h.memory_mib
            ),
        });
    }
    vm.memory_mib = u64::from(h.memory_mib);
    let (lo, hi) = ember_config::BLOCK_SLOTS_RANGE;
    vm.block_slots = match u8::try_from(h.block_slots) {
        Ok(n) if (lo..=hi).contains(&h.block_slots) => n,
        _ => {
            return Err(MicrovmError::Setting {
                key: "hypervisor.block_slots",
                message: format!("{} is out of range: allowed {lo} to {hi}", h.block_slots),
            })
        }
    };
    vm.cpu_profile = cpu_profile(h.cpu_profile);
    vm.cmdline = kernel_cmdline(config);
    vm.serial = SerialSink::File(state_dir.join(CONSOLE_LOG));
    vm.serial_max_bytes = h.console_log_max_bytes;
    vm.seccomp = h.seccomp;
    vm.block_rate_limit = rate_limit(&h.block_rate_limit);
    vm.net_rate_limit = NetRateLimitConfig {
        rx: rate_limit(&h.net_rate_limit.rx),
        tx: rate_limit(&h.net_rate_limit.tx),
    };
    vm.fs_rate_limit = rate_limit(&h.fs_rate_limit);
    vm.rng = true;
    let socket = state_dir.join(VSOCK_SOCKET);
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(MicrovmError::SocketPath { path: socket, len });
    }
    vm.vsock = Some(VsockConfig {
        path: socket,
        cid: GUEST_CID,
    });
    vm.fs.push(FsConfig {
        tag: SHARED_TAG.into(),
        dir: shared_dir.to_path_buf(),
        read_only: false,
    });
    if let Some(n) = network {
        vm.net.push(NetConfig {
            tap: n.tap.clone(),
            mac: Some(n.interface.mac_string()),
            netns: Some(n.netns.clone()),
        });
    }
    Ok(vm)
}

/// The VMM's limiter settings for a `[hypervisor.*_rate_limit]` section (the same keys;
/// `ember-config` has checked them against the VMM's limits, see the tests).
pub fn rate_limit(limit: &ember_config::RateLimit) -> RateLimitConfig {
    let bucket = |b: &ember_config::RateLimitBucket| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    };
    RateLimitConfig {
        bandwidth: bucket(&limit.bandwidth),
        ops: bucket(&limit.ops),
    }
}

/// How a VM exit reads in messages.
pub fn describe_exit(reason: ExitReason) -> String {
    match reason {
        ExitReason::PowerOff => "the guest powered off".into(),
        ExitReason::Reset => {
            "the guest reset (a reboot, or a kernel panic: see console.log)".into()
        }
        // The nested test host's runner looks for these words
        // (`ember_tests::kvm_host::guest_triple_faulted`).
        ExitReason::TripleFault => "a vCPU triple-faulted (see console.log)".into(),
        ExitReason::Stopped => "stopped by the host".into(),
        ExitReason::Error => "a vCPU hit an error KVM could not handle".into(),
    }
}

/// Checks that /dev/kvm can be opened.
fn check_kvm() -> Result<(), MicrovmError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MicrovmError::NoKvm {
            problem: "this host has no /dev/kvm".into(),
        }),
        Err(e) => Err(MicrovmError::NoKvm {
            problem: format!("cannot open /dev/kvm ({e})"),
        }),
    }
}

/// The VMM's CPU profile for the config's `hypervisor.cpu_profile`.
pub fn cpu_profile(setting: ember_config::CpuProfile) -> ember_vmm::CpuProfile {
    match setting {
        ember_config::CpuProfile::Auto => ember_vmm::CpuProfile::Auto,
        ember_config::CpuProfile::Host => ember_vmm::CpuProfile::Host,
        ember_config::CpuProfile::EmulationSafe => ember_vmm::CpuProfile::EmulationSafe,
    }
}

/// Virtio devices a sandbox VM has besides its block slots: the root image disk, rng,
/// vsock, the shared virtio-fs folder and the pod NIC.
pub const SANDBOX_OWN_DEVICES: usize = 5;

/// Refuses virtualization under which the guest's user space, and so the agent, cannot run.
pub fn require_hardware_virtualization(virt: Virtualization) -> Result<(), MicrovmError> {
    let host = match virt {
        Virtualization::HardwareVmx | Virtualization::HardwareSvm => return Ok(()),
        Virtualization::Pvm => {
            "PVM: KVM without hardware virtualization (kvm_pvm loaded, no vmx/svm CPU flag)"
        }
        Virtualization::KvmWithoutHardware => {
            "KVM without hardware virtualization (no vmx/svm CPU flag)"
        }
        Virtualization::None => {
            return Err(MicrovmError::NoKvm {
                problem: "this host has no KVM".into(),
            })
        }
    };
    Err(MicrovmError::NoHardwareVirtualization { host })
}

/// The running VM: its VMM process and the command line the guest got.
struct VmHandle {
    vmm: Arc<VmmProcess>,
    cmdline: String,
}

/// The slots' [`SlotControl`]: `Attach` and `Detach` on the VMM's control channel.
struct ChannelSlots(Arc<VmmProcess>);

impl SlotControl for ChannelSlots {
    fn attach(
        &self,
        index: usize,
        disk: &std::fs::File,
        path: &Path,
        read_only: bool,
    ) -> Result<u64, String> {
        use std::os::fd::AsFd;
        let request = ControlRequest::Attach {
            slot: index,
            read_only,
            path: path.to_path_buf(),
        };
        match self.0.request(&request, Some(disk.as_fd()), None) {
            Ok(ControlReply::Attached { capacity, .. }) => Ok(capacity),
            Ok(other) => Err(VmmProcessError::Unexpected(format!("{other:?}")).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn detach(&self, index: usize) -> Result<(), String> {
        match self
            .0
            .request(&ControlRequest::Detach { slot: index }, None, None)
        {
            Ok(ControlReply::Detached { .. }) => Ok(()),
            Ok(other) => Err(VmmProcessError::Unexpected(format!("{other:?}")).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Makes cgroup `path` in every hierarchy (its parents too) and moves `pid` into it;
/// fails naming what failed.
fn place_in_cgroup(path: &str, pid: u32) -> Result<(), String> {
    let rel = path.trim_start_matches('/');
    for h in crate::cgroups::hierarchies() {
        let mut dir = h.clone();
        for part in Path::new(rel).components() {
            let parent = dir.clone();
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
            }
            // A new cgroup v1 cpuset has no CPUs and no memory nodes, and refuses
            // processes (ENOSPC) until it is given some: its parent's, as runc does.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let own = dir.join(f);
                if std::fs::read_to_string(&own).is_ok_and(|v| v.trim().is_empty()) {
                    let from = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                    std::fs::write(&own, from.trim())
                        .map_err(|e| format!("cannot set {}: {e}", own.display()))?;
                }
            }
        }
    }
    // Accounted by memory and CPU (cgroup v2): what the VM costs shows in its cgroup.
    for e in crate::cgroups::enable_controllers(path) {
        log::info!("vmm {pid}: {e}");
    }
    let (joined, failed) = crate::cgroups::join(path, pid);
    if let Some(e) = failed.into_iter().next() {
        return Err(e.to_string());
    }
    log::debug!(
        "vmm {pid}: in cgroup {path} ({} hierarchies)",
        joined.count()
    );
    Ok(())
}

/// The agent's UpdateNetwork for a pod network: the guest NIC (which has the pod
/// interface's MAC) gets the pod interface's MTU and addresses, and the pod's routes.
pub fn update_network_request(net: &PodNetwork) -> UpdateNetworkRequest {
    let mac = net.interface.mac_string();
    let mut nic = Interface::new();
    nic.mac = mac.clone();
    nic.mtu = net.interface.mtu;
    nic.addresses = net
        .interface
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut req = UpdateNetworkRequest::new();
    req.interfaces.push(nic);
    req.routes = net
        .routes
        .iter()
        .map(|r| {
            let mut route = Route::new();
            route.destination = r.destination.map(|d| d.to_string()).unwrap_or_default();
            route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            route.source = r.source.map(|s| s.to_string()).unwrap_or_default();
            route.interface_mac = mac.clone();
            route
        })
        .collect();
    req
}

/// The `microvm` backend.
#[derive(Default)]
pub struct MicrovmBackend {
    /// Boot even without hardware virtualization ([`MicrovmBackend::for_kernel_boot_tests`]).
    allow_emulation: bool,
    log: Option<PathBuf>,
    network: Option<PodNetwork>,
    vm: Option<VmHandle>,
    /// The VM's virtio-blk slots and which container's volume each holds.
    slots: Mutex<BlockSlots>,
}

impl MicrovmBackend {
    /// A backend that also starts its VM on a host without hardware virtualization, which
    /// the default backend refuses ([`MicrovmError::NoHardwareVirtualization`]). There KVM
    /// runs the guest kernel under its instruction emulator, slowly, and the guest stops at
    /// its first user-space instruction: the agent never answers. This exists only for
    /// tests of the guest kernel and the VM's devices on such hosts
    /// (`runtime/tests/microvm.rs`); no configuration key, option or environment variable
    /// leads to it, and [`super::Sandbox::start`] never uses it.
    pub fn for_kernel_boot_tests() -> Self {
        Self {
            allow_emulation: true,
            ..Default::default()
        }
    }

    /// Whether this host can run the backend's VMs: /dev/kvm opens, and (unless
    /// [`MicrovmBackend::for_kernel_boot_tests`]) the host has hardware virtualization.
    fn host_check(&self) -> Result<(), MicrovmError> {
        check_kvm()?;
        if self.allow_emulation {
            return Ok(());
        }
        require_hardware_virtualization(Virtualization::detect(Path::new("/")))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BlockSlots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pod network the VM is joined to: the tap, the pod interface (its MAC is the
    /// guest NIC's) and the addresses and routes the guest has to configure. `None` without
    /// a pod network namespace. [`Backend::network_request`] turns it into the agent's
    /// UpdateNetwork call.
    pub fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    /// The full kernel command line the guest got (with the VMM's additions), once started.
    pub fn cmdline(&self) -> Option<&str> {
        self.vm.as_ref().map(|v| v.cmdline.as_str())
    }

    async fn start_vm(&mut self, ctx: StartContext<'_>) -> Result<AgentEndpoint, SandboxError> {
        let id = ctx.id.to_string();
        let fail = |e: MicrovmError| SandboxError::Backend {
            id: id.clone(),
            message: e.to_string(),
        };
        let dir = ctx.state.dir().to_path_buf();
        // Check the configuration and the host before making anything.
        vm_config(ctx.config, &dir, ctx.shared_dir, None).map_err(fail)?;
        self.host_check().map_err(fail)?;
        let socket = dir.join(VSOCK_SOCKET);
        self.log = Some(dir.join(CONSOLE_LOG));
        ctx.state.add(Resource::Socket {
            path: socket.clone(),
        })?;
        if let Some(ns) = ctx.netns {
            ctx.state.add(Resource::Tap {
                name: network::TAP_NAME.into(),
                netns: Some(ns.to_path_buf()),
            })?;
            let ns = ns.to_path_buf();
            let net = tokio::task::spawn_blocking(move || {
                network::setup_pod_network(&ns, network::TAP_NAME)
            })
            .await
            .expect("network setup does not panic")
            .map_err(|e| fail(e.into()))?;
            info!(
                "sandbox={id}: pod network: {} joined to {} (mac {}, mtu {}), addresses [{}], routes [{}]",
                net.tap,
                net.interface.name,
                net.interface.mac_string(),
                net.interface.mtu,
                net.interface.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                net.routes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            );
            self.network = Some(net);
        }
        let config =
            vm_config(ctx.config, &dir, ctx.shared_dir, self.network.as_ref()).map_err(fail)?;

        // The VMM: spawned, recorded (so that cleanup kills a survivor), placed in the
        // sandbox's cgroup before it maps guest memory, then given the VM.
        let binary = vmm_binary().ok_or_else(|| fail(VmmProcessError::NotFound.into()))?;
        let level = std::env::var("EMBER_VMM_LOG").unwrap_or_else(|_| "info".into());
        let vmm = VmmProcess::spawn(binary, &id, &level, format!("vmm-{id}"))
            .map_err(|e| fail(e.into()))?;
        let pid = vmm.pid();
        let vmm = Arc::new(vmm);
        if let Some(pid_id) = ProcessId::of(pid) {
            ctx.state.add(Resource::Process {
                role: "vmm".into(),
                id: pid_id,
            })?;
        }
        let parent = crate::cgroups::sandbox_parent(ctx.id);
        let cgroup = vmm_cgroup(ctx.id);
        // The parent too (`Sandbox::start` has recorded it already; not twice).
        ctx.state.add(Resource::Cgroup { path: parent })?;
        ctx.state.add(Resource::Cgroup {
            path: cgroup.clone(),
        })?;
        // Kept by the backend from here on, so that stop() ends the VMM whatever fails.
        self.vm = Some(VmHandle {
            vmm: vmm.clone(),
            cmdline: String::new(),
        });
        place_in_cgroup(&cgroup, pid as u32)
            .map_err(|e| fail(MicrovmError::Vm(format!("the VMM's cgroup: {e}"))))?;
        let start = ControlRequest::Start {
            config: Box::new(config),
            jail: JailConfig::new(&dir),
        };
        let starter = vmm.clone();
        let answer = tokio::task::spawn_blocking(move || {
            starter.request(&start, None, Some(VMM_START_TIMEOUT))
        })
        .await
        .map_err(|e| fail(MicrovmError::Vm(format!("the VMM's start: {e}"))))?;
        let (cmdline, slots) = match answer {
            Ok(ControlReply::Ready { cmdline, slots }) => (cmdline, slots),
            Ok(other) => {
                return Err(fail(
                    VmmProcessError::Unexpected(format!("{other:?}")).into(),
                ))
            }
            Err(VmmProcessError::Refused { message, .. }) => {
                return Err(fail(MicrovmError::Vm(message)))
            }
            Err(e) => {
                return Err(fail(MicrovmError::Vm(format!(
                    "{e} (the VMM's messages are in this log, with sandbox={id})"
                ))))
            }
        };
        info!(
            "sandbox={id}: VM started ({} vCPU, {} MiB), console at {}, kernel command line `{cmdline}`",
            ctx.config.hypervisor.vcpus,
            ctx.config.hypervisor.memory_mib,
            dir.join(CONSOLE_LOG).display()
        );
        self.vm = Some(VmHandle {
            vmm: vmm.clone(),
            cmdline,
        });
        self.slots = Mutex::new(BlockSlots::new(slots, Box::new(ChannelSlots(vmm))));
        Ok(AgentEndpoint::HybridVsock {
            socket,
            port: ctx.config.agent.port,
        })
    }
}

#[async_trait]
impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn check_host(&self) -> Result<(), String> {
        self.host_check().map_err(|e| e.to_string())
    }

    async fn start(&mut self, ctx: StartContext<'_>) -> Result<AgentEndpoint, SandboxError> {
        self.start_vm(ctx).await
    }

    fn agent_shared_dir(&self) -> PathBuf {
        PathBuf::from(AGENT_SHARED_DIR)
    }

    fn sandbox_storages(&self) -> Vec<Storage> {
        let mut s = Storage::new();
        s.driver = Driver::VIRTIO_FS.into();
        s.source = SHARED_TAG.into();
        s.fstype = "virtiofs".into();
        s.mount_point = AGENT_SHARED_DIR.into();
        vec![s]
    }

    fn network_request(&self) -> Option<UpdateNetworkRequest> {
        self.network.as_ref().map(update_network_request)
    }

    fn block_volume_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from(AGENT_STORAGE_DIR))
    }

    fn attach_block_volumes(
        &self,
        container_id: &str,
        volumes: &[BlockVolume],
    ) -> Result<Vec<Storage>, BlockVolumeError> {
        let mut slots = self.slots();
        volumes
            .iter()
            .map(|v| {
                let s = slots.attach(container_id, v)?;
                info!(
                    "container={container_id}: {}: {} attached at {} ({} of {} slots free)",
                    v.describe(),
                    v.source.display(),
                    s.source,
                    slots.free(),
                    slots.len()
                );
                Ok(s)
            })
            .collect()
    }

    fn release_block_volumes(&self, container_id: &str) {
        let freed = self.slots().release(container_id);
        if freed > 0 {
            info!("container={container_id}: {freed} block volume(s) detached");
        }
    }

    fn pid(&self) -> u32 {
        self.vm.as_ref().map_or(0, |v| v.vmm.pid() as u32)
    }

    fn log_path(&self) -> Option<PathBuf> {
        self.log.clone()
    }

    async fn wait(&self) -> SandboxExit {
        let Some(mut rx) = self.vm.as_ref().map(|v| v.vmm.end()) else {
            return std::future::pending().await;
        };
        let end = rx.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        SandboxExit {
            status: match end {
                Ok(Some(VmmEnd::Exited(reason))) => describe_exit(reason),
                Ok(Some(VmmEnd::Died(status))) => status,
                // The VMM's thread ended without publishing (it panicked).
                _ => "the VMM's watcher ended unexpectedly".into(),
            },
        }
    }

    /// A VM has no polite stop of its own (the agent was told DestroySandbox before): the
    /// VMM is told to `Stop`, which ends the vCPUs at once, and is SIGKILLed if it has not
    /// exited within `grace` (at least [`VMM_EXIT_WAIT`]: until it has exited it may
    /// still write, its console log, into the state dir that the caller removes next).
    async fn stop(&self, grace: Duration) {
        let Some(vm) = &self.vm else { return };
        let grace = grace.max(VMM_EXIT_WAIT);
        let mut end = vm.vmm.end();
        if end.borrow().is_none() {
            let vmm = vm.vmm.clone();
            let asked = tokio::task::spawn_blocking(move || {
                vmm.request(&ControlRequest::Stop, None, Some(grace))
            })
            .await;
            if let Ok(Err(e)) = asked {
                warn!("the VMM did not take the stop request: {e}");
            }
            let done = tokio::time::timeout(grace, end.wait_for(|e| e.is_some()))
                .await
                .is_ok();
            if !done {
                warn!("the VMM did not exit within {grace:?} of the stop; killing it");
                vm.vmm.kill();
                let _ = end.wait_for(|e| e.is_some()).await;
            }
        }
        *self.slots() = BlockSlots::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{IpNet, PodInterface};

    struct Assets {
        _dir: tempfile::TempDir,
        kernel: PathBuf,
        initrd: PathBuf,
        image: PathBuf,
        state: PathBuf,
        shared: PathBuf,
    }

    fn assets() -> Assets {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for f in ["vmlinux", "initramfs.cpio", "rootfs.ext4"] {
            std::fs::write(p(f), b"x").unwrap();
        }
        std::fs::create_dir(p("shared")).unwrap();
        Assets {
            kernel: p("vmlinux"),
            initrd: p("initramfs.cpio"),
            image: p("rootfs.ext4"),
            state: dir.path().to_path_buf(),
            shared: p("shared"),
            _dir: dir,
        }
    }

    fn config(a: &Assets) -> Config {
        let mut c = Config::default();
        c.hypervisor.kernel = a.kernel.clone();
        c.hypervisor.initrd = Some(a.initrd.clone());
        c.hypervisor.vcpus = 2;
        c.hypervisor.memory_mib = 512;
        c.agent.port = 2048;
        c
    }

    #[test]
    fn initramfs_vm_has_agent_port_rng_vsock_share_and_console() {
        let a = assets();
        let mut c = config(&a);
        c.hypervisor.kernel_params = " loglevel=4 ".into();
        let vm = vm_config(&c, &a.state, &a.shared, None).unwrap();
        assert_eq!(vm.kernel, a.kernel);
        assert_eq!(vm.initrd.as_deref(), Some(a.initrd.as_path()));
        assert!(vm.disks.is_empty());
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 512));
        assert_eq!(
            vm.cmdline,
            "console=ttyS0 quiet reboot=k panic=1 ember.agent_port=2048 loglevel=4"
        );
        assert!(vm.rng);
        assert_eq!(
            vm.vsock,
            Some(VsockConfig {
                path: a.state.join("vsock.sock"),
                cid: 3
            })
        );
        assert_eq!(
            vm.fs,
            vec![FsConfig {
                tag: "ember-shared".into(),
                dir: a.shared.clone(),
                read_only: false
            }]
        );
        assert_eq!(vm.serial, SerialSink::File(a.state.join("console.log")));
        assert_eq!(
            vm.serial_max_bytes,
            ember_config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
            "hypervisor.console_log_max_bytes' default"
        );
        assert!(vm.net.is_empty());
        assert_eq!(vm.cpu_profile, ember_vmm::CpuProfile::Auto);
        assert_eq!(vm.block_slots, 4, "hypervisor.block_slots' default");
        assert!(vm.seccomp, "hypervisor.seccomp's default");
        assert!(
            vm.block_rate_limit.is_unlimited()
                && vm.net_rate_limit.rx.is_unlimited()
                && vm.net_rate_limit.tx.is_unlimited()
                && vm.fs_rate_limit.is_unlimited(),
            "no rate limit unless configured"
        );
        vm.validate().unwrap();
    }

    #[test]
    fn rate_limits_reach_every_device_of_the_vm() {
        let a = assets();
        let parsed = ember_config::parse(
            "[hypervisor.block_rate_limit]\n\
             bandwidth = { size = 10485760, refill_time = 1000, one_time_burst = 4096 }\n\
             ops = { size = 500, refill_time = 250 }\n\
             [hypervisor.net_rate_limit.rx.bandwidth]\nsize = 1250000\nrefill_time = 100\n\
             [hypervisor.net_rate_limit.tx.ops]\nsize = 1000\nrefill_time = 1000\n\
             [hypervisor.fs_rate_limit]\n\
             bandwidth = { size = 52428800, refill_time = 1000 }\n\
             ops = { size = 2000, refill_time = 500, one_time_burst = 100 }\n",
            None,
        )
        .unwrap();
        let mut c = config(&a);
        c.hypervisor.block_rate_limit = parsed.hypervisor.block_rate_limit;
        c.hypervisor.net_rate_limit = parsed.hypervisor.net_rate_limit;
        c.hypervisor.fs_rate_limit = parsed.hypervisor.fs_rate_limit;
        c.hypervisor.block_slots = 2;
        let vm = vm_config(&c, &a.state, &a.shared, None).unwrap();
        assert_eq!(
            vm.block_rate_limit,
            RateLimitConfig {
                bandwidth: BucketConfig {
                    size: 10 << 20,
                    one_time_burst: 4096,
                    refill_time: 1000
                },
                ops: BucketConfig::new(500, 250),
            },
            "one setting, applied by the VMM to the image disk and to each slot"
        );
        assert_eq!(
            vm.net_rate_limit,
            NetRateLimitConfig {
                rx: RateLimitConfig {
                    bandwidth: BucketConfig::new(1_250_000, 100),
                    ops: BucketConfig::default(),
                },
                tx: RateLimitConfig {
                    bandwidth: BucketConfig::default(),
                    ops: BucketConfig::new(1000, 1000),
                },
            }
        );
        assert_eq!(
            vm.fs_rate_limit,
            RateLimitConfig {
                bandwidth: BucketConfig::new(50 << 20, 1000),
                ops: BucketConfig {
                    size: 2000,
                    one_time_burst: 100,
                    refill_time: 500
                },
            },
            "the shared folder's virtio-fs device"
        );
        assert_eq!(
            vm.fs.len(),
            1,
            "one virtio-fs device, which the limiter applies to"
        );
        vm.validate().unwrap();
    }

    /// The config's ranges and defaults are the VMM's limits: a value the config accepts
    /// is one the VMM takes, and no VMM capacity is hidden by the config.
    #[test]
    fn config_ranges_are_the_vmms_limits() {
        assert_eq!(
            ember_config::VCPUS_RANGE,
            (1, u32::from(ember_vmm::MAX_VCPUS))
        );
        assert_eq!(
            u64::from(ember_config::MEMORY_MIB_RANGE.0),
            ember_vmm::MIN_MEMORY_MIB
        );
        assert_eq!(
            ember_config::BLOCK_SLOTS_RANGE.1 as usize,
            ember_vmm::MAX_VIRTIO_DEVICES - SANDBOX_OWN_DEVICES
        );
        assert_eq!(
            ember_config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
            ember_vmm::DEFAULT_SERIAL_MAX_BYTES
        );
        assert_eq!(
            ember_config::RATE_LIMIT_SIZE_MAX,
            ember_vmm::MAX_BUCKET_SIZE
        );
        assert_eq!(
            ember_config::RATE_LIMIT_REFILL_TIME_MS_RANGE,
            (1, ember_vmm::MAX_REFILL_TIME_MS)
        );
        for (setting, name) in [
            (ember_config::CpuProfile::Auto, "auto"),
            (ember_config::CpuProfile::Host, "host"),
            (ember_config::CpuProfile::EmulationSafe, "emulation-safe"),
        ] {
            assert_eq!(cpu_profile(setting), name.parse().unwrap(), "{name}");
        }
    }

    #[test]
    fn image_vm_boots_a_read_only_root_disk_with_the_agent_as_init() {
        let a = assets();
        let mut c = config(&a);
        c.hypervisor.initrd = None;
        c.hypervisor.image = Some(a.image.clone());
        c.hypervisor.cpu_profile = ember_config::CpuProfile::Host;
        c.hypervisor.seccomp = false;
        let vm = vm_config(&c, &a.state, &a.shared, None).unwrap();
        assert!(!vm.seccomp, "hypervisor.seccomp reaches the VMM");
        assert_eq!(vm.initrd, None);
        assert_eq!(
            vm.disks,
            vec![DiskConfig {
                path: a.image.clone(),
                read_only: true
            }]
        );
        assert!(vm
            .cmdline
            .contains("root=/dev/vda ro rootfstype=ext4 init=/init ember.agent_port=2048"));
        assert_eq!(vm.cpu_profile, ember_vmm::CpuProfile::Host);
    }

    #[test]
    fn pod_network_adds_a_nic_with_the_pod_mac_in_the_netns() {
        let a = assets();
        let net = PodNetwork {
            netns: "/run/netns/pod".into(),
            tap: "ember_tap0".into(),
            interface: PodInterface {
                name: "eth0".into(),
                index: 2,
                mac: [0x0a, 0x58, 0x0a, 0x58, 0, 5],
                mtu: 1450,
                addresses: vec![IpNet {
                    addr: "10.88.0.5".parse().unwrap(),
                    prefix_len: 16,
                }],
            },
            routes: vec![crate::network::PodRoute {
                destination: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                source: None,
            }],
        };
        let req = update_network_request(&net);
        assert_eq!(req.interfaces[0].mac, "0a:58:0a:58:00:05");
        assert_eq!(req.interfaces[0].mtu, 1450);
        assert_eq!(req.interfaces[0].addresses, ["10.88.0.5/16"]);
        assert_eq!(req.routes[0].destination, "", "default route");
        assert_eq!(req.routes[0].gateway, "10.88.0.1");
        assert_eq!(req.routes[0].interface_mac, "0a:58:0a:58:00:05");
        let vm = vm_config(&config(&a), &a.state, &a.shared, Some(&net)).unwrap();
        assert_eq!(
            vm.net,
            vec![NetConfig {
                tap: "ember_tap0".into(),
                mac: Some("0a:58:0a:58:00:05".into()),
                netns: Some("/run/netns/pod".into())
            }]
        );
    }

    #[test]
    fn errors_name_the_setting_or_path() {
        let a = assets();
        let err = |c: &Config| {
            vm_config(c, &a.state, &a.shared, None)
                .unwrap_err()
                .to_string()
        };
        let mut c = config(&a);
        c.hypervisor.kernel = a.state.join("nope");
        let e = err(&c);
        assert!(
            e.starts_with(&format!(
                "hypervisor.kernel: {} does not exist",
                a.state.join("nope").display()
            )),
            "{e}"
        );
        let mut c = config(&a);
        c.hypervisor.initrd = Some(a.state.join("gone.cpio"));
        assert!(err(&c).starts_with("hypervisor.initrd: "), "{}", err(&c));
        let mut c = config(&a);
        c.hypervisor.image = Some(a.image.clone());
        assert!(err(&c).contains("not both"), "{}", err(&c));
        c.hypervisor.initrd = None;
        c.hypervisor.image = None;
        assert!(err(&c).contains("neither"), "{}", err(&c));
        let mut c = config(&a);
        c.hypervisor.vcpus = 300;
        assert!(
            err(&c).starts_with("hypervisor.vcpus: 300 is out of range"),
            "{}",
            err(&c)
        );
        c.hypervisor.vcpus = 0;
        assert!(err(&c).starts_with("hypervisor.vcpus: 0"), "{}", err(&c));
        let mut c = config(&a);
        c.hypervisor.block_slots = 15;
        assert!(
            err(&c).starts_with("hypervisor.block_slots: 15 is out of range: allowed 0 to 14"),
            "{}",
            err(&c)
        );
        c.hypervisor.block_slots = 300;
        assert!(
            err(&c).starts_with("hypervisor.block_slots: 300"),
            "{}",
            err(&c)
        );
        let mut c = config(&a);
        c.hypervisor.memory_mib = 16;
        assert!(
            err(&c).starts_with("hypervisor.memory_mib: 16 MiB"),
            "{}",
            err(&c)
        );
        let long = a.state.join("x".repeat(120));
        let e = vm_config(&config(&a), &long, &a.shared, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sandbox.state_dir") && e.contains("vsock.sock"),
            "{e}"
        );
        let e = MicrovmError::NoKvm {
            problem: "this host has no /dev/kvm".into(),
        }
        .to_string();
        assert!(
            e.contains("ember check") && e.contains("backend = \"process\""),
            "{e}"
        );
    }

    #[test]
    fn hosts_without_hardware_virtualization_are_refused_in_one_line() {
        assert!(require_hardware_virtualization(Virtualization::HardwareVmx).is_ok());
        assert!(require_hardware_virtualization(Virtualization::HardwareSvm).is_ok());
        for (virt, host) in [
            (Virtualization::Pvm, "this host has PVM: KVM without hardware virtualization (kvm_pvm loaded, no vmx/svm CPU flag),"),
            (Virtualization::KvmWithoutHardware, "this host has KVM without hardware virtualization (no vmx/svm CPU flag),"),
        ] {
            let e = require_hardware_virtualization(virt).unwrap_err().to_string();
            assert!(e.starts_with("the microvm backend needs hardware virtualization"), "{e}");
            assert!(e.contains(host), "{e}");
            assert!(e.contains("`[sandbox] backend = \"process\"` (no VM isolation)"), "{e}");
            assert!(e.contains("`ember check`"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = require_hardware_virtualization(Virtualization::None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("this host has no KVM: the microvm backend needs KVM"),
            "{e}"
        );
        assert!(!MicrovmBackend::default().allow_emulation);
        assert!(MicrovmBackend::for_kernel_boot_tests().allow_emulation);
    }

    #[test]
    fn shared_dir_storage_mounts_the_tag_at_the_agent_path() {
        let b = MicrovmBackend::default();
        let s = b.sandbox_storages();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].driver.enum_value_or_default(), Driver::VIRTIO_FS);
        assert_eq!(s[0].source, SHARED_TAG);
        assert_eq!(s[0].mount_point, AGENT_SHARED_DIR);
        assert_eq!(b.agent_shared_dir(), PathBuf::from("/run/ember/shared"));
        assert_eq!(
            b.block_volume_dir(),
            Some(PathBuf::from("/run/ember/storage"))
        );
        assert!(
            crate::sandbox::process::ProcessBackend::default()
                .block_volume_dir()
                .is_none(),
            "the process backend leaves filesystem mounts to libcontainer"
        );
        assert_eq!(b.pid(), 0, "no VMM before start");
        assert!(b.network().is_none() && b.cmdline().is_none());
    }

    #[test]
    fn every_slot_the_config_allows_fits_the_vm_with_all_its_devices() {
        // The largest sandbox VM: image disk, rng, vsock, share, NIC, and the most slots.
        let a = assets();
        let mut c = config(&a);
        c.hypervisor.initrd = None;
        c.hypervisor.image = Some(a.image.clone());
        c.hypervisor.block_slots = ember_config::BLOCK_SLOTS_RANGE.1;
        let mut vm = vm_config(&c, &a.state, &a.shared, None).unwrap();
        vm.net.push(NetConfig {
            tap: "t".into(),
            mac: None,
            netns: None,
        });
        assert_eq!(vm.virtio_device_count(), 19);
        vm.validate().unwrap();
        vm.block_slots += 1;
        assert!(vm.validate().is_err(), "one more does not fit");
    }

    #[test]
    fn exits_are_described() {
        assert!(describe_exit(ExitReason::Reset).contains("panic"));
        assert_eq!(describe_exit(ExitReason::Stopped), "stopped by the host");
    }
}
