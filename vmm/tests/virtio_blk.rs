//! virtio-blk through the virtio-mmio transport, driven by the simulated guest driver:
//! every request type, read-only disks, and malformed requests that must fail alone.

mod common;

use common::driver::{Desc, Driver, DATA, F_NEXT, F_WRITE};
use ember_vmm::devices::virtio::block::request::{status, types};
use ember_vmm::devices::virtio::block::Block;
use ember_vmm::devices::virtio::mmio::{reg, status as dev_status};
use ember_vmm::devices::virtio::VirtioDevice;
use std::io::Write;

const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUF: u64 = DATA + 0x1000;
const DISK_SECTORS: u64 = 64;

/// A disk image whose sector n is filled with byte n.
fn disk(read_only: bool) -> (tempfile::NamedTempFile, Driver<Block>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..DISK_SECTORS {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    f.flush().unwrap();
    let block = Block::new(f.path(), read_only, "ember-test-disk").unwrap();
    let mut d = Driver::new(block, 64);
    let st = d.init();
    assert_ne!(st & dev_status::DRIVER_OK, 0);
    assert_eq!(st & dev_status::NEEDS_RESET, 0);
    (f, d)
}

fn header(d: &Driver<Block>, kind: u32, sector: u64) {
    let mut h = Vec::new();
    h.extend(kind.to_le_bytes());
    h.extend(0u32.to_le_bytes());
    h.extend(sector.to_le_bytes());
    d.poke(HDR, &h);
    d.poke(STATUS, &[0xff]);
}

/// Kick, let the device process (as the event loop would), return the used entries.
fn run(d: &mut Driver<Block>) -> Vec<(u32, u32)> {
    d.kick();
    let dev = d.device.clone();
    let mut dev = dev.lock().unwrap();
    assert_eq!(
        dev.queue_events()[0].read().unwrap(),
        1,
        "the kick reached the queue eventfd"
    );
    dev.process_queue();
    drop(dev);
    d.used()
}

fn std_request(
    d: &mut Driver<Block>,
    kind: u32,
    sector: u64,
    data_len: u32,
    data_write: bool,
) -> (u16, Vec<(u32, u32)>) {
    header(d, kind, sector);
    let mut chain = vec![Desc {
        addr: HDR,
        len: 16,
        flags: 0,
        next: 0,
    }];
    if data_len > 0 {
        chain.push(Desc {
            addr: BUF,
            len: data_len,
            flags: if data_write { F_WRITE } else { 0 },
            next: 0,
        });
    }
    chain.push(Desc {
        addr: STATUS,
        len: 1,
        flags: F_WRITE,
        next: 0,
    });
    let head = d.submit(&chain);
    (head, run(d))
}

fn status_byte(d: &Driver<Block>) -> u8 {
    d.peek(STATUS, 1)[0]
}

#[test]
fn config_space_and_features() {
    let (_f, mut d) = disk(false);
    assert_eq!(d.read(reg::DEVICE_ID), 2);
    let mut cap = [0u8; 8];
    ember_vmm::devices::bus::BusDevice::read(&mut d.transport, reg::CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let f = d.device_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    assert_ne!(f & (1 << 9), 0, "FLUSH");
    assert_eq!(f & (1 << 5), 0, "not RO");
    let (_f, mut ro) = disk(true);
    assert_ne!(
        ro.device_features() & (1 << 5),
        0,
        "RO offered for a read-only disk"
    );
}

#[test]
fn read_returns_disk_contents_and_raises_the_interrupt() {
    let (_f, mut d) = disk(false);
    let (head, used) = std_request(&mut d, types::IN, 3, 1024, true);
    assert_eq!(used, vec![(u32::from(head), 1024 + 1)]);
    assert_eq!(status_byte(&d), status::OK);
    let data = d.peek(BUF, 1024);
    assert!(data[..512].iter().all(|b| *b == 3) && data[512..].iter().all(|b| *b == 4));
    assert!(d.irq.read().unwrap() >= 1, "interrupt raised");
    assert_eq!(d.read(reg::INTERRUPT_STATUS) & 1, 1);
    d.write(reg::INTERRUPT_ACK, 1);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn write_then_flush_reach_the_file() {
    let (f, mut d) = disk(false);
    d.poke(BUF, &[0xab; 512]);
    let (_, used) = std_request(&mut d, types::OUT, 7, 512, false);
    assert_eq!(used[0].1, 1, "only the status byte is written back");
    assert_eq!(status_byte(&d), status::OK);
    let (_, _) = std_request(&mut d, types::FLUSH, 0, 0, false);
    assert_eq!(status_byte(&d), status::OK);
    let bytes = std::fs::read(f.path()).unwrap();
    assert!(bytes[7 * 512..8 * 512].iter().all(|b| *b == 0xab));
    assert!(
        bytes[8 * 512..9 * 512].iter().all(|b| *b == 8),
        "neighbour untouched"
    );
}

#[test]
fn get_id_answers_the_serial() {
    let (_f, mut d) = disk(false);
    let (_, used) = std_request(&mut d, types::GET_ID, 0, 20, true);
    assert_eq!(status_byte(&d), status::OK);
    assert_eq!(used[0].1, 21);
    assert_eq!(&d.peek(BUF, 15), b"ember-test-disk");
}

#[test]
fn unknown_type_is_unsupported() {
    let (_f, mut d) = disk(false);
    std_request(&mut d, 77, 0, 0, false);
    assert_eq!(status_byte(&d), status::UNSUPP);
}

#[test]
fn read_only_disk_rejects_writes_with_ioerr() {
    let (f, mut d) = disk(true);
    d.poke(BUF, &[0xee; 512]);
    std_request(&mut d, types::OUT, 1, 512, false);
    assert_eq!(status_byte(&d), status::IOERR);
    assert!(
        std::fs::read(f.path()).unwrap()[512..1024]
            .iter()
            .all(|b| *b == 1),
        "file unchanged"
    );
    // Reads still work.
    std_request(&mut d, types::IN, 1, 512, true);
    assert_eq!(status_byte(&d), status::OK);
}

#[test]
fn out_of_range_and_unaligned_requests_fail_with_ioerr() {
    let (_f, mut d) = disk(false);
    std_request(&mut d, types::IN, DISK_SECTORS, 512, true);
    assert_eq!(status_byte(&d), status::IOERR, "past the end");
    std_request(&mut d, types::IN, DISK_SECTORS - 1, 1024, true);
    assert_eq!(status_byte(&d), status::IOERR, "straddles the end");
    std_request(&mut d, types::IN, u64::MAX / 2, 512, true);
    assert_eq!(status_byte(&d), status::IOERR, "sector overflow");
    std_request(&mut d, types::IN, 0, 100, true);
    assert_eq!(status_byte(&d), status::IOERR, "not a multiple of 512");
}

#[test]
fn malformed_chains_fail_alone_and_the_device_keeps_working() {
    let (_f, mut d) = disk(false);
    let beyond = 64u64 << 20; // first byte past guest memory
                              // Data buffer outside guest memory.
    header(&d, types::IN, 0);
    d.submit(&[
        Desc {
            addr: HDR,
            len: 16,
            flags: 0,
            next: 0,
        },
        Desc {
            addr: beyond,
            len: 512,
            flags: F_WRITE,
            next: 0,
        },
        Desc {
            addr: STATUS,
            len: 1,
            flags: F_WRITE,
            next: 0,
        },
    ]);
    let used = run(&mut d);
    assert_eq!(used.len(), 1, "the chain is returned, not lost");
    // A huge length that wraps the address space.
    d.submit(&[
        Desc {
            addr: HDR,
            len: 16,
            flags: 0,
            next: 0,
        },
        Desc {
            addr: BUF,
            len: u32::MAX,
            flags: F_WRITE,
            next: 0,
        },
        Desc {
            addr: STATUS,
            len: 1,
            flags: F_WRITE,
            next: 0,
        },
    ]);
    assert_eq!(run(&mut d).len(), 1);
    // Header in a device-writable descriptor (wrong direction).
    header(&d, types::IN, 0);
    d.submit(&[
        Desc {
            addr: HDR,
            len: 16,
            flags: F_WRITE,
            next: 0,
        },
        Desc {
            addr: STATUS,
            len: 1,
            flags: F_WRITE,
            next: 0,
        },
    ]);
    let used = run(&mut d);
    assert_eq!(used.len(), 1);
    assert_eq!(status_byte(&d), status::IOERR, "no readable header: IOERR");
    // Status descriptor read-only: nothing can be reported, nothing written.
    header(&d, types::IN, 0);
    d.submit(&[
        Desc {
            addr: HDR,
            len: 16,
            flags: 0,
            next: 0,
        },
        Desc {
            addr: STATUS,
            len: 1,
            flags: 0,
            next: 0,
        },
    ]);
    assert_eq!(run(&mut d)[0].1, 0);
    // A descriptor loop: 40 -> 41 -> 40.
    d.submit_raw(
        40,
        &[
            Desc {
                addr: HDR,
                len: 16,
                flags: F_NEXT,
                next: 41,
            },
            Desc {
                addr: BUF,
                len: 512,
                flags: F_NEXT | F_WRITE,
                next: 40,
            },
        ],
        40,
    );
    let used = run(&mut d);
    assert!(used.len() <= 1, "the loop ends");
    // Next pointing outside the table.
    d.submit_raw(
        50,
        &[Desc {
            addr: HDR,
            len: 16,
            flags: F_NEXT,
            next: 999,
        }],
        50,
    );
    let _ = run(&mut d);
    // After all that, a good request still works.
    let (_, used) = std_request(&mut d, types::IN, 5, 512, true);
    assert_eq!(used.last().unwrap().1, 513);
    assert_eq!(status_byte(&d), status::OK);
    assert!(d.peek(BUF, 512).iter().all(|b| *b == 5));
}

#[test]
fn rings_outside_guest_memory_refuse_activation() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(4096).unwrap();
    let mut d = Driver::new(Block::new(f.path(), false, "x").unwrap(), 64);
    let st = d.init_with(0x1000, 0x3000, 1 << 40);
    assert_eq!(
        st & dev_status::NEEDS_RESET,
        dev_status::NEEDS_RESET,
        "status {st:#x}"
    );
    assert!(!d.device.lock().unwrap().is_activated());
    // A reset brings it back.
    let st = d.init();
    assert_eq!(st & dev_status::NEEDS_RESET, 0);
    assert!(d.device.lock().unwrap().is_activated());
}

#[test]
fn queue_registers_are_ignored_after_driver_ok() {
    let (_f, mut d) = disk(false);
    d.write(reg::QUEUE_DESC_LOW, 0xdead_0000);
    let (_, used) = std_request(&mut d, types::IN, 2, 512, true);
    assert_eq!(used.len(), 1, "the queue still uses the original table");
    assert_eq!(status_byte(&d), status::OK);
}
