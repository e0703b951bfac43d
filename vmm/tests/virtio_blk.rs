//! virtio-blk through the virtio-mmio transport, driven by the simulated guest driver:
//! every request type, read-only disks, malformed requests that must fail alone, and
//! slots whose disk is attached and detached while the queue runs.

mod common;

use common::driver::{Desc, Driver, DATA, F_NEXT, F_WRITE};
use ember_vmm::devices::virtio::block::request::{status, types};
use ember_vmm::devices::virtio::block::{Block, BlockSlot};
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
    let head = d.submit(&std_chain(data_len, data_write));
    (head, run(d))
}

/// The usual request chain: header, a data buffer (when `data_len > 0`; device-writable
/// when `data_write`) and the status byte.
fn std_chain(data_len: u32, data_write: bool) -> Vec<Desc> {
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
    chain
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

// ---- Slots: empty devices whose backing is attached and detached while the VM runs. ----

const SLOT_ADDR: u64 = 0xd000_3000;

/// An initialised driver of an empty slot and the slot's handle.
fn slot() -> (Driver<Block>, BlockSlot) {
    let mut d = Driver::new(Block::slot("ember-slot0").unwrap(), 64);
    let st = d.init();
    assert_ne!(st & dev_status::DRIVER_OK, 0);
    let handle = BlockSlot::new(0, SLOT_ADDR, d.device.clone(), d.interrupt.clone()).unwrap();
    (d, handle)
}

/// A file of `sectors` sectors, every byte `fill`.
fn image(sectors: u64, fill: u8) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![fill; (sectors * 512) as usize]).unwrap();
    f.flush().unwrap();
    f
}

fn capacity(d: &mut Driver<Block>) -> u64 {
    // Linux reads the le64 as two 32-bit halves.
    let mut lo = [0u8; 4];
    let mut hi = [0u8; 4];
    ember_vmm::devices::bus::BusDevice::read(&mut d.transport, reg::CONFIG, &mut lo);
    ember_vmm::devices::bus::BusDevice::read(&mut d.transport, reg::CONFIG + 4, &mut hi);
    u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32)
}

/// Drain the irqfd and acknowledge every InterruptStatus bit.
fn clear_interrupts(d: &mut Driver<Block>) {
    let _ = d.irq.read();
    let st = d.read(reg::INTERRUPT_STATUS);
    d.write(reg::INTERRUPT_ACK, st);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn empty_slot_has_capacity_zero_and_fails_reads_and_writes() {
    let (mut d, handle) = slot();
    assert_eq!(capacity(&mut d), 0);
    assert_eq!(handle.attachment(), None);
    assert_eq!(handle.mmio_addr(), SLOT_ADDR);
    assert_eq!(
        d.device_features() & (1 << 5),
        0,
        "a slot never offers RO: it cannot be renegotiated after boot"
    );
    std_request(&mut d, types::IN, 0, 512, true);
    assert_eq!(status_byte(&d), status::IOERR, "read of an empty slot");
    std_request(&mut d, types::IN, 0, 0, true);
    assert_eq!(
        status_byte(&d),
        status::IOERR,
        "even a zero-length read of an empty slot"
    );
    d.poke(BUF, &[0x11; 512]);
    std_request(&mut d, types::OUT, 0, 512, false);
    assert_eq!(status_byte(&d), status::IOERR, "write to an empty slot");
    std_request(&mut d, types::FLUSH, 0, 0, false);
    assert_eq!(status_byte(&d), status::OK, "nothing to flush");
    let (_, used) = std_request(&mut d, types::GET_ID, 0, 20, true);
    assert_eq!(status_byte(&d), status::OK, "GET_ID works on an empty slot");
    assert_eq!(used[0].1, 21);
    assert_eq!(&d.peek(BUF, 11), b"ember-slot0");
}

#[test]
fn attach_raises_the_config_interrupt_and_serves_the_file() {
    let (mut d, handle) = slot();
    clear_interrupts(&mut d);
    let generation = d.read(reg::CONFIG_GENERATION);
    let f = {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for s in 0..DISK_SECTORS {
            f.write_all(&[s as u8; 512]).unwrap();
        }
        // A tail shorter than a sector is not part of the capacity.
        f.write_all(&[0xff; 100]).unwrap();
        f.flush().unwrap();
        f
    };
    let a = handle.attach(f.path(), false).unwrap();
    assert_eq!(a.path, f.path());
    assert_eq!((a.capacity, a.read_only), (DISK_SECTORS, false));
    assert_eq!(handle.attachment(), Some(a));
    assert!(d.irq.read().unwrap() >= 1, "the IRQ was raised");
    assert_eq!(
        d.read(reg::INTERRUPT_STATUS) & 2,
        2,
        "InterruptStatus has the configuration-change bit"
    );
    assert_eq!(
        d.read(reg::INTERRUPT_STATUS) & 1,
        0,
        "and not the used-ring bit"
    );
    assert_ne!(
        d.read(reg::CONFIG_GENERATION),
        generation,
        "the config generation changed"
    );
    assert_eq!(capacity(&mut d), DISK_SECTORS);
    d.write(reg::INTERRUPT_ACK, 2);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);

    let (head, used) = std_request(&mut d, types::IN, 3, 1024, true);
    assert_eq!(used, vec![(u32::from(head), 1024 + 1)]);
    assert_eq!(status_byte(&d), status::OK);
    let data = d.peek(BUF, 1024);
    assert!(data[..512].iter().all(|b| *b == 3) && data[512..].iter().all(|b| *b == 4));
    // Writable: a write reaches the file.
    d.poke(BUF, &[0xab; 512]);
    std_request(&mut d, types::OUT, 9, 512, false);
    assert_eq!(status_byte(&d), status::OK);
    assert!(std::fs::read(f.path()).unwrap()[9 * 512..10 * 512]
        .iter()
        .all(|b| *b == 0xab));
    // Past the new end still fails.
    std_request(&mut d, types::IN, DISK_SECTORS, 512, true);
    assert_eq!(status_byte(&d), status::IOERR);
}

