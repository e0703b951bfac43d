//! virtio-mmio register sequences: reads and writes of any register (and any offset, size
//! and alignment) in any order, feature negotiation, queue setup with any ring addresses
//! and sizes, status changes, resets and config space accesses, with the device
//! processing its queue between them, on virtio-blk, a virtio-blk slot or virtio-rng.
//!
//! Invariants: the identification registers never change; FEATURES_OK is only ever set
//! with features the device offered, VERSION_1 among them; the device is only active
//! with DRIVER_OK set and FEATURES_OK accepted; a bad access reads zeros; after a reset
//! the device is inactive, and the Linux probe sequence brings it up again to serve a
//! well-formed request.

use super::decode;
use crate::driver::{Desc, Driver, DATA, F_NEXT, F_WRITE};
use arbitrary::Arbitrary;
use ember_vmm::devices::bus::BusDevice;
use ember_vmm::devices::virtio::block::Block;
use ember_vmm::devices::virtio::mmio::{reg, status, MAGIC_VALUE, VENDOR_ID, VERSION};
use ember_vmm::devices::virtio::rng::Rng;
use ember_vmm::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

const MIB: u64 = 16;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Magic,
    Version,
    DeviceId,
    VendorId,
    DeviceFeatures,
    DeviceFeaturesSel,
    DriverFeatures,
    DriverFeaturesSel,
    QueueSel,
    QueueNumMax,
    QueueNum,
    QueueReady,
    QueueNotify,
    InterruptStatus,
    InterruptAck,
    Status,
    QueueDescLow,
    QueueDescHigh,
    QueueDriverLow,
    QueueDriverHigh,
    QueueDeviceLow,
    QueueDeviceHigh,
    ConfigGeneration,
    /// Into the device config space.
    Config(u8),
    /// Any offset in the 4 KiB window.
    Raw(u16),
}

