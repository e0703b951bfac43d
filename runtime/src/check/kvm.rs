//! The KVM capabilities ember's VMM needs, queried with `kvm-ioctls`.

use serde::Serialize;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One capability the VMM relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// In-kernel interrupt controller (PIC/IOAPIC/LAPIC).
    Irqchip,
    /// Interrupt injection through eventfds (virtio interrupts).
    Irqfd,
    /// Guest MMIO writes signalled on eventfds (virtio notifications).
    Ioeventfd,
    /// Guest memory from user-space mappings.
    UserMemory,
    /// `KVM_GET_SUPPORTED_CPUID`.
    ExtCpuid,
}

impl Capability {
    /// All capabilities the VMM needs.
    pub const ALL: [Capability; 5] = [
        Self::Irqchip,
        Self::Irqfd,
        Self::Ioeventfd,
        Self::UserMemory,
        Self::ExtCpuid,
    ];

    /// The KVM name of the capability.
    pub fn kvm_name(self) -> &'static str {
        match self {
            Self::Irqchip => "KVM_CAP_IRQCHIP",
            Self::Irqfd => "KVM_CAP_IRQFD",
            Self::Ioeventfd => "KVM_CAP_IOEVENTFD",
            Self::UserMemory => "KVM_CAP_USER_MEMORY",
            Self::ExtCpuid => "KVM_CAP_EXT_CPUID",
        }
    }

    fn cap(self) -> kvm_ioctls::Cap {
        match self {
            Self::Irqchip => kvm_ioctls::Cap::Irqchip,
            Self::Irqfd => kvm_ioctls::Cap::Irqfd,
            Self::Ioeventfd => kvm_ioctls::Cap::Ioeventfd,
            Self::UserMemory => kvm_ioctls::Cap::UserMemory,
            Self::ExtCpuid => kvm_ioctls::Cap::ExtCpuid,
        }
    }
}

/// Where capability answers come from.
#[derive(Debug, Clone)]
pub enum CapabilitySource {
    /// Ask the KVM device with ioctls.
    Device,
    /// Fixed answers (fixture hosts in tests): the capabilities that are present.
    Fixed(Vec<Capability>),
}

/// The answer for each capability, or why KVM could not be asked.
pub fn probe(
    source: &CapabilitySource,
    kvm_path: &Path,
) -> Result<Vec<(Capability, bool)>, String> {
    match source {
        CapabilitySource::Fixed(present) => Ok(Capability::ALL
            .iter()
            .map(|c| (*c, present.contains(c)))
            .collect()),
        CapabilitySource::Device => {
            let path = CString::new(kvm_path.as_os_str().as_bytes())
                .map_err(|_| format!("{} contains a NUL byte", kvm_path.display()))?;
            let kvm = kvm_ioctls::Kvm::new_with_path(&path)
                .map_err(|e| format!("cannot open {}: {e}", kvm_path.display()))?;
            let api = kvm.get_api_version();
            if api < 0 {
                return Err(format!("{} is not a KVM device", kvm_path.display()));
            }
            if api != 12 {
                return Err(format!(
                    "KVM API version {api} is not the stable version 12 ember needs"
                ));
            }
            Ok(Capability::ALL
                .iter()
                .map(|c| (*c, kvm.check_extension(c.cap())))
                .collect())
        }
    }
}
