//! virtio: the device trait, interrupts, the virtio-mmio transport and the devices.

pub mod block;
pub mod mmio;

use crate::memory::GuestMemory;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface (the only one ember offers).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Errors of activating a device.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The driver set up a queue whose rings lie outside guest memory or are misaligned.
    #[error("queue {0} is not valid (rings outside guest memory, bad size or alignment)")]
    InvalidQueue(usize),
    /// A queue the device needs is not ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// Device-specific failure.
    #[error("{0}")]
    Device(String),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register and the
/// irqfd that raises the device's IRQ.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tell the driver a used ring changed.
    pub fn signal_used_queue(&self) {
        self.signal(INT_VRING);
    }

    /// Set `bits` in InterruptStatus and raise the IRQ.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::error!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd (to register with KVM).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// A virtio device behind a transport. Queue state lives in the device; the transport
/// configures it from the driver's register writes and activates the device once the
/// driver sets DRIVER_OK.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 = block, ...).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// The driver accepted `features` (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// The queues.
    fn queues(&self) -> &[Queue];
    /// The queues, mutably.
    fn queues_mut(&mut self) -> &mut [Queue];
    /// One notification eventfd per queue (registered as ioeventfds).
    fn queue_events(&self) -> &[EventFd];
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing queues.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Whether [`VirtioDevice::activate`] succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// Back to the initial state (driver wrote 0 to Status).
    fn reset(&mut self);
}

/// Copy `src[offset..]` into `data`, zero-filling what lies past the end (config reads).
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset < src.len() {
        let n = data.len().min(src.len() - offset);
        data[..n].copy_from_slice(&src[offset..offset + n]);
    }
}