impl Offset {
    fn get(self) -> u64 {
        match self {
            Offset::Magic => reg::MAGIC,
            Offset::Version => reg::VERSION,
            Offset::DeviceId => reg::DEVICE_ID,
            Offset::VendorId => reg::VENDOR_ID,
            Offset::DeviceFeatures => reg::DEVICE_FEATURES,
            Offset::DeviceFeaturesSel => reg::DEVICE_FEATURES_SEL,
            Offset::DriverFeatures => reg::DRIVER_FEATURES,
            Offset::DriverFeaturesSel => reg::DRIVER_FEATURES_SEL,
            Offset::QueueSel => reg::QUEUE_SEL,
            Offset::QueueNumMax => reg::QUEUE_NUM_MAX,
            Offset::QueueNum => reg::QUEUE_NUM,
            Offset::QueueReady => reg::QUEUE_READY,
            Offset::QueueNotify => reg::QUEUE_NOTIFY,
            Offset::InterruptStatus => reg::INTERRUPT_STATUS,
            Offset::InterruptAck => reg::INTERRUPT_ACK,
            Offset::Status => reg::STATUS,
            Offset::QueueDescLow => reg::QUEUE_DESC_LOW,
            Offset::QueueDescHigh => reg::QUEUE_DESC_HIGH,
            Offset::QueueDriverLow => reg::QUEUE_DRIVER_LOW,
            Offset::QueueDriverHigh => reg::QUEUE_DRIVER_HIGH,
            Offset::QueueDeviceLow => reg::QUEUE_DEVICE_LOW,
            Offset::QueueDeviceHigh => reg::QUEUE_DEVICE_HIGH,
            Offset::ConfigGeneration => reg::CONFIG_GENERATION,
            Offset::Config(o) => reg::CONFIG + u64::from(o),
            Offset::Raw(o) => u64::from(o % 0x1000),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    /// A status made of the named bits.
    Status(u8),
    /// A small number (a selector, a queue size, a queue index).
    Small(u8),
    /// A guest address in the first MiBs (ring addresses).
    Page(u16),
    Raw(u32),
}

impl Value {
    fn get(self) -> u32 {
        match self {
            Value::Status(b) => u32::from(b),
            Value::Small(n) => u32::from(n),
            Value::Page(p) => u32::from(p) << 8,
            Value::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read32(Offset),
    Write32(Offset, Value),
    /// A read of 1, 2, 4 or 8 bytes (any alignment).
    Read(Offset, u8),
    /// A write of 1..=8 bytes.
    Write(Offset, Vec<u8>),
    /// The device thread serves the queue (as after an ioeventfd kick).
    Process,
    /// The driver publishes a request at the standard layout.
    Publish,
}

#[derive(Arbitrary, Debug)]
enum Dev {
    Block,
    Slot,
    Rng,
}

#[derive(Arbitrary, Debug)]
struct Input {
    dev: Dev,
    /// At most 64 are done.
    ops: Vec<Op>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(input) = decode::<Input>(data) else {
        return;
    };
    match input.dev {
        Dev::Block | Dev::Slot => {
            let disk = tempfile::NamedTempFile::new().expect("temp disk");
            disk.as_file().set_len(8 * 512).expect("disk size");
            let block = if matches!(input.dev, Dev::Slot) {
                Block::slot("fuzz").expect("slot")
            } else {
                Block::new(disk.path(), false, "fuzz").expect("disk")
            };
            let slot = block.is_slot();
            drive(
                Driver::new(block, MIB),
                &input.ops,
                Block::process_queue,
                |d| {
                    // A read of sector 0: an empty slot answers IOERR, a disk OK.
                    d.poke(DATA, &[0u8; 16]);
                    d.poke(DATA + 0x2000, &[0xee]);
                    d.submit(&[
                        Desc {
                            addr: DATA,
                            len: 16,
                            flags: F_NEXT,
                            next: 0,
                        },
                        Desc {
                            addr: DATA + 0x1000,
                            len: 512,
                            flags: F_WRITE,
                            next: 0,
                        },
                        Desc {
                            addr: DATA + 0x2000,
                            len: 1,
                            flags: F_WRITE,
                            next: 0,
                        },
                    ]);
                    d.kick();
                    d.device.lock().expect("device lock").process_queue();
                    let used = d.used();
                    assert_eq!(used.len(), 1, "one request served after re-probing");
                    let st = d.peek(DATA + 0x2000, 1)[0];
                    assert_eq!(st, u8::from(slot), "status of a read after re-probing");
                },
            );
        }
        Dev::Rng => {
            drive(
                Driver::new(Rng::new().expect("rng"), MIB),
                &input.ops,
                Rng::process_queue,
                |d| {
                    d.submit(&[Desc {
                        addr: DATA,
                        len: 64,
                        flags: F_WRITE,
                        next: 0,
                    }]);
                    d.kick();
                    d.device.lock().expect("device lock").process_queue();
                    assert_eq!(
                        d.used().first().map(|u| u.1),
                        Some(64),
                        "64 random bytes after re-probing"
                    );
                },
            );
        }
    }
}

fn drive<D: VirtioDevice + 'static>(
    mut d: Driver<D>,
    ops: &[Op],
    process: fn(&mut D) -> usize,
    serve: impl FnOnce(&mut Driver<D>),
) {
    let device_type = d.device.lock().expect("device lock").device_type();
    let offered = d.device.lock().expect("device lock").avail_features();
    for op in ops.iter().take(64) {
        match op {
            Op::Read32(o) => {
                let v = d.read(o.get());
                let expect = match o {
                    Offset::Magic => Some(MAGIC_VALUE),
                    Offset::Version => Some(VERSION),
                    Offset::DeviceId => Some(device_type),
                    Offset::VendorId => Some(VENDOR_ID),
                    _ => None,
                };
                if let Some(e) = expect {
                    assert_eq!(v, e, "identification register {o:?}");
                }
            }
            Op::Write32(o, v) => d.write(o.get(), v.get()),
            Op::Read(o, size) => {
                let size = [1usize, 2, 4, 8][usize::from(size % 4)];
                let off = o.get();
                let mut b = vec![0xa5u8; size];
                d.transport.read(off, &mut b);
                if off < reg::CONFIG && (size != 4 || off % 4 != 0) {
                    assert!(b.iter().all(|x| *x == 0), "a bad register read reads zeros");
                }
            }
            Op::Write(o, bytes) => {
                let n = bytes.len().min(8);
                d.transport.write(o.get(), &bytes[..n]);
            }
            Op::Process => {
                process(&mut d.device.lock().expect("device lock"));
            }
            Op::Publish => {
                d.submit(&[Desc {
                    addr: DATA,
                    len: 16,
                    flags: F_WRITE,
                    next: 0,
                }]);
            }
        }
        let st = d.transport.status();
        let dev = d.device.lock().expect("device lock");
        if st & status::FEATURES_OK != 0 {
            let acked = dev.state().acked_features;
            assert_eq!(
                acked & !offered,
                0,
                "acked features {acked:#x} were offered ({offered:#x})"
            );
            assert_ne!(acked & (1 << VIRTIO_F_VERSION_1), 0, "VERSION_1 acked");
        }
        if dev.is_activated() {
            assert_ne!(st & status::DRIVER_OK, 0, "active only after DRIVER_OK");
            assert_ne!(
                st & status::FEATURES_OK,
                0,
                "active only with features accepted"
            );
        }
    }
    // A reset always works, and the Linux probe sequence brings the device back.
    d.write(reg::STATUS, 0);
    assert_eq!(d.read(reg::STATUS), 0, "status after reset");
    assert!(
        !d.device.lock().expect("device lock").is_activated(),
        "inactive after reset"
    );
    assert_eq!(
        d.read(reg::INTERRUPT_STATUS),
        0,
        "no interrupt pending after reset"
    );
    d.forget_rings();
    let st = d.init();
    assert_eq!(
        st & status::NEEDS_RESET,
        0,
        "the device activates after re-probing"
    );
    serve(&mut d);
}
