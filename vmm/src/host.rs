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

/// The hypervisor signature (CPUID leaf `0x4000_0000`) of a CPU emulated by QEMU's TCG.
const TCG_SIGNATURE: &[u8; 12] = b"TCGTCGTCGTCG";

/// Whether this host's CPU is itself emulated by QEMU's TCG (its hypervisor signature in
/// CPUID leaf `0x4000_0000` is `TCGTCGTCGTCG`), as in ember's nested KVM test host.
///
/// QEMU's TCG emulates AMD-V well enough for KVM, but not a guest's XSAVE state: there the
/// guest kernel's check fails at every boot ("XSAVE consistency problem: size 2696 !=
/// kernel_size 576": CPUID leaf 0xd does not follow the XCR0 the guest set), and now and
/// then the guest triple-faults right after it. So `cpu_profile = "auto"` takes the
/// emulation-safe profile (no XSAVE) on such hosts.
pub fn cpu_emulated_by_tcg() -> bool {
    use std::arch::x86_64::__cpuid;
    /// Leaf 1 ECX bit 31: running under a hypervisor.
    const HYPERVISOR: u32 = 1 << 31;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
    #[allow(unused_unsafe)]
    let (leaf1, leaf_hv) = unsafe { (__cpuid(1), __cpuid(0x4000_0000)) };
    if leaf1.ecx & HYPERVISOR == 0 {
        return false;
    }
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&leaf_hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&leaf_hv.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&leaf_hv.edx.to_le_bytes());
    &signature == TCG_SIGNATURE
}
