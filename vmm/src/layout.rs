//! The guest-physical memory layout of an ember microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start info             0x0000_6100  PVH memory map
//! 0x0000_7000  zero page (boot_params)    0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4   0xa000 PDPT   0xb000..0xf000 four PDs (identity map of 4 GiB)
//! 0x0002_0000  kernel command line        0x0009_fc00  MP table (EBDA)
//! 0x0010_0000  kernel                     ...          initrd (top of low RAM)
//! 0xc000_0000 .. 0x1_0000_0000  MMIO gap: virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 ..  RAM above 3 GiB, if any
//! ```

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` location.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map location.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`boot_params`) location.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories (one per GiB).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted (Linux x86's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// MP table, in the EBDA.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the low RAM below the EBDA/BIOS area.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ of the first virtio-mmio device (then one per device).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IRQ of the IOAPIC (24 pins).
pub const IRQ_MAX: u32 = 23;
/// IOAPIC address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC address.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages, must be in the gap and unused).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity map page (the page before the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
