//! Shared helpers of the VMM's integration tests: tiny hand-assembled guests packed as
//! ELF files, and the /dev/kvm skip check.

#![allow(dead_code)]

// The simulated guest drivers live in ember-vmm-testing, shared with the fuzz targets
// (each test binary uses some of them).
#[allow(unused_imports)]
pub use ember_vmm_testing::guest_image::{bzimage, elf, LOAD_ADDR};
#[allow(unused_imports)]
pub use ember_vmm_testing::{confined, driver, fuse_client, vsock_guest};

use std::path::Path;

/// x86 code that runs the same in 32-bit protected mode and 64-bit long mode (no REX
/// prefixes): print "Hi", read the 32-bit virtio-mmio magic at 0xd0000000 and print its
/// four bytes ("virt" when a device is there), print "\n", then power off through ember's
/// port 0x501.
pub fn hello_code() -> Vec<u8> {
    let mut c = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', 0xee, // mov al, 'H'; out dx, al
        0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
        0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
        0x8b, 0x03, // mov eax, [rbx]
        0xee, // out dx, al
    ];
    for _ in 0..3 {
        c.extend([0xc1, 0xe8, 0x08, 0xee]); // shr eax, 8; out dx, al
    }
    c.extend([
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0x66, 0xba, 0x01, 0x05, // mov dx, 0x501
        0xee, // out dx, al  (power off)
        0xf4, // hlt
        0xeb, 0xfe, // jmp $
    ]);
    c
}

/// Ask for a reset through the i8042: `mov al, 0xfe; out 0x64, al`.
pub fn reset_code() -> Vec<u8> {
    vec![0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfe]
}

/// `ud2` with an empty IDT: #UD, then #DF, then a triple fault.
pub fn triple_fault_code() -> Vec<u8> {
    vec![0x0f, 0x0b, 0xeb, 0xfe]
}

pub use ember_tests::skip;

/// Whether /dev/kvm can be used; reports the skip when not.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(
                test,
                &format!("/dev/kvm is not usable ({e}); this test needs KVM"),
            );
            false
        }
    }
}

/// Write `bytes` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
