//! The Intel MultiProcessor table, so Linux finds every vCPU's local APIC and the IOAPIC
//! without ACPI.
//!
//! Written by hand: no maintained crate on ember's rust-vmm line produces it, and the
//! format (MP spec 1.4) is a few fixed-size records with checksums.

use crate::layout::{IOAPIC_START, IRQ_MAX, LAPIC_START, MPTABLE_START};
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_INT: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table bytes for `vcpus` processors, to be placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus; // APIC ids 0..vcpus are the CPUs.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        entries.extend([
            ENTRY_PROCESSOR,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend(0x600u32.to_le_bytes()); // family 6 signature
        entries.extend(0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend([ENTRY_IOINT, INT_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend([ENTRY_LINT, INT_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([ENTRY_LINT, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_START as u32 + 16;
    let mut header = Vec::with_capacity(44);
    header.extend(*b"PCMP");
    header.extend(((44 + entries.len()) as u16).to_le_bytes());
    header.extend([4, 0]); // spec 1.4, checksum placeholder
    header.extend(*b"EMBER   ");
    header.extend(*b"MICROVM     ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend((LAPIC_START as u32).to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend(*b"_MP_");
    floating.extend(table_addr.to_le_bytes());
    floating.extend([1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (x16), spec 1.4, checksum, features
    floating[10] = checksum(&floating);

    floating.extend(table);
    floating
}

/// Write the MP table into guest memory.
pub fn write(m: &GuestMemory, vcpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    m.write_slice(&build(vcpus), GuestAddress(MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_and_counts() {
        let t = build(3);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        // Exactly one bootstrap processor.
        let bsp = (0..3)
            .filter(|i| table[44 + 20 * i + 3] & CPU_BSP != 0)
            .count();
        assert_eq!(bsp, 1);
        // It fits below the 640 KiB boundary.
        assert!(MPTABLE_START as usize + t.len() <= 0xa0000);
    }
}