#[test]
fn read_only_attachment_rejects_writes_with_ioerr() {
    let (mut d, handle) = slot();
    let f = image(8, 0x5a);
    let a = handle.attach(f.path(), true).unwrap();
    assert!(a.read_only);
    assert_eq!(
        d.device_features() & (1 << 5),
        0,
        "features do not change after negotiation"
    );
    d.poke(BUF, &[0xee; 512]);
    std_request(&mut d, types::OUT, 1, 512, false);
    assert_eq!(
        status_byte(&d),
        status::IOERR,
        "write to a read-only attachment"
    );
    assert!(
        std::fs::read(f.path()).unwrap().iter().all(|b| *b == 0x5a),
        "file unchanged"
    );
    std_request(&mut d, types::IN, 1, 512, true);
    assert_eq!(status_byte(&d), status::OK, "reads work");
    assert!(d.peek(BUF, 512).iter().all(|b| *b == 0x5a));
    std_request(&mut d, types::FLUSH, 0, 0, false);
    assert_eq!(status_byte(&d), status::OK);
}

#[test]
fn detach_empties_the_slot_again() {
    let (mut d, handle) = slot();
    let f = image(16, 7);
    handle.attach(f.path(), false).unwrap();
    assert_eq!(capacity(&mut d), 16);
    clear_interrupts(&mut d);
    let generation = d.read(reg::CONFIG_GENERATION);
    let old = handle.detach().expect("something was attached");
    assert_eq!((old.path.as_path(), old.capacity), (f.path(), 16));
    assert_eq!(capacity(&mut d), 0);
    assert_eq!(d.read(reg::INTERRUPT_STATUS) & 2, 2, "config change raised");
    assert!(d.irq.read().unwrap() >= 1);
    assert_ne!(d.read(reg::CONFIG_GENERATION), generation);
    assert_eq!(handle.attachment(), None);
    std_request(&mut d, types::IN, 0, 512, true);
    assert_eq!(status_byte(&d), status::IOERR, "reads fail once detached");

    // Detaching an empty slot changes nothing and raises nothing.
    clear_interrupts(&mut d);
    let generation = d.read(reg::CONFIG_GENERATION);
    assert_eq!(handle.detach(), None);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
    assert_eq!(d.read(reg::CONFIG_GENERATION), generation);

    // The slot can be reused for another file.
    let g = image(4, 9);
    handle.attach(g.path(), false).unwrap();
    assert_eq!(capacity(&mut d), 4);
    std_request(&mut d, types::IN, 3, 512, true);
    assert_eq!(status_byte(&d), status::OK);
    assert!(d.peek(BUF, 512).iter().all(|b| *b == 9));
}

