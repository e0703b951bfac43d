//! The KVM capabilities `ember check` reports: the VMM's own list
//! ([`ember_vmm::probe_capabilities`]), asked of the device, or fixed answers for fixture hosts.

use std::path::Path;

pub use ember_vmm::Capability;

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
            ember_vmm::probe_capabilities(kvm_path).map_err(|e| e.to_string())
        }
    }
}
