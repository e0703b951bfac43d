//! A simulated virtio driver: it initialises a device through the virtio-mmio registers
//! like Linux does, builds descriptor tables and rings in guest memory, kicks, and reads
//! the used ring. The event loop is replaced by an explicit `process` call.

use ember_vmm::devices::bus::BusDevice;
use ember_vmm::devices::virtio::mmio::{reg, status, MmioTransport};
use ember_vmm::devices::virtio::{Interrupt, VirtioDevice};
use ember_vmm::memory::{self, GuestMemory};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;

/// Queue layout used by the driver.
pub const DESC_TABLE: u64 = 0x1000;
/// Available ring.
pub const AVAIL_RING: u64 = 0x3000;
/// Used ring.
pub const USED_RING: u64 = 0x4000;
/// Start of the area for request buffers.
pub const DATA: u64 = 0x10_0000;
/// Queue size the driver sets.
pub const QUEUE_SIZE: u16 = 64;

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags (F_WRITE; F_NEXT is added by [`Driver::submit`] unless `raw`).
    pub flags: u16,
    /// Next index (only used by [`Driver::submit_raw`]).
    pub next: u16,
}

/// Where queue `q`'s rings live: queue 0 at the constants above, others further up.
pub fn ring_layout(q: usize) -> (u64, u64, u64) {
    if q == 0 {
        (DESC_TABLE, AVAIL_RING, USED_RING)
    } else {
        let base = 0x8000 + (q as u64 - 1) * 0x4000;
        (base, base + 0x1000, base + 0x2000)
    }
}

