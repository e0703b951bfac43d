//! The KVM capabilities ember's VMM needs, owned here and checked by [`crate::Vm::new`]
//! (crate::Vm::new) before anything is built, the way Firecracker's `Kvm::new` and Cloud
//! Hypervisor's `check_required_extensions` do. `ember check` asks the same list
//! ([`probe`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;

/// The stable KVM API version.
pub const KVM_API_VERSION: i32 = 12;

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

    fn cap(self) -> Cap {
        match self {
            Self::Irqchip => Cap::Irqchip,
            Self::Irqfd => Cap::Irqfd,
            Self::Ioeventfd => Cap::Ioeventfd,
            Self::UserMemory => Cap::UserMemory,
            Self::ExtCpuid => Cap::ExtCpuid,
        }
    }
}

/// Why this host's KVM cannot run ember's VMM.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// The device path cannot be passed to open(2).
    #[error("{0}: the path contains a NUL byte")]
    BadPath(String),
    /// The KVM device does not open.
    #[error("cannot open {path}: {source} (is KVM enabled, and may this user open it?)")]
    Open {
        /// The device.
        path: String,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The device answered no KVM API version.
    #[error("{0} is not a KVM device")]
    NotKvm(String),
    /// Another API version than the stable one.
    #[error("KVM API version {0} is not the stable version 12 ember needs")]
    ApiVersion(i32),
    /// Capabilities the VMM needs are missing.
    #[error("this host's KVM lacks {}, which ember's VMM needs (run `ember check`)", names(.0))]
    Missing(Vec<Capability>),
}

fn names(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| c.kvm_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The answer of an open KVM device for each needed capability.
pub fn answers(kvm: &Kvm) -> Result<Vec<(Capability, bool)>, CapabilityError> {
    let api = kvm.get_api_version();
    if api < 0 {
        return Err(CapabilityError::NotKvm("/dev/kvm".into()));
    }
    if api != KVM_API_VERSION {
        return Err(CapabilityError::ApiVersion(api));
    }
    Ok(Capability::ALL
        .iter()
        .map(|c| (*c, kvm.check_extension(c.cap())))
        .collect())
}

/// Fails naming every needed capability the answers lack.
pub fn require(answers: &[(Capability, bool)]) -> Result<(), CapabilityError> {
    let missing: Vec<Capability> = answers
        .iter()
        .filter(|(_, present)| !present)
        .map(|(c, _)| *c)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapabilityError::Missing(missing))
    }
}

/// Opens the KVM device at `kvm_path` and answers for each needed capability (what
/// `ember check` reports).
pub fn probe(kvm_path: &Path) -> Result<Vec<(Capability, bool)>, CapabilityError> {
    let shown = kvm_path.display().to_string();
    let path = CString::new(kvm_path.as_os_str().as_bytes())
        .map_err(|_| CapabilityError::BadPath(shown.clone()))?;
    let kvm = Kvm::new_with_path(&path).map_err(|source| CapabilityError::Open {
        path: shown.clone(),
        source,
    })?;
    answers(&kvm).map_err(|e| match e {
        CapabilityError::NotKvm(_) => CapabilityError::NotKvm(shown),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_all_named() {
        let mut answers: Vec<(Capability, bool)> =
            Capability::ALL.iter().map(|c| (*c, true)).collect();
        assert!(require(&answers).is_ok());
        answers[1].1 = false;
        answers[3].1 = false;
        let e = require(&answers).unwrap_err().to_string();
        assert!(
            e.contains("KVM_CAP_IRQFD, KVM_CAP_USER_MEMORY") && e.contains("ember check"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_device_is_named() {
        let e = probe(Path::new("/nonexistent/kvm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/kvm"), "{e}");
    }
}
