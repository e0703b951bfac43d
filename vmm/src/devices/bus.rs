//! Port-I/O and MMIO buses: address ranges mapped to devices, dispatched from vCPU exits.
//!
//! Written here rather than taken from rust-vmm's `vm-device`: that crate is not on
//! ember's pinned rust-vmm line, and all ember needs is a sorted range map.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// A device on a bus. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of building a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
    },
    /// A zero-length range.
    #[error("device range at {0:#x} has zero length")]
    Empty(u64),
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A bus: non-overlapping `[base, base+len)` ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base+len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, &(l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= *len).then_some((offset, dev))
    }

    /// Dispatch a read. Returns false (and leaves `data` untouched) if nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock().expect("device lock").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false if nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock().expect("device lock").write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_dispatch_and_refuse_overlaps() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x10, 8, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x14, 8, dev.clone()),
            Err(BusError::Overlap { base: 0x14, len: 8 })
        );
        assert_eq!(
            bus.insert(0x8, 9, dev.clone()),
            Err(BusError::Overlap { base: 0x8, len: 9 })
        );
        bus.insert(0x18, 8, dev.clone()).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(
            !bus.read(0x17, &mut [0u8; 2]),
            "access across the end of a device"
        );
        assert!(!bus.read(0x20, &mut b));
        assert!(
            !bus.read(u64::MAX, &mut b),
            "no overflow at the top of the address space"
        );
        assert!(bus.write(0x18, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![7])]);
    }
}