#[test]
fn failed_attach_names_the_path_and_leaves_the_slot_unchanged() {
    let (mut d, handle) = slot();
    clear_interrupts(&mut d);
    let generation = d.read(reg::CONFIG_GENERATION);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.img");
    let e = handle.attach(&missing, false).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert_eq!(handle.attachment(), None);
    assert_eq!(capacity(&mut d), 0);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0, "no interrupt");
    assert_eq!(d.read(reg::CONFIG_GENERATION), generation);
    // A directory is not a disk.
    let e = handle.attach(dir.path(), true).unwrap_err().to_string();
    assert!(
        e.contains("neither a regular file nor a block device"),
        "{e}"
    );
    assert_eq!(handle.attachment(), None);

    // An occupied slot keeps its disk.
    let f = image(2, 1);
    let g = image(3, 2);
    handle.attach(f.path(), false).unwrap();
    clear_interrupts(&mut d);
    let e = handle.attach(g.path(), false).unwrap_err().to_string();
    assert!(
        e.contains("already holds") && e.contains(&f.path().display().to_string()),
        "{e}"
    );
    assert_eq!(handle.attachment().unwrap().path, f.path());
    assert_eq!(capacity(&mut d), 2);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn a_fixed_disk_is_not_a_slot() {
    let (_f, d) = disk(false);
    let e = BlockSlot::new(2, SLOT_ADDR, d.device.clone(), d.interrupt.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a slot"), "{e}");
}

#[test]
fn attach_and_detach_race_the_event_loop_without_mixing_data() {
    use ember_vmm::event_loop::{EventLoop, Subscriber};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const SECTORS: u64 = 256;
    const READ_LEN: u32 = 64 * 1024;
    let (mut d, handle) = slot();
    let a = image(SECTORS, 0xaa);
    let b = image(SECTORS, 0xbb);
    // The real event-loop thread processes the queue, as in a running VM, confined by
    // its seccomp filter.
    let subscriber: Subscriber = d.device.clone();
    let filter = ember_vmm::seccomp::Filter::new(ember_vmm::seccomp::ThreadKind::Devices).unwrap();
    let event_loop = EventLoop::start(vec![subscriber], Some(filter)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (handle, done) = (handle.clone(), done.clone());
        let (a, b) = (a.path().to_path_buf(), b.path().to_path_buf());
        std::thread::spawn(move || {
            let mut cycles = 0u32;
            while !done.load(Ordering::SeqCst) {
                for p in [&a, &b] {
                    handle.attach(p, cycles.is_multiple_of(2)).unwrap();
                    std::thread::yield_now();
                    assert!(handle.detach().is_some());
                }
                cycles += 1;
            }
            cycles
        })
    };

    let (mut ok_a, mut ok_b, mut ioerr) = (0u32, 0u32, 0u32);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) || ok_a == 0 || ok_b == 0 || ioerr == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no mix of outcomes after 30 s: {ok_a} A, {ok_b} B, {ioerr} IOERR"
        );
        d.poke(BUF, &vec![0u8; READ_LEN as usize]);
        header(
            &d,
            types::IN,
            (ok_a + ok_b + ioerr) as u64 % (SECTORS - 128),
        );
        let head = d.submit(&std_chain(READ_LEN, true));
        d.kick(); // the ioeventfd the event loop watches
        let used = loop {
            let used = d.used();
            if !used.is_empty() {
                break used;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the event loop answered no request"
            );
            std::thread::yield_now();
        };
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, u32::from(head));
        match status_byte(&d) {
            status::OK => {
                assert_eq!(used[0].1, READ_LEN + 1);
                let data = d.peek(BUF, READ_LEN as usize);
                let first = data[0];
                assert!(
                    data.iter().all(|x| *x == first),
                    "one read saw two disks (or a partial read)"
                );
                match first {
                    0xaa => ok_a += 1,
                    0xbb => ok_b += 1,
                    other => panic!("read returned {other:#x}, from neither disk"),
                }
            }
            status::IOERR => {
                assert_eq!(used[0].1, 1, "a failed read returns only the status");
                ioerr += 1
            }
            other => panic!("unexpected status {other}"),
        }
    }
    done.store(true, Ordering::SeqCst);
    let cycles = swapper.join().expect("the swapper did not panic");
    event_loop.stop();
    assert!(cycles > 0);
    eprintln!("{ok_a} reads of A, {ok_b} of B, {ioerr} IOERR over {cycles} swap cycles");
}

// Rate limiting: the device runs on a thread confined by the device seccomp filter (the
// limiter's timerfd is armed there), with the host's clock and the limiter's real timer.

/// A disk whose device has `limits`, on a confined event loop.
fn limited_disk(
    limits: &str,
) -> (
    tempfile::NamedTempFile,
    Driver<Block>,
    common::confined::ConfinedLoop,
) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..DISK_SECTORS {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    f.flush().unwrap();
    let limits: ember_vmm::config::RateLimitConfig = limits.parse().unwrap();
    let limiter = ember_vmm::rate_limiter::RateLimiter::new(&limits).unwrap();
    assert_eq!(limiter.is_some(), !limits.is_unlimited());
    let block = Block::new(f.path(), false, "ember-limited")
        .unwrap()
        .with_rate_limiter(limiter);
    let mut d = Driver::new(block, 64);
    assert_ne!(d.init() & dev_status::DRIVER_OK, 0);
    let em = common::confined::ConfinedLoop::new(vec![d.device.clone()]);
    (f, d, em)
}

