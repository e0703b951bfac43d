//! Shared helpers of the VMM's integration tests: tiny hand-assembled guests packed as
//! ELF files, and the /dev/kvm skip check.

#![allow(dead_code)]

// The simulated guest drivers live in ember-vmm-testing, shared with the fuzz targets
// (each test binary uses some of them).
#[allow(unused_imports)]
pub use ember_vmm_testing::{confined, driver, fuse_client, vsock_guest};

use std::path::Path;

/// Where tiny guests are loaded (1 MiB, as a kernel would be).
pub const LOAD_ADDR: u64 = 0x10_0000;

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

/// Pack `code` as an x86_64 ELF executable loaded at [`LOAD_ADDR`]. With `pvh`, add a
/// XEN_ELFNOTE_PHYS32_ENTRY note so the VMM enters it in 32-bit protected mode.
pub fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_off = 64 + 56 * u64::from(phnum);
    let note_len = if pvh { 12 + 4 + 4 } else { 0 };
    let code_off = note_off + note_len;
    let entry = LOAD_ADDR + code_off;
    let total = code_off + code.len() as u64;

    let mut f = Vec::new();
    f.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(0x3eu16.to_le_bytes()); // x86-64
    f.extend(1u32.to_le_bytes());
    f.extend(entry.to_le_bytes());
    f.extend(64u64.to_le_bytes()); // e_phoff
    f.extend(0u64.to_le_bytes()); // e_shoff
    f.extend(0u32.to_le_bytes()); // e_flags
    f.extend(64u16.to_le_bytes()); // e_ehsize
    f.extend(56u16.to_le_bytes()); // e_phentsize
    f.extend(phnum.to_le_bytes());
    f.extend(64u16.to_le_bytes()); // e_shentsize
    f.extend(0u16.to_le_bytes()); // e_shnum
    f.extend(0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), 64);
    // PT_LOAD of the whole file.
    f.extend(1u32.to_le_bytes());
    f.extend(7u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes());
    f.extend(total.to_le_bytes());
    f.extend(total.to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    if pvh {
        f.extend(4u32.to_le_bytes()); // PT_NOTE
        f.extend(4u32.to_le_bytes());
        f.extend(note_off.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(note_len.to_le_bytes());
        f.extend(note_len.to_le_bytes());
        f.extend(4u64.to_le_bytes());
        f.extend(4u32.to_le_bytes()); // namesz
        f.extend(4u32.to_le_bytes()); // descsz
        f.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        f.extend(*b"Xen\0");
        f.extend((entry as u32).to_le_bytes());
    }
    assert_eq!(f.len() as u64, code_off);
    f.extend(code);
    f
}

/// Pack 64-bit `code` as a minimal bzImage: one setup sector after the boot sector, a
/// boot-protocol 2.15 header, and a protected-mode payload loaded at 1 MiB whose 64-bit
/// entry (payload + 0x200) is `code`.
pub fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol version
    f[0x211] = 0x01; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    let mut payload = vec![0xf4u8; 0x200]; // 32-bit entry: never used
    payload.extend(code);
    f.extend(payload);
    f
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
