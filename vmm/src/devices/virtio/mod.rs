//! virtio: the device trait, interrupts, the virtio-mmio transport and the devices.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use crate::memory::GuestMemory;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
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

/// A virtio device behind a transport. Queue state lives in the device ([`DeviceState`]);
/// the transport configures it from the driver's register writes and activates the device
/// once the driver sets DRIVER_OK. Devices implement the device-specific methods and get
/// the queue plumbing from their [`DeviceState`].
pub trait VirtioDevice: Send {
    /// The virtio device id (2 = block, 4 = rng, ...).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The ConfigGeneration register: a device whose configuration space changes while the
    /// driver runs bumps it, so a driver reading a multi-word field (a 64-bit capacity in
    /// two 32-bit reads) can tell it saw one consistent value. Constant by default.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Write the device-specific configuration space (read-only unless overridden).
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::guest_warn!(
            "virtio device {}: guest wrote read-only config at {offset:#x}; ignored",
            self.device_type()
        );
    }
    /// The shared queue state.
    fn state(&self) -> &DeviceState;
    /// The shared queue state, mutably.
    fn state_mut(&mut self) -> &mut DeviceState;

    /// The driver accepted `features` (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64) {
        self.state_mut().acked_features = features;
    }
    /// The queues.
    fn queues(&self) -> &[Queue] {
        &self.state().queues
    }
    /// The queues, mutably.
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.state_mut().queues
    }
    /// One notification eventfd per queue (registered as ioeventfds).
    fn queue_events(&self) -> &[EventFd] {
        &self.state().queue_events
    }
    /// Start processing queues.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.state_mut().activate(mem, interrupt)
    }
    /// Whether [`VirtioDevice::activate`] succeeded and no reset happened since.
    fn is_activated(&self) -> bool {
        self.state().is_activated()
    }
    /// Back to the initial state (driver wrote 0 to Status).
    fn reset(&mut self) {
        self.state_mut().reset();
    }
}

/// The state every virtio device shares: its queues and their notification eventfds,
/// and, once activated, guest memory and the interrupt line.
pub struct DeviceState {
    /// The queues (configured by the transport).
    pub queues: Vec<Queue>,
    /// One eventfd per queue.
    pub queue_events: Vec<EventFd>,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Guest memory, once activated.
    pub mem: Option<GuestMemory>,
    /// Interrupt line, once activated.
    pub interrupt: Option<Arc<Interrupt>>,
}

impl DeviceState {
    /// State for queues of the given maximum sizes.
    pub fn new(queue_sizes: &[u16]) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for &size in queue_sizes {
            queues.push(Queue::new(size).map_err(|e| std::io::Error::other(e.to_string()))?);
            queue_events.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            queues,
            queue_events,
            acked_features: 0,
            mem: None,
            interrupt: None,
        })
    }

    /// Check every queue and keep memory and interrupt: the common part of `activate`.
    pub fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        use virtio_queue::QueueT;
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
            if !q.is_valid(&mem) {
                return Err(ActivateError::InvalidQueue(i));
            }
        }
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    /// Whether activated.
    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    /// Forget memory and interrupt (the transport resets the queues).
    pub fn reset(&mut self) {
        self.mem = None;
        self.interrupt = None;
        self.acked_features = 0;
    }

    /// Raise the interrupt once if any of `queues` moved and its driver wants to be told
    /// (`moved[i]` is how many buffers queue `queues[i]` returned).
    pub fn notify(&mut self, queues: &[(usize, usize)]) {
        let (Some(mem), Some(interrupt)) = (self.mem.as_ref(), self.interrupt.as_ref()) else {
            return;
        };
        let mut needed = false;
        for &(q, moved) in queues {
            if moved > 0 {
                if let Some(queue) = self.queues.get_mut(q) {
                    needed |= queue.needs_notification(mem).unwrap_or(true);
                }
            }
        }
        if needed {
            interrupt.signal_used_queue();
        }
    }

    /// Register every queue eventfd with the event loop, with `base + queue index` as the
    /// event data (devices that also watch other fds pick a base that cannot clash).
    pub fn register_queue_events(
        &self,
        ops: &mut event_manager::EventOps,
        base: u32,
        device: &str,
    ) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            let events = event_manager::Events::with_data(
                evt,
                base + i as u32,
                vmm_sys_util::epoll::EventSet::IN,
            );
            if let Err(e) = ops.add(events) {
                log::error!("{device}: cannot watch queue {i}'s eventfd: {e}");
            }
        }
    }

    /// The queue index a queue event is for, after draining its eventfd; `None` (and a
    /// warning) for anything else.
    pub fn take_queue_event(&self, events: &event_manager::Events, device: &str) -> Option<usize> {
        let i = events.data() as usize;
        match self.queue_events.get(i) {
            Some(evt) if events.event_set() == vmm_sys_util::epoll::EventSet::IN => {
                let _ = evt.read();
                Some(i)
            }
            _ => {
                crate::guest_warn!(
                    "{device}: unexpected event {:?} for queue {i}",
                    events.event_set()
                );
                None
            }
        }
    }
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
