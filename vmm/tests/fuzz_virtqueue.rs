//! Property test of the virtqueue / virtio-blk request parser: arbitrary descriptor
//! tables, chains and headers written by a hostile guest never crash the VMM, never make
//! it write outside the buffers the guest marked writable, and every published chain is
//! either completed or the queue stops cleanly. Half the cases run against an empty slot
//! that gets its disk attached only for the final well-formed request.

mod common;

use common::driver::{Desc, Driver, DATA, F_NEXT, F_WRITE};
use ember_vmm::devices::virtio::block::{Block, BlockSlot};
use proptest::prelude::*;

fn arb_desc() -> impl Strategy<Value = Desc> {
    (
        prop_oneof![
            Just(DATA),
            Just(DATA + 0x1000),
            Just((64u64 << 20) - 8),
            Just(64u64 << 20),
            any::<u64>(),
            (0u64..(64 << 20)),
        ],
        prop_oneof![
            Just(16u32),
            Just(1),
            Just(512),
            Just(0),
            any::<u32>(),
            0u32..8192
        ],
        prop_oneof![
            Just(0u16),
            Just(F_WRITE),
            Just(F_NEXT),
            Just(F_NEXT | F_WRITE),
            any::<u16>()
        ],
        prop_oneof![0u16..64, any::<u16>()],
    )
        .prop_map(|(addr, len, flags, next)| Desc {
            addr,
            len,
            flags,
            next,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn hostile_chains_never_crash_the_device(
        descs in proptest::collection::vec(arb_desc(), 1..16),
        heads in proptest::collection::vec(0u16..16, 1..8),
        header in proptest::array::uniform16(any::<u8>()),
        empty_slot in any::<bool>(),
    ) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(32 * 512).unwrap();
        let block = if empty_slot {
            Block::slot("fuzz").unwrap()
        } else {
            Block::new(f.path(), false, "fuzz").unwrap()
        };
        let mut d = Driver::new(block, 64);
        d.init();
        d.poke(DATA, &header);
        // A sentinel page nothing may touch unless a descriptor names it writable.
        let sentinel = 0x20_0000u64;
        d.poke(sentinel, &[0x5a; 4096]);
        let names_sentinel = descs.iter().any(|x| {
            x.flags & F_WRITE != 0 && x.addr <= sentinel + 4096 && x.addr.saturating_add(u64::from(x.len)) > sentinel
        });
        d.submit_raw(0, &descs, heads[0]);
        for h in &heads[1..] {
            d.submit_raw(0, &[], *h);
        }
        d.kick();
        let done = d.device.lock().unwrap().process_queue();
        let used = d.used();
        prop_assert_eq!(done, used.len());
        prop_assert!(used.len() <= heads.len());
        for (id, _len) in &used {
            prop_assert!(*id < 64, "used id {} is a valid descriptor index", id);
        }
        if !names_sentinel {
            prop_assert!(d.peek(sentinel, 4096).iter().all(|b| *b == 0x5a), "wrote outside writable buffers");
        }
        // The device still serves a well-formed request afterwards.
        if empty_slot {
            BlockSlot::new(0, 0xd000_0000, d.device.clone(), d.interrupt.clone())
                .unwrap()
                .attach(f.path(), false)
                .unwrap();
        }
        let mut h = Vec::new();
        h.extend(0u32.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(1u64.to_le_bytes());
        d.poke(DATA + 0x3000, &h);
        d.submit_raw(20, &[
            Desc { addr: DATA + 0x3000, len: 16, flags: F_NEXT, next: 21 },
            Desc { addr: DATA + 0x4000, len: 512, flags: F_NEXT | F_WRITE, next: 22 },
            Desc { addr: DATA + 0x5000, len: 1, flags: F_WRITE, next: 0 },
        ], 20);
        d.kick();
        d.device.lock().unwrap().process_queue();
        let used = d.used();
        prop_assert!(used.iter().any(|(id, len)| *id == 20 && *len == 513), "{:?}", used);
        prop_assert_eq!(d.peek(DATA + 0x5000, 1)[0], 0);
    }
}
