//! virtio-blk over a host file or block device: read, write, flush, get-id; read-only
//! disks; capacity from the backing's size.
//!
//! A [`Block`] is either a fixed disk, backed by one file for the VM's life, or a **slot**
//! ([`Block::slot`]): it boots empty (capacity 0, every read and write fails with IOERR,
//! GET_ID still answers) and a [`BlockSlot`] handle attaches and detaches a backing while
//! the VM runs. virtio-mmio has no hot-plug, so this is Firecracker's "update drive":
//! swapping the backing bumps the config generation and raises a configuration-change
//! interrupt, and Linux's virtio_blk re-reads `capacity` (virtblk_config_changed). A slot
//! never offers VIRTIO_BLK_F_RO, because features cannot be renegotiated after boot; a
//! read-only attachment answers writes with IOERR instead.
//!
//! With a [`RateLimiter`] ([`Block::with_rate_limiter`]), each request takes one operation
//! and its data length in bytes; a request the limiter refuses stays in the available ring,
//! the queue stops there, and the limiter's timer (on the event loop) resumes it.

pub mod request;
pub mod slot;

use super::{read_config_bytes, DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::rate_limiter::RateLimiter;
use event_manager::{EventOps, Events, MutEventSubscriber};
use request::{Disk, ID_LEN, SECTOR_SIZE};
pub use slot::BlockSlot;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

/// virtio device id of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_BLK_F_RO.
const F_RO: u32 = 5;
/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u32 = 9;
/// Event data of the queue's eventfd.
const TOKEN_QUEUE: u32 = 0;
/// Event data of the rate limiter's timer.
const TOKEN_RATE_LIMIT: u32 = 1;

/// Errors of creating a block device or attaching a backing to a slot.
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
    /// The backing is neither a regular file nor a block device.
    #[error("disk {path} is neither a regular file nor a block device")]
    NotADisk {
        /// The path.
        path: PathBuf,
    },
    /// The slot already has a backing.
    #[error("virtio-blk slot {index} already holds {path}; detach it first")]
    Occupied {
        /// The slot's index.
        index: usize,
        /// What it holds.
        path: PathBuf,
    },
    /// A [`BlockSlot`] was asked for a device that is a fixed disk, not a slot.
    #[error("virtio-blk device {index} is a fixed disk, not a slot")]
    NotASlot {
        /// The index given for it.
        index: usize,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What a slot (or a fixed disk) is backed by, as its users see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The host file or block device.
    pub path: PathBuf,
    /// Whether guest writes are refused.
    pub read_only: bool,
    /// Capacity in 512-byte sectors (the size rounded down to whole sectors).
    pub capacity: u64,
}

/// An open backing: the file, its size in whole sectors, and whether it is read-only.
struct Backing {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl Backing {
    /// Open `path` (a regular file or a block device) and measure it. The size comes from
    /// seeking to the end, which works for block devices too (their metadata length is 0).
    fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        Self::from_file(file, path, read_only)
    }

    /// Take an open `file` (a regular file or a block device, opened for writing unless
    /// `read_only`), shown as `path`, and measure it: what a VMM that may not open host
    /// paths gets from the runtime (`control::Request::Attach`).
    fn from_file(mut file: File, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let kind = file.metadata().map_err(open_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size: len / SECTOR_SIZE * SECTOR_SIZE,
            read_only,
        })
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            path: self.path.clone(),
            read_only: self.read_only,
            capacity: self.size / SECTOR_SIZE,
        }
    }
}

/// A virtio-blk device: a fixed disk, or a slot whose backing comes and goes.
pub struct Block {
    backing: Option<Backing>,
    /// Slot mode: never offers F_RO, and the backing may change while the VM runs.
    slot: bool,
    /// Bumped on every change of the configuration space (the ConfigGeneration register).
    generation: u32,
    id: [u8; ID_LEN],
    state: DeviceState,
    /// Reused transfer buffer (no allocation per request).
    bounce: Vec<u8>,
    /// Bounds the guest's I/O through this device; `None`: unlimited.
    limiter: Option<RateLimiter>,
}

fn id_bytes(id: &str) -> [u8; ID_LEN] {
    let mut bytes = [0u8; ID_LEN];
    let n = id.len().min(ID_LEN);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    bytes
}

