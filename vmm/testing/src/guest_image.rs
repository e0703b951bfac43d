//! Tiny guest images packed by hand: an x86_64 ELF (with or without the PVH entry note) or
//! a minimal bzImage around a few bytes of code, for the VMM's tests and benchmarks.

/// Where tiny guests are loaded (1 MiB, as a kernel would be).
pub const LOAD_ADDR: u64 = 0x10_0000;

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
