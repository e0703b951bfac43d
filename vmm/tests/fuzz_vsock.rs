//! Property test of the vsock packet path: arbitrary headers and payloads from a hostile
//! guest never crash the device, and it still completes a host handshake afterwards.

mod common;

use common::vsock_guest::{Guest, Hdr, CID};
use proptest::prelude::*;
use std::io::{Read, Write};

fn arb_header() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(CID), any::<u64>()],
        prop_oneof![Just(2u64), any::<u64>()],
        any::<u32>(),
        prop_oneof![Just(5000u32), Just(1u32 << 30), any::<u32>()],
        prop_oneof![Just(0u32), Just(4u32), any::<u32>()],
        prop_oneof![Just(1u16), any::<u16>()],
        prop_oneof![1u16..=7, any::<u16>()],
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        // A header cut short (malformed) one time in four.
        prop_oneof![3 => Just(None), 1 => (0usize..44).prop_map(Some)],
    )
        .prop_map(|(sc, dc, sp, dp, len, ty, op, flags, ba, fc, short)| {
            let h = Hdr {
                src_cid: sc,
                dst_cid: dc,
                src_port: sp,
                dst_port: dp,
                len,
                type_: ty,
                op,
                flags,
                buf_alloc: ba,
                fwd_cnt: fc,
            };
            let mut b = h.bytes();
            if let Some(n) = short {
                b.truncate(n);
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn hostile_packets_never_break_the_device(
        packets in proptest::collection::vec((arb_header(), proptest::collection::vec(any::<u8>(), 0..64)), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _listener = std::os::unix::net::UnixListener::bind(format!("{}_5000", path.display())).unwrap();
        let mut g = Guest::new(&path, 16);
        for (hdr, data) in &packets {
            g.send_raw(hdr, data);
        }
        let replies = g.recv();
        for p in &replies {
            prop_assert_eq!(p.hdr.src_cid, 2);
            prop_assert_eq!(p.hdr.dst_cid, CID);
        }
        // A clean handshake still works.
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        c.write_all(b"CONNECT 77\n").unwrap();
        let req = g.recv().into_iter().find(|p| p.hdr.op == 1 && p.hdr.dst_port == 77);
        prop_assert!(req.is_some());
        let req = req.unwrap();
        g.send(Hdr::to_host(77, req.hdr.src_port, 2), &[]);
        let mut line = [0u8; 3];
        c.read_exact(&mut line).unwrap();
        prop_assert_eq!(&line, b"OK ");
    }
}
