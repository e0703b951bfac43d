//! x86_64 direct boot with linux-loader: load the kernel (ELF vmlinux or bzImage) and the
//! initrd, write the command line, and the boot structures of the chosen entry mode
//! (Linux zero page with e820 map, or PVH start info with memory map).

use super::regs::EntryMode;
use crate::layout::*;
use crate::memory::GuestMemory;
use linux_loader::configurator::{
    linux::LinuxBootConfigurator, pvh::PvhBootConfigurator, BootConfigurator, BootParams,
};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion};

/// Errors of loading the guest.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    ReadKernel {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The command line is too long or malformed.
    #[error("kernel command line: {0} (at most {CMDLINE_MAX_SIZE} bytes)")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel; give the VM more memory")]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd into guest memory: {0}")]
    CopyInitrd(vm_memory::GuestMemoryError),
    /// Writing the boot structures failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
}

/// Where and how the vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Entry mode.
    pub mode: EntryMode,
    /// Entry address.
    pub addr: u64,
}

/// The kernel formats ember boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF vmlinux.
    Elf,
    /// bzImage.
    BzImage,
}

/// Recognise the kernel format from its magic numbers.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let read = |file: &mut File, at: u64, buf: &mut [u8]| -> std::io::Result<bool> {
        file.seek(SeekFrom::Start(at))?;
        match file.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    let err = |source| BootError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    if read(file, 0, &mut magic).map_err(err)? && magic == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if read(file, 0x202, &mut magic).map_err(err)? && magic == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat(path.to_path_buf()))
}

/// The e820 RAM ranges of `m` (the EBDA and BIOS area below 1 MiB are left out).
fn ram_map(m: &GuestMemory) -> Vec<(u64, u64)> {
    let mut out = vec![(0, EBDA_START)];
    for r in m.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            out.push((start, end - start));
        }
    }
    out
}

/// Load everything and return the entry point.
pub fn load(
    m: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Entry, BootError> {
    let mut file = File::open(kernel).map_err(|source| BootError::ReadKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let format = detect_format(&mut file, kernel)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::ReadKernel {
            path: kernel.to_path_buf(),
            source,
        })?;
    let load_err = |source| BootError::Load {
        path: kernel.to_path_buf(),
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::Elf => Elf::load(m, None, &mut file, highmem).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(m, None, &mut file, highmem).map_err(load_err)?,
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    load_cmdline(m, GuestAddress(CMDLINE_START), &cl).map_err(BootError::WriteCmdline)?;
    let cmdline_len = cl.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0) as u32;

    let initrd = match initrd {
        Some(p) => Some(load_initrd(m, p, result.kernel_end)?),
        None => None,
    };

    let pvh = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    match pvh {
        Some(addr) => {
            write_pvh(m, initrd)?;
            Ok(Entry {
                mode: EntryMode::Pvh,
                addr,
            })
        }
        None => {
            write_zero_page(m, result.setup_header, cmdline_len, initrd)?;
            let addr = match format {
                // The 64-bit entry of a bzImage is 0x200 past its protected-mode code.
                KernelFormat::BzImage => result.kernel_load.raw_value() + 0x200,
                KernelFormat::Elf => result.kernel_load.raw_value(),
            };
            Ok(Entry {
                mode: EntryMode::LongMode,
                addr,
            })
        }
    }
}

/// Copy the initrd to the top of low RAM (page-aligned), above the kernel.
fn load_initrd(m: &GuestMemory, path: &Path, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_end = m
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    m.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(BootError::CopyInitrd)?;
    Ok((addr, size))
}

fn write_zero_page(
    m: &GuestMemory,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size)) in ram_map(m).into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            type_: 1, // RAM
        };
        params.e820_entries += 1;
    }
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        m,
    )
    .map_err(BootError::BootParams)
}

fn write_pvh(m: &GuestMemory, initrd: Option<(u64, u64)>) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_map(m)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: 1,
            reserved: 0,
        })
        .collect();
    let modlist_addr =
        PVH_MEMMAP_START + (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(modlist_addr),
        );
    }
    PvhBootConfigurator::write_bootparams(&params, m).map_err(BootError::BootParams)
}
