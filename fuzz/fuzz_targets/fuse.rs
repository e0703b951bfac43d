//! Fuzz target `fuse`: see ember_vmm_testing::fuzz::fuse.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::fuse::run(data));