/// Queue `n` reads of `len` bytes of sector `i` (each with its own buffer and status byte)
/// and kick once.
fn queue_reads(d: &mut Driver<Block>, n: u64, len: u32) {
    for i in 0..n {
        let hdr = DATA + 0x100 * i;
        let mut h = Vec::new();
        h.extend(types::IN.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(i.to_le_bytes());
        d.poke(hdr, &h);
        d.poke(hdr + 0x80, &[0xff]);
        d.submit(&[
            Desc {
                addr: hdr,
                len: 16,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: DATA + 0x10_0000 * (i + 1),
                len,
                flags: F_WRITE,
                next: 0,
            },
            Desc {
                addr: hdr + 0x80,
                len: 1,
                flags: F_WRITE,
                next: 0,
            },
        ]);
    }
    d.kick();
}

/// Pump the confined loop until `want` requests completed in all (or 20 s passed); returns
/// the used entries.
fn complete(
    d: &mut Driver<Block>,
    em: &common::confined::ConfinedLoop,
    mut used: Vec<(u32, u32)>,
    want: usize,
) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while used.len() < want && Instant::now() < deadline {
        em.run(100);
        used.extend(d.used());
    }
    used
}

fn next_avail(d: &Driver<Block>) -> u16 {
    use virtio_queue::QueueT;
    d.device.lock().unwrap().queues()[0].next_avail()
}

use std::time::{Duration, Instant};

#[test]
fn a_bandwidth_limit_completes_the_budget_and_leaves_the_rest_for_the_timer() {
    // 4 KiB per second: one 4 KiB read at once, the next two a second apart.
    let (_f, mut d, em) = limited_disk("bandwidth=4096/1000");
    let t0 = Instant::now();
    queue_reads(&mut d, 3, 4096);
    em.pump(10, 1);
    let used = d.used();
    assert_eq!(used.len(), 1, "only the budget is completed: {used:?}");
    assert_eq!(used[0].1, 4096 + 1);
    assert_eq!(
        next_avail(&d),
        1,
        "the refused requests are still available, not taken and not failed"
    );
    let used = complete(&mut d, &em, used, 3);
    let elapsed = t0.elapsed();
    assert_eq!(used.len(), 3, "the timer resumed the queue: {used:?}");
    assert!(
        elapsed >= Duration::from_millis(1990),
        "two more 4 KiB reads at 4 KiB/s took only {elapsed:?}"
    );
    for i in 0..3u64 {
        assert_eq!(d.peek(DATA + 0x100 * i + 0x80, 1)[0], status::OK);
        let data = d.peek(DATA + 0x10_0000 * (i + 1), 4096);
        assert!(data[..512].iter().all(|b| *b == i as u8), "read {i}");
    }
}

#[test]
fn an_ops_limit_counts_requests() {
    let (_f, mut d, em) = limited_disk("ops=2/500");
    let t0 = Instant::now();
    queue_reads(&mut d, 4, 512);
    em.pump(10, 1);
    let used = d.used();
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(next_avail(&d), 2);
    let used = complete(&mut d, &em, used, 4);
    assert_eq!(used.len(), 4);
    assert!(
        t0.elapsed() >= Duration::from_millis(490),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn a_request_larger_than_the_bucket_still_completes() {
    // A 2 KiB bucket and 8 KiB reads: each goes through once the bucket is full, and the
    // debt it leaves (6 KiB, 3 refills of 250 ms) delays the next one.
    let (_f, mut d, em) = limited_disk("bandwidth=2048/250");
    let t0 = Instant::now();
    queue_reads(&mut d, 2, 8192);
    em.pump(10, 1);
    let used = d.used();
    assert_eq!(used.len(), 1, "{used:?}");
    let used = complete(&mut d, &em, used, 2);
    assert_eq!(used.len(), 2, "no deadlock on an oversize request");
    assert!(
        t0.elapsed() >= Duration::from_millis(990),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn an_unlimited_device_completes_everything_at_once() {
    let (_f, mut d, em) = limited_disk("");
    queue_reads(&mut d, 16, 4096);
    em.pump(10, 1);
    assert_eq!(d.used().len(), 16);
    assert_eq!(next_avail(&d), 16);
}