impl Block {
    /// A disk backed by `path` (a regular file or a block device); `id` is what GET_ID
    /// answers (truncated to 20 bytes).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let backing = Backing::open(path, read_only)?;
        Ok(Self {
            backing: Some(backing),
            slot: false,
            generation: 0,
            id: id_bytes(id),
            state: DeviceState::new(&[QUEUE_SIZE]).map_err(BlockError::EventFd)?,
            bounce: Vec::new(),
            limiter: None,
        })
    }

    /// An empty slot (capacity 0) whose backing a [`BlockSlot`] attaches later; `id` is
    /// what GET_ID answers, attached or not.
    pub fn slot(id: &str) -> Result<Self, BlockError> {
        Ok(Self {
            backing: None,
            slot: true,
            generation: 0,
            id: id_bytes(id),
            state: DeviceState::new(&[QUEUE_SIZE]).map_err(BlockError::EventFd)?,
            bounce: Vec::new(),
            limiter: None,
        })
    }

    /// The same device with `limiter` bounding its requests (`None`: unlimited). The
    /// limiter stays with the device across a slot's attachments.
    pub fn with_rate_limiter(mut self, limiter: Option<RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Whether this device is a slot (see [`Block::slot`]).
    pub fn is_slot(&self) -> bool {
        self.slot
    }

    /// Capacity in 512-byte sectors (0 for an empty slot).
    pub fn capacity(&self) -> u64 {
        self.backing.as_ref().map_or(0, |b| b.size / SECTOR_SIZE)
    }

    /// The current backing, if any.
    pub fn attachment(&self) -> Option<Attachment> {
        self.backing.as_ref().map(Backing::attachment)
    }

    /// Replace the backing (a slot's attach and detach) and bump the config generation;
    /// returns the old backing so the caller can close it outside the device lock.
    fn swap_backing(&mut self, backing: Option<Backing>) -> Option<Backing> {
        self.generation = self.generation.wrapping_add(1);
        std::mem::replace(&mut self.backing, backing)
    }

    /// Process the available requests of the queue, as many as the rate limiter (if any)
    /// lets through; returns how many were completed. A refused request is left available
    /// for the limiter's timer to resume.
    pub fn process_queue(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return 0;
        }
        let disk = Disk {
            file: self.backing.as_ref().map(|b| &b.file),
            size: self.backing.as_ref().map_or(0, |b| b.size),
            read_only: self.backing.as_ref().is_some_and(|b| b.read_only),
            id: &self.id,
        };
        let queue = &mut self.state.queues[0];
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Some(limiter) = self.limiter.as_mut() {
                // The data length: what the driver gives past the 16-byte header, plus
                // what it takes before the status byte (0 for a malformed chain).
                let readable = chain.clone().reader(mem).map_or(0, |r| r.available_bytes());
                let writable = chain.clone().writer(mem).map_or(0, |w| w.available_bytes());
                let bytes = readable
                    .saturating_sub(16)
                    .saturating_add(writable.saturating_sub(1));
                if !limiter.consume(bytes as u64) {
                    // Put the chain back: it stays available until the timer fires.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
            }
            let used = match (chain.clone().reader(mem), chain.writer(mem)) {
                (Ok(mut r), Ok(mut w)) => request::execute(&disk, &mut r, &mut w, &mut self.bounce),
                _ => {
                    crate::guest_warn!("virtio-blk: descriptor chain {head} is malformed; dropped");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, used) {
                crate::guest_warn!("virtio-blk: cannot return chain {head}: {e}");
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
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
        // A slot's read-only state changes with each attachment, after negotiation.
        if !self.slot && self.backing.as_ref().is_some_and(|b| b.read_only) {
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

    fn config_generation(&self) -> u32 {
        self.generation
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at offset 0); the rest of the config space reads as zero.
        read_config_bytes(&self.capacity().to_le_bytes(), offset, data);
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_RATE_LIMIT {
            if let Some(limiter) = self.limiter.as_mut() {
                limiter.on_timer();
            }
            if self.is_activated() {
                self.process_queue();
            }
            return;
        }
        // The eventfd is drained even before activation, so it does not spin.
        if self.state.take_queue_event(&events, "virtio-blk").is_some() && self.is_activated() {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state
            .register_queue_events(ops, TOKEN_QUEUE, "virtio-blk");
        if let Some(limiter) = &self.limiter {
            let events = Events::with_data(limiter, TOKEN_RATE_LIMIT, EventSet::IN);
            if let Err(e) = ops.add(events) {
                log::error!("virtio-blk: cannot watch the rate limiter's timer: {e}");
            }
        }
    }
}
