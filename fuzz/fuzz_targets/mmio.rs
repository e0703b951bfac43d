//! Fuzz target `mmio`: see ember_vmm_testing::fuzz::mmio.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::mmio::run(data));
