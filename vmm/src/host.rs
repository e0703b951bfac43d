//! What virtualization the host offers, read from `/proc` and `/sys` under a root path
//! (`/` for the real host, a folder for fixture trees). Shared by the VMM (to resolve
//! `cpu_profile = "auto"`) and by `ember check`.

use std::fs;
use std::path::{Path, PathBuf};

/// The kind of virtualization the host offers to KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Virtualization {
    /// Intel VT-x (`vmx` in /proc/cpuinfo): guests run natively.
    HardwareVmx,
    /// AMD-V (`svm` in /proc/cpuinfo): guests run natively.
    HardwareSvm,
    /// KVM's PVM module without hardware virtualization: only PVM-enabled guest kernels
    /// run natively; a stock kernel runs under KVM's instruction emulator.
    Pvm,
    /// `/dev/kvm` exists but the CPU shows no virtualization and no PVM module:
    /// treated like PVM (emulation only).
    KvmWithoutHardware,
    /// No KVM at all.
    None,
}

impl Virtualization {
    /// Whether stock guest kernels run at full speed.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::HardwareVmx | Self::HardwareSvm)
    }

    /// Detect the virtualization of the host seen through `root`.
    pub fn detect(root: &Path) -> Self {
        let at = |p: &str| -> PathBuf { root.join(p) };
        let cpuinfo = fs::read_to_string(at("proc/cpuinfo")).unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace());
        let (mut vmx, mut svm) = (false, false);
        for f in flags {
            vmx |= f == "vmx";
            svm |= f == "svm";
        }
        if vmx {
            Self::HardwareVmx
        } else if svm {
            Self::HardwareSvm
        } else if at("sys/module/kvm_pvm").exists() {
            Self::Pvm
        } else if at("dev/kvm").exists() {
            Self::KvmWithoutHardware
        } else {
            Self::None
        }
    }
}
