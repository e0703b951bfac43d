//! Fuzz target `virtqueue`: see ember_vmm_testing::fuzz::virtqueue.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_vmm_testing::fuzz::virtqueue::run(data));
