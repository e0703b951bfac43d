//! Initial vCPU state: GDT, identity page tables, segment/control registers, FPU, MSRs
//! and the local APIC's LINT pins, for the two entry modes ember boots with.

use crate::layout::*;
use crate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Errors of setting up a vCPU's registers.
#[derive(Debug, Error)]
pub enum RegsError {
    /// Writing boot structures into guest memory failed (memory too small).
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with ember's identity page tables; RSI = zero page.
    LongMode,
    /// 32-bit protected mode, paging off; RBX = PVH start info (the PVH boot protocol).
    Pvh,
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

fn mem(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> RegsError {
    move |source| RegsError::Memory { what, source }
}

/// A GDT entry from flags, base and limit (the layout of the x86 descriptor).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment of a GDT entry. KVM wants the limit in bytes, so a page-granular
/// (G=1) limit is scaled.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// Write the GDT and return (code, data, tss) segments for `mode`.
fn write_gdt(m: &GuestMemory, mode: EntryMode) -> Result<[kvm_segment; 3], RegsError> {
    let code = match mode {
        EntryMode::LongMode => gdt_entry(0xa09b, 0, 0xfffff),
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    let table = [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (i, e) in table.iter().enumerate() {
        m.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(mem("GDT"))?;
    }
    m.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(mem("IDT"))?;
    Ok([
        segment(table[1], 1),
        segment(table[2], 2),
        segment(table[3], 3),
    ])
}

/// Identity-map the first 4 GiB with 2 MiB pages (so MMIO in the gap is reachable).
fn write_page_tables(m: &GuestMemory) -> Result<(), RegsError> {
    m.write_obj(PDPT_START | 0x03, GuestAddress(PML4_START))
        .map_err(mem("PML4"))?;
    for gib in 0..4u64 {
        let pd = PD_START + gib * 0x1000;
        m.write_obj(pd | 0x03, GuestAddress(PDPT_START + gib * 8))
            .map_err(mem("PDPT"))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            m.write_obj(addr | 0x83, GuestAddress(pd + i * 8))
                .map_err(mem("page directory"))?;
        }
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Set segment and control registers for `mode`.
pub fn setup_sregs(m: &GuestMemory, vcpu: &VcpuFd, mode: EntryMode) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let [code, data, tss] = write_gdt(m, mode)?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::LongMode => {
            write_page_tables(m)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Set general registers: entry point, stack, and the boot-structure pointer.
pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::LongMode => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Set the FPU to its reset state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// Set the MSRs Linux expects at boot.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const MSRS: [(u32, u64); 11] = [
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0082, 0),       // LSTAR
        (0x10, 0),              // IA32_TSC
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRR default type: enabled, write-back
    ];
    let entries: Vec<kvm_msr_entry> = MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("fixed MSR list fits");
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        // Not fatal: some hosts (PVM) refuse a few MSRs; Linux copes with their reset values.
        log::debug!("KVM accepted {set} of {} boot MSRs", entries.len());
    }
    Ok(())
}

/// Route LINT0 to ExtINT (the PIC) and LINT1 to NMI, as the BIOS would.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT0: usize = 0x350;
    const LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(LVT0, MODE_EXTINT), (LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = lapic.regs[reg..reg + 4]
            .iter()
            .map(|b| *b as u8)
            .collect::<Vec<u8>>()
            .try_into()
            .expect("4 bytes");
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code.l, code.db, code.present, code.type_, code.selector),
            (1, 0, 1, 0xb, 8)
        );
        assert_eq!((code.base, code.limit, code.g), (0, 0xffff_ffff, 1));
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.type_, data.s, data.selector), (3, 1, 16));
    }

    #[test]
    fn page_tables_identity_map_the_mmio_gap() {
        let m = crate::memory::create(64).unwrap();
        write_page_tables(&m).unwrap();
        let pdpt3: u64 = m.read_obj(GuestAddress(PDPT_START + 3 * 8)).unwrap();
        assert_eq!(pdpt3, (PD_START + 3 * 0x1000) | 3);
        // 0xd000_0000 = GiB 3, 2 MiB page 128.
        let pde: u64 = m
            .read_obj(GuestAddress(PD_START + 3 * 0x1000 + 128 * 8))
            .unwrap();
        assert_eq!(pde, 0xd000_0000 | 0x83);
    }
}
