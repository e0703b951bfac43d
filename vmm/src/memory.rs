//! Guest memory: anonymous mmap regions (vm-memory) laid out around the MMIO gap.

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory of a VM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors of creating guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// mmap failed (usually: not enough host memory or address space).
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        /// The requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges `(start, size)` of a guest with `size` bytes: below the MMIO gap, and
/// the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Allocate `mib` MiB of guest memory.
pub fn create(mib: u64) -> Result<GuestMemory, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mib << 20))
        .map_err(|source| MemoryError::Allocate { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory as _;

    #[test]
    fn memory_is_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
        let m = create(64).unwrap();
        assert_eq!(m.last_addr(), GuestAddress((64 << 20) - 1));
    }
}
