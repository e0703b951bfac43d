//! A simulated virtio driver: it initialises a device through the virtio-mmio registers
//! like Linux does, builds descriptor tables and rings in guest memory, kicks, and reads
//! the used ring. The event loop is replaced by an explicit `process` call.

#![allow(dead_code)]

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
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<D: VirtioDevice + 'static> Driver<D> {
    /// A driver for `device` in a guest of `mib` MiB.
    pub fn new(device: D, mib: u64) -> Self {
        let mem = memory::create(mib).unwrap();
        let device = Arc::new(Mutex::new(device));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(
            device.clone(),
            mem.clone(),
            Arc::new(Interrupt::new(irq.try_clone().unwrap())),
        );
        Self {
            mem,
            device,
            transport,
            irq,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
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

    /// The probe sequence with the given ring addresses.
    pub fn init_with(&mut self, desc: u64, avail: u64, used: u64) -> u32 {
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
        self.write(reg::QUEUE_SEL, 0);
        assert!(self.read(reg::QUEUE_NUM_MAX) >= u32::from(QUEUE_SIZE));
        self.write(reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
        self.write(reg::QUEUE_DESC_LOW, desc as u32);
        self.write(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(reg::QUEUE_DRIVER_LOW, avail as u32);
        self.write(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.write(reg::QUEUE_DEVICE_LOW, used as u32);
        self.write(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.write(reg::QUEUE_READY, 1);
        self.write(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        self.read(reg::STATUS)
    }

    fn write_desc(&self, index: u16, d: Desc) {
        let at = GuestAddress(DESC_TABLE + 16 * u64::from(index));
        self.mem.write_obj(d.addr, at).unwrap();
        self.mem.write_obj(d.len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(d.flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(d.next, at.unchecked_add(14)).unwrap();
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Put a chain of descriptors (linked in order) on the available ring; returns its head.
    pub fn submit(&mut self, chain: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in chain.iter().enumerate() {
            let index = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == chain.len();
            let next = (index + 1) % QUEUE_SIZE;
            self.write_desc(
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
        self.next_desc = (head + chain.len() as u16) % QUEUE_SIZE;
        self.publish(head);
        head
    }

    /// Write descriptors exactly as given at `first..` (flags and next untouched) and
    /// publish `head`: for malformed chains.
    pub fn submit_raw(&mut self, first: u16, descs: &[Desc], head: u16) {
        for (i, d) in descs.iter().enumerate() {
            self.write_desc(first + i as u16, *d);
        }
        self.next_desc = (first + descs.len() as u16) % QUEUE_SIZE;
        self.publish(head);
    }

    /// Kick queue 0 through QueueNotify.
    pub fn kick(&mut self) {
        self.write(reg::QUEUE_NOTIFY, 0);
    }

    /// New used-ring entries since the last call: (descriptor id, length written).
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QUEUE_SIZE);
            let at = GuestAddress(USED_RING + 4 + 8 * slot);
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
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
