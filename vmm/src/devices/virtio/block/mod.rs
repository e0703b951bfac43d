//! virtio-blk over a host file: read, write, flush, get-id; read-only disks; capacity
//! from the file size.

pub mod request;

use super::{read_config_bytes, DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
use event_manager::{EventOps, Events, MutEventSubscriber};
use request::{Disk, ID_LEN, SECTOR_SIZE};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtio_queue::QueueT;

/// virtio device id of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_BLK_F_RO.
const F_RO: u32 = 5;
/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u32 = 9;

/// Errors of creating a block device.
#[derive(Debug, Error)]
pub enum BlockError {
    /// The backing file cannot be opened.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    size: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    state: DeviceState,
    /// Reused transfer buffer (no allocation per request).
    bounce: Vec<u8>,
}

impl Block {
    /// A disk backed by `path`; `id` is what GET_ID answers (truncated to 20 bytes).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len() / SECTOR_SIZE * SECTOR_SIZE;
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            size,
            read_only,
            id: id_bytes,
            state: DeviceState::new(&[QUEUE_SIZE]).map_err(BlockError::EventFd)?,
            bounce: Vec::new(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Process every available request of the queue; returns how many were completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        let disk = Disk {
            file: &self.file,
            size: self.size,
            read_only: self.read_only,
            id: &self.id,
        };
        let queue = &mut self.state.queues[0];
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = match (chain.clone().reader(mem), chain.writer(mem)) {
                (Ok(mut r), Ok(mut w)) => request::execute(&disk, &mut r, &mut w, &mut self.bounce),
                _ => {
                    log::warn!("virtio-blk: descriptor chain {head} is malformed; dropped");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, used) {
                log::warn!("virtio-blk: cannot return chain {head}: {e}");
                break;
            }
            done += 1;
        }
        self.state.notify(&[(0, done)]);
        done
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1) | (1 << F_FLUSH);
        if self.read_only {
            f |= 1 << F_RO;
        }
        f
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at offset 0); the rest of the config space reads as zero.
        read_config_bytes(&self.capacity().to_le_bytes(), offset, data);
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // The eventfd is drained even before activation, so it does not spin.
        if self.state.take_queue_event(&events, "virtio-blk").is_some() && self.is_activated() {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.register_queue_events(ops, 0, "virtio-blk");
    }
}
