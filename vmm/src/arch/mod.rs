//! x86_64 specifics: CPUID profiles, initial register state, the MP table and direct
//! kernel boot.

pub mod boot;
pub mod cpuid;
pub mod mptable;
pub mod regs;
