//! Fuzz target `net`: see ember_vmm_testing::fuzz::net.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::net::run(data));
