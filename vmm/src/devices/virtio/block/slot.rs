//! [`BlockSlot`]: attach and detach the backing of a virtio-blk slot while the VM runs.
//!
//! The slot's [`Block`] is shared with the event-loop thread, which processes its queue
//! while holding the device's lock; an attach or detach swaps the backing under the same
//! lock, so every request runs entirely against one backing (or none), never a half-swapped
//! one. The file is opened before the lock is taken and an old one closed after it is
//! released, so the event loop never waits on a host open or close.

use super::{Attachment, Backing, Block, BlockError};
use crate::devices::virtio::{Interrupt, INT_CONFIG};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle on one virtio-blk slot of a VM, usable from any thread while the VM runs.
/// Clones are handles on the same slot.
#[derive(Clone)]
pub struct BlockSlot {
    index: usize,
    mmio_addr: u64,
    device: Arc<Mutex<Block>>,
    interrupt: Arc<Interrupt>,
}

impl std::fmt::Debug for BlockSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSlot")
            .field("index", &self.index)
            .field("mmio_addr", &format_args!("{:#x}", self.mmio_addr))
            .field("attachment", &self.attachment())
            .finish()
    }
}

impl BlockSlot {
    /// A handle on `device` (which must be a [`Block::slot`]), the `index`th slot of its
    /// VM, whose virtio-mmio window starts at `mmio_addr` and whose transport raises
    /// `interrupt`.
    pub fn new(
        index: usize,
        mmio_addr: u64,
        device: Arc<Mutex<Block>>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, BlockError> {
        let slot = Self {
            index,
            mmio_addr,
            device,
            interrupt,
        };
        if !slot.lock().is_slot() {
            return Err(BlockError::NotASlot { index });
        }
        Ok(slot)
    }

    /// A slot outside any VM: an empty [`Block::slot`] named `s<index>` with an interrupt
    /// of its own, at `mmio_addr`. For code that keeps slot bookkeeping and wants to test
    /// it without a VM (the runtime's volume table).
    pub fn detached(index: usize, mmio_addr: u64) -> Result<Self, BlockError> {
        let device = Arc::new(Mutex::new(Block::slot(&format!("s{index}"))?));
        let eventfd =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Self::new(index, mmio_addr, device, Arc::new(Interrupt::new(eventfd)))
    }

    /// The slot's index among its VM's slots (0, 1, ...).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Guest-physical address of the slot's virtio-mmio window: the guest finds the
    /// device under `/sys/devices/platform/<address>.virtio_mmio`.
    pub fn mmio_addr(&self) -> u64 {
        self.mmio_addr
    }

    /// What the slot holds now, if anything.
    pub fn attachment(&self) -> Option<Attachment> {
        self.lock().attachment()
    }

    /// Back the empty slot with `path` (a regular file or a block device), read-only or
    /// not, and tell the driver its capacity changed. A failure (the path cannot be
    /// opened, or the slot is in use) leaves the slot as it was.
    pub fn attach(&self, path: &Path, read_only: bool) -> Result<Attachment, BlockError> {
        self.attach_backing(Backing::open(path, read_only)?)
    }

    /// Back the empty slot with `file`, already open (for writing too unless
    /// `read_only`); `label` is what [`Attachment::path`] and messages show. For a VMM
    /// that may not open host paths: the runtime opens the disk and passes the fd. The
    /// same checks and failures as [`BlockSlot::attach`].
    pub fn attach_file(
        &self,
        file: std::fs::File,
        label: &Path,
        read_only: bool,
    ) -> Result<Attachment, BlockError> {
        self.attach_backing(Backing::from_file(file, label, read_only)?)
    }

    fn attach_backing(&self, backing: Backing) -> Result<Attachment, BlockError> {
        let mut dev = self.lock();
        if let Some(current) = dev.attachment() {
            return Err(BlockError::Occupied {
                index: self.index,
                path: current.path,
            });
        }
        let attached = backing.attachment();
        dev.swap_backing(Some(backing));
        drop(dev);
        self.interrupt.signal(INT_CONFIG);
        log::debug!(
            "virtio-blk slot {}: attached {} ({} sectors{})",
            self.index,
            attached.path.display(),
            attached.capacity,
            if attached.read_only {
                ", read-only"
            } else {
                ""
            }
        );
        Ok(attached)
    }

    /// Empty the slot (capacity 0 again) and tell the driver; returns what it held. The
    /// guest should have stopped using the disk (unmounted it) before: later requests
    /// fail with IOERR.
    pub fn detach(&self) -> Option<Attachment> {
        let mut dev = self.lock();
        let old = dev
            .backing
            .is_some()
            .then(|| dev.swap_backing(None))
            .flatten();
        drop(dev);
        let old = old?;
        self.interrupt.signal(INT_CONFIG);
        let detached = old.attachment();
        // The file is closed here, outside the device lock.
        drop(old);
        log::debug!(
            "virtio-blk slot {}: detached {}",
            self.index,
            detached.path.display()
        );
        Some(detached)
    }

    fn lock(&self) -> MutexGuard<'_, Block> {
        // A panic elsewhere while holding the lock leaves the device usable: its state is
        // only ever replaced whole.
        self.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
