//! Fuzz target `vsock`: see ember_vmm_testing::fuzz::vsock.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::vsock::run(data));
