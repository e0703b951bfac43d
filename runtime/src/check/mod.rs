//! `ember check`: can this host run ember, and with which backend?
//!
//! Every requirement becomes one [`Finding`] with a status (OK / WARN / FAIL) and, unless
//! it is OK, what to do about it. A FAIL means the *configured* backend cannot run; a
//! WARN is something to know that does not stop it. The host is read through a root path
//! ([`Host`]) so tests can feed fixture trees for each kind of host.

mod containerd;
mod host;
mod kvm;

pub use containerd::{parse_version as parse_containerd_version, MIN_VERSION as MIN_CONTAINERD};
pub use ember_vmm::Virtualization;
pub use host::{CgroupMode, Host, KvmDevice};
pub use kvm::{Capability, CapabilitySource};

use ember_config::{Backend, Config};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt;

/// The verdict on one requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; does not stop the configured backend.
    Warn,
    /// The configured backend cannot run until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One checked requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short stable identifier (`kvm-device`, `virtualization`, ...).
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do about it (empty when OK).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Finding {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Self {
        Self {
            name,
            status,
            message: message.into(),
            fix: String::new(),
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configured backend the verdicts are about.
    pub backend: &'static str,
    /// Where the configuration came from.
    pub config: String,
    /// Whether the configured backend can run on this host (no FAIL).
    pub can_run: bool,
    /// Backends this host can run, best first.
    pub runnable_backends: Vec<&'static str>,
    /// One entry per requirement.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The process exit status of `ember check`: 0 when the configured backend can run.
    pub fn exit_code(&self) -> i32 {
        if self.can_run {
            0
        } else {
            1
        }
    }

    /// The human-readable report: one line per requirement.
    pub fn to_text(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}",
                f.status.to_string(),
                f.name,
                f.message
            ));
            if !f.fix.is_empty() {
                out.push_str(&format!(" -> {}", f.fix));
            }
            out.push('\n');
        }
        let verdict = if self.can_run { "can" } else { "cannot" };
        out.push_str(&format!(
            "\nbackend \"{}\" {verdict} run on this host; runnable backends: {}\n",
            self.backend,
            if self.runnable_backends.is_empty() {
                "none".to_string()
            } else {
                self.runnable_backends.join(", ")
            }
        ));
        out
    }
}

/// Everything `ember check` looks at.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The host (real or fixture).
    pub host: Host,
    /// Where KVM capability answers come from.
    pub capabilities: CapabilitySource,
    /// The `PATH` to look for `containerd` in.
    pub path_var: OsString,
    /// The configuration (or the error that prevented loading it).
    pub config: Result<(Config, String), String>,
}

/// Run every check for the configured backend.
pub fn run(inputs: &Inputs) -> Report {
    let (config, config_desc, mut findings) = match &inputs.config {
        Ok((c, desc)) => (
            c.clone(),
            desc.clone(),
            vec![Finding::new(
                "config",
                Status::Ok,
                format!("{desc}; backend = {}", c.sandbox.backend.as_str()),
            )],
        ),
        Err(e) => (
            Config::default(),
            "unusable".to_string(),
            vec![Finding::new("config", Status::Fail, e.clone())
                .fix("fix the configuration; the checks below assume the built-in defaults")],
        ),
    };
    let backend = config.sandbox.backend;
    // Probe the host once (ioctls, `containerd --version`); judge it per backend.
    let facts = Facts::gather(inputs);
    findings.extend(host_findings(&facts, &config, backend));
    let runnable_backends = [Backend::Microvm, Backend::Process]
        .into_iter()
        .filter(|b| {
            host_findings(&facts, &config, *b)
                .iter()
                .all(|f| f.status != Status::Fail)
        })
        .map(Backend::as_str)
        .collect();
    let can_run = findings.iter().all(|f| f.status != Status::Fail);
    Report {
        backend: backend.as_str(),
        config: config_desc,
        can_run,
        runnable_backends,
        findings,
    }
}

