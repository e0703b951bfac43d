//! Virtqueue chains: an arbitrary descriptor table and available ring (any address,
//! length, flags and next index; heads anywhere; loops, chains through the ring pages,
//! indirect flags) consumed by virtio-blk, the device whose request parser reads and
//! writes the most of a chain.
//!
//! Invariants: the device returns exactly the chains it reports, with valid ids; it
//! never writes into guest memory no writable descriptor names (a sentinel page and the
//! descriptor table and available ring); afterwards it still serves a well-formed read.

use super::{decode, Addr};
use crate::driver::{Desc, Driver, DATA, DESC_TABLE, F_NEXT, F_WRITE, QUEUE_SIZE, USED_RING};
use arbitrary::Arbitrary;
use ember_vmm::devices::virtio::block::{Block, BlockSlot};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 16;
/// Descriptor flag: the buffer is a table of descriptors.
const F_INDIRECT: u16 = 4;
const MEM: u64 = MIB << 20;
/// A page nothing may write unless a writable descriptor names it.
const SENTINEL: u64 = 0x20_0000;

#[derive(Arbitrary, Debug)]
struct RawDesc {
    addr: Addr,
    len: Len,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Header,
    Sector,
    Byte,
    Small(u16),
    Raw(u32),
}

impl Len {
    fn get(self) -> u32 {
        match self {
            Len::Header => 16,
            Len::Sector => 512,
            Len::Byte => 1,
            Len::Small(n) => u32::from(n),
            Len::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Written at descriptor indices 0.. (at most the queue size).
    descs: Vec<RawDesc>,
    /// Published on the available ring in order (at most 16).
    heads: Vec<u16>,
    /// The bytes at the data area (a request header when a chain starts there).
    header: [u8; 16],
    /// Start with an empty slot; its disk is attached only for the final request.
    empty_slot: bool,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(mut input) = decode::<Input>(data) else {
        return;
    };
    input.descs.truncate(usize::from(QUEUE_SIZE) - 8);
    input.heads.truncate(16);
    if input.descs.is_empty() || input.heads.is_empty() {
        return;
    }
    let mut descs: Vec<Desc> = input
        .descs
        .iter()
        .map(|d| Desc {
            addr: d.addr.resolve(DATA, MEM),
            len: d.len.get(),
            flags: d.flags,
            next: d.next,
        })
        .collect();

    let disk = tempfile::NamedTempFile::new().expect("temp disk");
    disk.as_file().set_len(32 * 512).expect("disk size");
    let block = if input.empty_slot {
        Block::slot("fuzz").expect("slot")
    } else {
        Block::new(disk.path(), false, "fuzz").expect("disk")
    };
    let mut d = Driver::new(block, MIB);
    assert_eq!(d.init() & 0x40, 0, "device activated");
    d.poke(DATA, &input.header);
    d.poke(SENTINEL, &[0x5a; 4096]);

    d.submit_raw(0, &descs, input.heads[0]);
    for h in &input.heads[1..] {
        d.submit_raw(0, &[], *h);
    }
    // A descriptor flagged INDIRECT names a table of more descriptors, in guest memory
    // (here, usually the data area): those count too.
    let indirect: Vec<Desc> = descs
        .iter()
        .filter(|x| x.flags & F_INDIRECT != 0)
        .flat_map(|x| {
            (0..u64::from(x.len) / 16)
                .take(usize::from(QUEUE_SIZE) * 4)
                .filter_map(|i| {
                    let at = x.addr.checked_add(16 * i)?;
                    let raw = d.mem.read_obj::<[u8; 16]>(GuestAddress(at)).ok()?;
                    Some(Desc {
                        addr: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
                        len: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
                        flags: u16::from_le_bytes([raw[12], raw[13]]),
                        next: u16::from_le_bytes([raw[14], raw[15]]),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // (A loop through an indirect table is bounded by the table, not the queue.)
    let bound_used_len = indirect.is_empty();
    descs.extend(indirect);
    // What the device must leave alone: the descriptor table and available ring as the
    // driver wrote them, unless a writable descriptor names them.
    let ring_before = d.peek(DESC_TABLE, 0x3000);
    let writable = |start: u64, len: u64| {
        descs.iter().any(|x| {
            x.flags & F_WRITE != 0
                && x.addr < start + len
                && x.addr.saturating_add(u64::from(x.len)) > start
        })
    };

    // A guest that hands the device its own rings as buffers gets garbage rings back:
    // only memory safety is checked then.
    let rings_writable = writable(DESC_TABLE, USED_RING + 0x1000 - DESC_TABLE);
    d.kick();
    let done = d.device.lock().expect("device lock").process_queue();
    if !writable(SENTINEL, 4096) {
        assert!(
            d.peek(SENTINEL, 4096).iter().all(|b| *b == 0x5a),
            "the device wrote a page no writable descriptor names"
        );
    }
    if rings_writable {
        return;
    }
    let used = d.used();
    assert_eq!(done, used.len(), "reported completions = used entries");
    assert!(used.len() <= input.heads.len(), "{used:?}");
    for (id, len) in &used {
        assert!(
            *id < u32::from(QUEUE_SIZE),
            "used id {id} is a descriptor index"
        );
        // Bounded by the chain's writable bytes: a chain visits at most QUEUE_SIZE
        // descriptors of the table (a loop is cut there).
        let max: u64 = descs
            .iter()
            .filter(|x| x.flags & F_WRITE != 0)
            .map(|x| u64::from(x.len))
            .sum::<u64>()
            * u64::from(QUEUE_SIZE);
        assert!(
            !bound_used_len || u64::from(*len) <= max,
            "used length {len} > every writable byte"
        );
    }
    assert!(
        d.peek(DESC_TABLE, 0x3000) == ring_before,
        "the device wrote its descriptor table or available ring"
    );

    // The device still serves a well-formed request.
    if input.empty_slot {
        BlockSlot::new(0, 0xd000_0000, d.device.clone(), d.interrupt.clone())
            .expect("slot")
            .attach(disk.path(), false)
            .expect("attach");
    }
    let mut h = Vec::new();
    h.extend(0u32.to_le_bytes());
    h.extend(0u32.to_le_bytes());
    h.extend(1u64.to_le_bytes());
    d.poke(DATA + 0x3_0000, &h);
    d.poke(DATA + 0x3_1000, &[0xff]);
    d.submit_raw(
        60,
        &[
            Desc {
                addr: DATA + 0x3_0000,
                len: 16,
                flags: F_NEXT,
                next: 61,
            },
            Desc {
                addr: DATA + 0x3_2000,
                len: 512,
                flags: F_NEXT | F_WRITE,
                next: 62,
            },
            Desc {
                addr: DATA + 0x3_1000,
                len: 1,
                flags: F_WRITE,
                next: 0,
            },
        ],
        60,
    );
    d.kick();
    d.device.lock().expect("device lock").process_queue();
    let used = d.used();
    assert!(
        used.iter().any(|(id, len)| *id == 60 && *len == 513),
        "a well-formed read after the hostile chains: {used:?}"
    );
    assert_eq!(d.peek(DATA + 0x3_1000, 1)[0], 0, "status OK");
}
