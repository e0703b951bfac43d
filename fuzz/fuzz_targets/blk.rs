//! Fuzz target `blk`: see ember_vmm_testing::fuzz::blk.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::blk::run(data));
