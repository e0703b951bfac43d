//! CPUID for the guest: KVM's supported table, filtered by the CPU profile and adjusted
//! per vCPU (APIC id, vCPU count, hypervisor bit).

use crate::config::CpuProfile;
use crate::host::Virtualization;
use kvm_bindings::CpuId;

/// The profile actually applied once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveProfile {
    /// Everything KVM supports.
    Host,
    /// Emulation-safe (see [`EMULATION_SAFE_CMDLINE`]).
    EmulationSafe,
}

/// What the emulation-safe profile appends to the guest command line. Hiding the features
/// in CPUID is not enough on a PVM host (measured: the guest still enumerated XSAVE state
/// and died on `xrstor`), so the kernel is told as well.
pub const EMULATION_SAFE_CMDLINE: &str = "noxsave clearcpuid=smap,smep,popcnt,cx16";

/// Resolve `auto` for a host with virtualization `virt`, whose CPU is emulated by QEMU's
/// TCG when `tcg` ([`crate::host::cpu_emulated_by_tcg`]: hardware virtualization, but a
/// guest's XSAVE state is not kept consistent there).
pub fn resolve(profile: CpuProfile, virt: Virtualization, tcg: bool) -> EffectiveProfile {
    match profile {
        CpuProfile::Host => EffectiveProfile::Host,
        CpuProfile::EmulationSafe => EffectiveProfile::EmulationSafe,
        CpuProfile::Auto if virt.is_hardware() && !tcg => EffectiveProfile::Host,
        CpuProfile::Auto => EffectiveProfile::EmulationSafe,
    }
}

// Leaf 1 ECX bits.
const ECX_CX16: u32 = 1 << 13;
const ECX_POPCNT: u32 = 1 << 23;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_FMA: u32 = 1 << 12;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 7 EBX bits.
const EBX_AVX2: u32 = 1 << 5;
const EBX_SMEP: u32 = 1 << 7;
const EBX_SMAP: u32 = 1 << 20;
/// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
const EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);

/// Filter `cpuid` for `profile` and adjust it for vCPU `index` of `count`.
pub fn filter(cpuid: &mut CpuId, profile: EffectiveProfile, index: u8, count: u8) {
    let safe = profile == EffectiveProfile::EmulationSafe;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC id and logical processor count.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if safe {
                    e.ecx &= !(ECX_CX16
                        | ECX_POPCNT
                        | ECX_XSAVE
                        | ECX_OSXSAVE
                        | ECX_AVX
                        | ECX_F16C
                        | ECX_FMA);
                }
            }
            7 if e.index == 0 && safe => {
                e.ebx &= !(EBX_AVX2 | EBX_SMEP | EBX_SMAP | EBX_AVX512);
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => e.edx = u32::from(index),
            0xd if safe => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn table() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: ECX_XSAVE | ECX_POPCNT | ECX_CX16 | 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                ebx: EBX_SMEP | EBX_SMAP | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                eax: 7,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn emulation_safe_hides_what_the_emulator_cannot_run() {
        let mut c = table();
        filter(&mut c, EffectiveProfile::EmulationSafe, 2, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ecx & (ECX_XSAVE | ECX_POPCNT | ECX_CX16), 0);
        assert_eq!(e[0].ecx & 1, 1, "unrelated features stay");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx, 1);
        assert_eq!(e[2].eax, 0);
    }

    #[test]
    fn host_profile_keeps_features() {
        let mut c = table();
        filter(&mut c, EffectiveProfile::Host, 0, 1);
        assert_ne!(c.as_slice()[0].ecx & ECX_XSAVE, 0);
        assert_eq!(c.as_slice()[1].ebx, EBX_SMEP | EBX_SMAP | 1);
    }

    #[test]
    fn auto_follows_the_host() {
        assert_eq!(
            resolve(CpuProfile::Auto, Virtualization::Pvm, false),
            EffectiveProfile::EmulationSafe
        );
        assert_eq!(
            resolve(CpuProfile::Auto, Virtualization::HardwareVmx, false),
            EffectiveProfile::Host
        );
        // Hardware virtualization on a CPU that QEMU's TCG emulates (the nested test host).
        assert_eq!(
            resolve(CpuProfile::Auto, Virtualization::HardwareSvm, true),
            EffectiveProfile::EmulationSafe
        );
        assert_eq!(
            resolve(CpuProfile::Host, Virtualization::Pvm, false),
            EffectiveProfile::Host
        );
        assert_eq!(
            resolve(CpuProfile::Host, Virtualization::HardwareSvm, true),
            EffectiveProfile::Host
        );
    }
}