#[derive(Default, Clone, Copy)]
struct Ring {
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// The simulated driver and its device.
pub struct Driver<D: VirtioDevice> {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The device.
    pub device: Arc<Mutex<D>>,
    /// The transport (accessed through its registers only).
    pub transport: MmioTransport,
    /// The interrupt eventfd.
    pub irq: EventFd,
    /// The transport's interrupt line (InterruptStatus), for devices that raise it from
    /// outside the transport (a block slot's configuration change).
    pub interrupt: Arc<Interrupt>,
    rings: Vec<Ring>,
}

impl<D: VirtioDevice + 'static> Driver<D> {
    /// A driver for `device` in a guest of `mib` MiB.
    pub fn new(device: D, mib: u64) -> Self {
        let mem = memory::create(mib).unwrap();
        let device = Arc::new(Mutex::new(device));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt.clone());
        Self {
            mem,
            device,
            transport,
            irq,
            interrupt,
            rings: vec![Ring::default(); 8],
        }
    }

    /// Read a 32-bit register.
    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Write a 32-bit register.
    pub fn write(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    /// Device features (both halves).
    pub fn device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Linux's probe sequence with queue 0 at the standard layout, accepting every
    /// offered feature. Returns the final status register.
    pub fn init(&mut self) -> u32 {
        self.init_with(DESC_TABLE, AVAIL_RING, USED_RING)
    }

    /// The probe sequence with `n` queues at [`ring_layout`].
    pub fn init_queues(&mut self, n: usize) -> u32 {
        let layouts: Vec<_> = (0..n).map(ring_layout).collect();
        self.probe(&layouts)
    }

    /// The probe sequence with the given ring addresses for queue 0.
    pub fn init_with(&mut self, desc: u64, avail: u64, used: u64) -> u32 {
        self.probe(&[(desc, avail, used)])
    }

    fn probe(&mut self, queues: &[(u64, u64, u64)]) -> u32 {
        assert_eq!(self.read(reg::MAGIC), 0x7472_6976);
        assert_eq!(self.read(reg::VERSION), 2);
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let features = self.device_features();
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(
            self.read(reg::STATUS) & status::FEATURES_OK,
            0,
            "FEATURES_OK accepted"
        );
        for (q, &(desc, avail, used)) in queues.iter().enumerate() {
            self.write(reg::QUEUE_SEL, q as u32);
            assert!(self.read(reg::QUEUE_NUM_MAX) >= u32::from(QUEUE_SIZE));
            self.write(reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
            self.write(reg::QUEUE_DESC_LOW, desc as u32);
            self.write(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.write(reg::QUEUE_DRIVER_LOW, avail as u32);
            self.write(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            self.write(reg::QUEUE_DEVICE_LOW, used as u32);
            self.write(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            self.write(reg::QUEUE_READY, 1);
        }
        self.write(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        self.read(reg::STATUS)
    }

    fn write_desc(&self, q: usize, index: u16, d: Desc) {
        let at = GuestAddress(ring_layout(q).0 + 16 * u64::from(index));
        self.mem.write_obj(d.addr, at).unwrap();
        self.mem.write_obj(d.len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(d.flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(d.next, at.unchecked_add(14)).unwrap();
    }

    /// Forget every queue's ring state and zero the rings in guest memory, as a driver
    /// does before probing a device again after a reset.
    pub fn forget_rings(&mut self) {
        for (q, r) in self.rings.iter_mut().enumerate() {
            *r = Ring::default();
            let (desc, _, used) = ring_layout(q);
            let zeros = vec![0u8; (used + 0x1000 - desc) as usize];
            self.mem
                .write_slice(&zeros, GuestAddress(desc))
                .expect("rings inside guest memory");
        }
    }

    /// Make the chain at `head` (already written) available again on queue `q`.
    pub fn republish(&mut self, q: usize, head: u16) {
        self.publish(q, head);
    }

    fn publish(&mut self, q: usize, head: u16) {
        let avail = ring_layout(q).1;
        let r = &mut self.rings[q];
        let slot = u64::from(r.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(avail + 2))
            .unwrap();
    }

    /// Put a chain of descriptors (linked in order) on queue 0; returns its head.
    pub fn submit(&mut self, chain: &[Desc]) -> u16 {
        self.submit_q(0, chain)
    }

    /// Put a chain on queue `q`; returns its head.
    pub fn submit_q(&mut self, q: usize, chain: &[Desc]) -> u16 {
        let head = self.rings[q].next_desc;
        for (i, d) in chain.iter().enumerate() {
            let index = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == chain.len();
            let next = (index + 1) % QUEUE_SIZE;
            self.write_desc(
                q,
                index,
                Desc {
                    flags: if last {
                        d.flags & !F_NEXT
                    } else {
                        d.flags | F_NEXT
                    },
                    next: if last { 0 } else { next },
                    ..*d
                },
            );
        }
        self.rings[q].next_desc = (head + chain.len() as u16) % QUEUE_SIZE;
        self.publish(q, head);
        head
    }

    /// Write descriptors exactly as given at `first..` of queue 0 (flags and next
    /// untouched) and publish `head`: for malformed chains.
    pub fn submit_raw(&mut self, first: u16, descs: &[Desc], head: u16) {
        for (i, d) in descs.iter().enumerate() {
            self.write_desc(0, first + i as u16, *d);
        }
        self.rings[0].next_desc = (first + descs.len() as u16) % QUEUE_SIZE;
        self.publish(0, head);
    }

    /// Kick queue 0 through QueueNotify.
    pub fn kick(&mut self) {
        self.kick_q(0);
    }

    /// Kick queue `q`.
    pub fn kick_q(&mut self, q: usize) {
        self.write(reg::QUEUE_NOTIFY, q as u32);
    }

    /// New used entries of queue 0 since the last call: (descriptor id, length written).
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        self.used_q(0)
    }

    /// New used entries of queue `q`.
    pub fn used_q(&mut self, q: usize) -> Vec<(u32, u32)> {
        let used = ring_layout(q).2;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        let r = &mut self.rings[q];
        while r.used_seen != idx {
            let slot = u64::from(r.used_seen % QUEUE_SIZE);
            let at = GuestAddress(used + 4 + 8 * slot);
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// Write bytes into guest memory.
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Read bytes from guest memory.
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

use vm_memory::Address as _;
