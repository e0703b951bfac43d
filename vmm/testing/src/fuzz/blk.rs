//! virtio-blk requests: well-shaped chains (header, data segments, status byte) with any
//! request type, sector, segment lengths and directions, against a read-write disk, a
//! read-only disk or a slot whose disk is attached and detached between requests.
//!
//! Invariants, checked against a model of the disk kept by the target: every request
//! completes with the status and used length the virtio spec gives it; a read returns
//! the disk's bytes; a write changes exactly its sectors, and nothing changes a read-only
//! disk; the device writes nothing outside the request's writable buffers.

use super::decode;
use crate::driver::{Desc, Driver, DATA, F_WRITE};
use arbitrary::Arbitrary;
use ember_vmm::devices::virtio::block::request::{status, types, ID_LEN, SECTOR_SIZE};
use ember_vmm::devices::virtio::block::{Block, BlockSlot};
use std::os::unix::fs::FileExt;

const MIB: u64 = 16;
/// Where a request's header, status byte and data go (fresh for each request).
const HEADER: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUFFERS: u64 = DATA + 0x1000;
/// Room for the data segments; the page after it is a sentinel.
const BUFFERS_LEN: u64 = 4 * 0x1_0000;
const DISK_ID: &str = "fuzz-disk";

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::In => types::IN,
            Kind::Out => types::OUT,
            Kind::Flush => types::FLUSH,
            Kind::GetId => types::GET_ID,
            Kind::Other(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sector {
    /// A sector of the disk (modulo its capacity + 2, to reach just past the end).
    Near(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Segment {
    /// In sectors, or bytes when `bytes` is set.
    len: u16,
    bytes: bool,
    /// Device-writable (the data of a read) or not (the data of a write).
    writable: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request {
        kind: Kind,
        sector: Sector,
        /// At most 4 are used.
        segments: Vec<Segment>,
        /// What the guest puts in the data it writes.
        fill: u8,
        /// The status descriptor is missing (the last data byte becomes the status).
        no_status: bool,
    },
    /// Attach the disk to the slot (slot devices only), read-only or not.
    Attach(bool),
    /// Detach the slot's disk.
    Detach,
}

#[derive(Arbitrary, Debug)]
enum Mode {
    ReadWrite,
    ReadOnly,
    Slot,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mode: Mode,
    /// Disk size in sectors (1..=64).
    sectors: u8,
    /// At most 12 are done.
    ops: Vec<Op>,
}

/// The disk as the target believes it is.
struct Model {
    bytes: Vec<u8>,
    attached: Option<bool>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(input) = decode::<Input>(data) else {
        return;
    };
    let sectors = u64::from(input.sectors % 64) + 1;
    let size = sectors * SECTOR_SIZE;
    let file = tempfile::NamedTempFile::new().expect("temp disk");
    let initial: Vec<u8> = (0..size).map(|i| (i * 7 + i / 512) as u8).collect();
    file.as_file()
        .write_all_at(&initial, 0)
        .expect("disk contents");
    let mut model = Model {
        bytes: initial,
        attached: None,
    };
    let block = match input.mode {
        Mode::ReadWrite | Mode::ReadOnly => {
            let ro = matches!(input.mode, Mode::ReadOnly);
            model.attached = Some(ro);
            Block::new(file.path(), ro, DISK_ID).expect("disk")
        }
        Mode::Slot => Block::slot(DISK_ID).expect("slot"),
    };
    let mut d = Driver::new(block, MIB);
    assert_eq!(d.init() & 0x40, 0, "device activated");
    let slot = matches!(input.mode, Mode::Slot).then(|| {
        BlockSlot::new(0, 0xd000_0000, d.device.clone(), d.interrupt.clone()).expect("slot")
    });

    for op in input.ops.iter().take(12) {
        match op {
            Op::Attach(ro) => {
                if let Some(slot) = &slot {
                    if slot.attach(file.path(), *ro).is_ok() {
                        model.attached = Some(*ro);
                    }
                }
            }
            Op::Detach => {
                if let Some(slot) = &slot {
                    slot.detach();
                    model.attached = None;
                }
            }
            Op::Request {
                kind,
                sector,
                segments,
                fill,
                no_status,
            } => request(
                &mut d, &mut model, *kind, *sector, segments, *fill, *no_status,
            ),
        }
        let mut on_disk = vec![0u8; model.bytes.len()];
        file.as_file()
            .read_exact_at(&mut on_disk, 0)
            .expect("read disk");
        assert!(
            on_disk == model.bytes,
            "the disk holds what the requests wrote, only that"
        );
        assert_eq!(
            std::fs::metadata(file.path()).expect("disk").len(),
            size,
            "the disk keeps its size"
        );
    }
}

fn request(
    d: &mut Driver<Block>,
    model: &mut Model,
    kind: Kind,
    sector: Sector,
    segments: &[Segment],
    fill: u8,
    no_status: bool,
) {
    let size = model.bytes.len() as u64;
    let sector = match sector {
        Sector::Near(n) => u64::from(n) % (size / SECTOR_SIZE + 2),
        Sector::Raw(s) => s,
    };
    let mut header = Vec::new();
    header.extend(kind.code().to_le_bytes());
    header.extend(0u32.to_le_bytes());
    header.extend(sector.to_le_bytes());
    d.poke(HEADER, &header);
    d.poke(STATUS, &[0xee]);
    // Segments laid out back to back with a one-byte gap the device must not write.
    d.poke(BUFFERS, &vec![fill; (BUFFERS_LEN + 0x1000) as usize]);
    let mut chain = vec![Desc {
        addr: HEADER,
        len: 16,
        flags: 0,
        next: 0,
    }];
    let mut at = BUFFERS;
    let mut segs = Vec::new();
    for s in segments.iter().take(4) {
        let len = if s.bytes {
            u64::from(s.len) % 0x1_0000
        } else {
            (u64::from(s.len) % 128) * SECTOR_SIZE
        }
        .min(0xffff);
        if len == 0 {
            continue;
        }
        chain.push(Desc {
            addr: at,
            len: len as u32,
            flags: if s.writable { F_WRITE } else { 0 },
            next: 0,
        });
        segs.push((at, len, s.writable));
        at += len + 1;
    }
    if !no_status {
        chain.push(Desc {
            addr: STATUS,
            len: 1,
            flags: F_WRITE,
            next: 0,
        });
    }
    let before = d.peek(BUFFERS, (BUFFERS_LEN + 0x1000) as usize);

    // The virtio spec's answer: readable bytes first (header then data), then the
    // writable ones; the last writable byte is the status. virtio-queue splits a chain
    // into its readable and writable parts whatever their order.
    let readable: u64 = 16 + segs.iter().filter(|s| !s.2).map(|s| s.1).sum::<u64>();
    let mut writable: Vec<(u64, u64)> = segs.iter().filter(|s| s.2).map(|s| (s.0, s.1)).collect();
    if !no_status {
        writable.push((STATUS, 1));
    }
    let total_writable: u64 = writable.iter().map(|w| w.1).sum();

    d.submit(&chain);
    d.kick();
    let done = d.device.lock().expect("device lock").process_queue();
    assert_eq!(done, 1, "one request, one completion");
    let used = d.used();
    assert_eq!(used.len(), 1);
    let used_len = u64::from(used[0].1);

    if total_writable == 0 {
        assert_eq!(used_len, 0, "no status byte: nothing written");
        assert!(d.peek(BUFFERS, before.len()) == before, "nothing written");
        return;
    }
    let data_writable = total_writable - 1;
    let data_len_in = readable - 16;
    let in_range = |len: u64| {
        len.is_multiple_of(SECTOR_SIZE)
            && sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|o| o.checked_add(len))
                .is_some_and(|end| end <= size)
    };
    // (status, data bytes written to the guest, bytes expected there)
    let (st, out): (u8, Vec<u8>) = match kind.code() {
        types::IN => match model.attached {
            Some(_) if in_range(data_writable) => {
                let off = (sector * SECTOR_SIZE) as usize;
                (
                    status::OK,
                    model.bytes[off..off + data_writable as usize].to_vec(),
                )
            }
            _ => (status::IOERR, Vec::new()),
        },
        types::OUT => match model.attached {
            Some(false) if in_range(data_len_in) => {
                let off = (sector * SECTOR_SIZE) as usize;
                model.bytes[off..off + data_len_in as usize].fill(fill);
                (status::OK, Vec::new())
            }
            _ => (status::IOERR, Vec::new()),
        },
        types::FLUSH => (status::OK, Vec::new()),
        types::GET_ID => {
            let n = (data_writable as usize).min(ID_LEN);
            let mut id = [0u8; ID_LEN];
            id[..DISK_ID.len()].copy_from_slice(DISK_ID.as_bytes());
            (status::OK, id[..n].to_vec())
        }
        _ => (status::UNSUPP, Vec::new()),
    };
    assert_eq!(
        used_len,
        out.len() as u64 + 1,
        "used length of a {kind:?} request"
    );
    // Where the guest finds the data and the status: the writable bytes in chain order.
    let mut got = Vec::new();
    for (addr, len) in &writable {
        got.extend(d.peek(*addr, *len as usize));
    }
    assert_eq!(got[got.len() - 1], st, "status of a {kind:?} request");
    assert!(got[..out.len()] == out[..], "data of a {kind:?} request");
    // Past the data, nothing written: the rest of the writable bytes and every byte that
    // is not writable keep their old value.
    let mut expected = before.clone();
    let mut left = out.len();
    for (addr, len) in &writable {
        if *addr == STATUS || left == 0 {
            continue;
        }
        let n = (*len as usize).min(left);
        let o = (addr - BUFFERS) as usize;
        expected[o..o + n].copy_from_slice(&d.peek(*addr, n));
        left -= n;
    }
    if no_status {
        // The status went into the last writable data byte.
        if let Some((addr, len)) = writable.last() {
            let o = (addr + len - 1 - BUFFERS) as usize;
            expected[o] = st;
        }
    }
    assert!(
        d.peek(BUFFERS, before.len()) == expected,
        "the device wrote only the data it returned and the status"
    );
}