/// What the host has, probed once per `ember check`.
struct Facts {
    device: KvmDevice,
    virt: Virtualization,
    /// Capability answers; `None` when the device does not open.
    caps: Option<Result<Vec<(Capability, bool)>, String>>,
    tun: bool,
    cgroups: CgroupMode,
    uid: Option<u32>,
    /// containerd's path and its `--version` line.
    containerd: Option<(std::path::PathBuf, Result<String, String>)>,
}

impl Facts {
    fn gather(inputs: &Inputs) -> Self {
        let host = &inputs.host;
        let device = host.kvm_device();
        let caps = (device == KvmDevice::Usable)
            .then(|| kvm::probe(&inputs.capabilities, &host.kvm_path()));
        Self {
            device,
            virt: host.virtualization(),
            caps,
            tun: host.has_tun(),
            cgroups: host.cgroup_mode(),
            uid: host.effective_uid(),
            containerd: containerd::find(&inputs.path_var).map(|bin| {
                let line = containerd::version_line(&bin);
                (bin, line)
            }),
        }
    }
}

/// The host findings, judged for `backend`.
fn host_findings(facts: &Facts, config: &Config, backend: Backend) -> Vec<Finding> {
    let vm = backend == Backend::Microvm;
    // A requirement of the microvm backend is only a warning for the process backend.
    let need = |needed: bool| if needed { Status::Fail } else { Status::Warn };
    let mut out = Vec::new();

    // /dev/kvm access.
    out.push(match &facts.device {
        KvmDevice::Usable => Finding::new("kvm-device", Status::Ok, "/dev/kvm opens read-write"),
        KvmDevice::NoAccess(e) => Finding::new(
            "kvm-device",
            need(vm),
            format!("/dev/kvm exists but cannot be opened read-write: {e}"),
        )
        .fix("run as root or add this user to the `kvm` group"),
        KvmDevice::Missing => Finding::new("kvm-device", need(vm), "/dev/kvm does not exist")
            .fix("enable KVM (load kvm_intel/kvm_amd, or enable virtualization in the firmware or the cloud instance type), or use sandbox.backend = \"process\""),
    });

    // Virtualization kind.
    let virt = facts.virt;
    let emulation_note = "stock guest kernels run only under KVM's instruction emulator here \
                          (slow; the guest stops at its first user-space instruction)";
    out.push(match virt {
        Virtualization::HardwareVmx => Finding::new(
            "virtualization",
            Status::Ok,
            "hardware virtualization (Intel VT-x): guests run natively",
        ),
        Virtualization::HardwareSvm => Finding::new(
            "virtualization",
            Status::Ok,
            "hardware virtualization (AMD-V): guests run natively",
        ),
        Virtualization::Pvm => Finding::new(
            "virtualization",
            need(vm),
            format!("PVM (kvm_pvm loaded, no vmx/svm CPU flag): {emulation_note}"),
        )
        .fix("use sandbox.backend = \"process\" on this host, or a host with hardware KVM for full speed"),
        Virtualization::KvmWithoutHardware => Finding::new(
            "virtualization",
            need(vm),
            format!("KVM without hardware virtualization (no vmx/svm CPU flag): {emulation_note}"),
        )
        .fix("use sandbox.backend = \"process\" on this host, or a host with hardware KVM for full speed"),
        Virtualization::None => Finding::new(
            "virtualization",
            need(vm),
            "no KVM: microVMs cannot run",
        )
        .fix("use sandbox.backend = \"process\", or a host with hardware KVM"),
    });

    // KVM capabilities (only meaningful when the device opens).
    if let Some(caps) = &facts.caps {
        out.push(match caps {
            Ok(caps) => {
                let missing: Vec<&str> = caps
                    .iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(c, _)| c.kvm_name())
                    .collect();
                if missing.is_empty() {
                    Finding::new(
                        "kvm-capabilities",
                        Status::Ok,
                        "irqchip, irqfd, ioeventfd, user memory, ext cpuid",
                    )
                } else {
                    Finding::new(
                        "kvm-capabilities",
                        need(vm),
                        format!("KVM lacks {}", missing.join(", ")),
                    )
                    .fix("use a newer host kernel with full KVM support, or sandbox.backend = \"process\"")
                }
            }
            Err(e) => Finding::new("kvm-capabilities", need(vm), e)
                .fix("check that /dev/kvm is a working KVM device"),
        });
    }

    // /dev/net/tun for pod networking in the VM.
    out.push(if facts.tun {
        Finding::new(
            "tun",
            Status::Ok,
            "/dev/net/tun present (pod networking for microVMs)",
        )
    } else {
        Finding::new(
            "tun",
            Status::Warn,
            "/dev/net/tun missing: microVM pods get no network",
        )
        .fix("load the tun module (`modprobe tun`) or create /dev/net/tun")
    });

    // cgroups.
    out.push(match facts.cgroups {
        CgroupMode::Unified => Finding::new("cgroups", Status::Ok, "cgroup v2 (unified)"),
        CgroupMode::Hybrid => Finding::new(
            "cgroups",
            Status::Ok,
            "hybrid: cgroup v1 controllers plus a cgroup2 mount (works; crun refuses hybrid mode)",
        ),
        CgroupMode::Legacy => Finding::new("cgroups", Status::Ok, "cgroup v1"),
        CgroupMode::None => Finding::new(
            "cgroups",
            need(!vm),
            "no cgroup filesystem mounted: containers get no resource limits",
        )
        .fix("mount cgroup2 at /sys/fs/cgroup (systemd does this by default)"),
    });

    // Privileges: creating namespaces, mounts and taps needs root.
    out.push(match facts.uid {
        Some(0) => Finding::new("privileges", Status::Ok, "running as root"),
        Some(uid) => Finding::new(
            "privileges",
            Status::Fail,
            format!("running as uid {uid}: sandboxes need root (namespaces, mounts, taps)"),
        )
        .fix("run ember (and containerd) as root"),
        None => Finding::new("privileges", Status::Warn, "cannot read /proc/self/status"),
    });

    // Guest assets.
    let h = &config.hypervisor;
    let mut assets = vec![("guest-kernel", "hypervisor.kernel", h.kernel.clone())];
    match (&h.image, &h.initrd) {
        (Some(image), _) => assets.push(("guest-image", "hypervisor.image", image.clone())),
        (None, Some(initrd)) => assets.push(("guest-initrd", "hypervisor.initrd", initrd.clone())),
        (None, None) => {}
    }
    for (name, key, path) in assets {
        out.push(if path.is_file() {
            Finding::new(name, Status::Ok, format!("{} ({key})", path.display()))
        } else {
            let why = if vm {
                "needed by the microvm backend"
            } else {
                "only needed by the microvm backend"
            };
            Finding::new(name, need(vm), format!("{} ({key}) does not exist; {why}", path.display()))
                .fix(format!("build and install the guest assets with `make guest && make install`, or set {key}"))
        });
    }

    // containerd.
    out.push(match &facts.containerd {
        None => Finding::new("containerd", Status::Warn, "containerd not found on PATH")
            .fix("install it (`apt-get install containerd`) to use ember as a containerd runtime; `ember run` works without it"),
        Some((bin, line)) => match line {
            Err(e) => Finding::new("containerd", Status::Warn, e.clone()),
            Ok(line) => match containerd::parse_version(line) {
                Some((maj, min, v)) if (maj, min) >= containerd::MIN_VERSION => Finding::new(
                    "containerd",
                    Status::Ok,
                    format!("{} version {v}", bin.display()),
                ),
                Some((_, _, v)) => Finding::new(
                    "containerd",
                    Status::Warn,
                    format!("{} version {v} is older than 1.6 (shim API v2 needs 1.6+)", bin.display()),
                )
                .fix("upgrade containerd to 1.6 or newer"),
                None => Finding::new(
                    "containerd",
                    Status::Warn,
                    format!("cannot read a version from `{line}`"),
                ),
            },
        },
    });
    out
}
