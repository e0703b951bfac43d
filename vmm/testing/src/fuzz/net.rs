//! virtio-net frames: TX chains from the guest (any number of segments, lengths and
//! directions) and frames from the host into RX buffers of any shape. A datagram socket
//! pair stands in for the tap (`Tap::from_file`): the device's end carries one frame per
//! message as a tap does, and the target holds the other end.
//!
//! Invariants, checked against a model: a TX chain with 12..=MAX_FRAME readable bytes
//! comes out as exactly one frame (its virtio-net header zeroed), any other chain as
//! none, and every TX chain is returned; host frames reach RX buffers in order, each in
//! the next buffer when it fits (with a zeroed header and num_buffers = 1) and dropped
//! with a zero used length when not; the device writes nothing but the frame it returns.

use super::decode;
use crate::driver::{Desc, Driver, DATA, F_WRITE};
use arbitrary::Arbitrary;
use ember_vmm::devices::virtio::net::tap::{Tap, VNET_HDR_LEN};
use ember_vmm::devices::virtio::net::{Net, MAX_FRAME, RXQ, TXQ};
use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;

const MIB: u64 = 16;
/// TX chains are laid out here (one at a time).
const TX_AREA: u64 = DATA;
/// RX buffers get their own 256 KiB each from here.
const RX_AREA: u64 = 0x40_0000;
const RX_STRIDE: u64 = 0x4_0000;
const MAX_OPS: usize = 12;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Segment {
    len: u16,
    writable: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The guest sends a chain (at most 4 segments), its bytes made from `seed`.
    Tx { segments: Vec<Segment>, seed: u8 },
    /// The host sends a frame of `len % 70_000` bytes (a tap never gives more than
    /// MAX_FRAME; a datagram is cut there, as the device's read buffer is).
    Frame { len: u32, seed: u8 },
    /// The guest posts an RX buffer (at most 4 segments).
    Buffer { segments: Vec<Segment> },
}

/// An RX buffer the device has not returned yet.
struct Posted {
    head: u16,
    segments: Vec<(u64, u64, bool)>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(ops) = decode::<Vec<Op>>(data) else {
        return;
    };
    let (dev_end, host) = UnixDatagram::pair().expect("socket pair");
    dev_end.set_nonblocking(true).expect("nonblocking");
    host.set_nonblocking(true).expect("nonblocking");
    let tap = Tap::from_file(
        "fuzz0",
        std::fs::File::from(std::os::fd::OwnedFd::from(dev_end)),
    );
    let net = Net::new(tap, [2, 0, 0, 0, 0, 1]).expect("net device");
    let mut d = Driver::new(net, MIB);
    assert_eq!(d.init_queues(2) & 0x40, 0, "device activated");

    let mut frames: VecDeque<Vec<u8>> = VecDeque::new();
    let mut buffers: VecDeque<Posted> = VecDeque::new();
    let mut next_buffer = 0u64;
    let mut out = vec![0u8; 70_000];
    for op in ops.iter().take(MAX_OPS) {
        match op {
            Op::Tx { segments, seed } => {
                let mut chain = Vec::new();
                let mut readable: Vec<u8> = Vec::new();
                let mut at = TX_AREA;
                for s in segments.iter().take(4) {
                    let len = u64::from(s.len);
                    let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
                    d.poke(at, &bytes);
                    if !s.writable {
                        readable.extend(&bytes);
                    }
                    chain.push(Desc {
                        addr: at,
                        len: len as u32,
                        flags: if s.writable { F_WRITE } else { 0 },
                        next: 0,
                    });
                    at += len;
                }
                if chain.is_empty() {
                    continue;
                }
                d.submit_q(TXQ, &chain);
                let done = d.device.lock().expect("device lock").process_tx();
                assert_eq!(done, 1, "the TX chain is returned");
                let used = d.used_q(TXQ);
                assert_eq!(used.len(), 1);
                assert_eq!(used[0].1, 0, "a TX chain is returned with nothing written");
                let sent = host.recv(&mut out);
                if (VNET_HDR_LEN..=MAX_FRAME).contains(&readable.len()) {
                    let n = sent.expect("a well-formed TX frame comes out of the tap");
                    assert_eq!(n, readable.len(), "frame length");
                    assert!(out[..VNET_HDR_LEN].iter().all(|b| *b == 0), "header zeroed");
                    assert!(
                        out[VNET_HDR_LEN..n] == readable[VNET_HDR_LEN..],
                        "frame bytes"
                    );
                } else {
                    assert!(sent.is_err(), "a malformed TX chain sends nothing");
                }
                continue;
            }
            Op::Frame { len, seed } => {
                let len = (*len % 70_000) as usize;
                let frame: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(3) ^ seed).collect();
                if host.send(&frame).is_ok() && len >= VNET_HDR_LEN {
                    // The device reads at most MAX_FRAME bytes of a datagram.
                    frames.push_back(frame[..len.min(MAX_FRAME)].to_vec());
                }
            }
            Op::Buffer { segments } => {
                let base = RX_AREA + (next_buffer % 32) * RX_STRIDE;
                if buffers.len() >= 32 {
                    continue;
                }
                next_buffer += 1;
                d.poke(base, &vec![0xee; RX_STRIDE as usize]);
                let mut chain = Vec::new();
                let mut segs = Vec::new();
                let mut at = base;
                for s in segments.iter().take(4) {
                    let len = u64::from(s.len);
                    chain.push(Desc {
                        addr: at,
                        len: len as u32,
                        flags: if s.writable { F_WRITE } else { 0 },
                        next: 0,
                    });
                    segs.push((at, len, s.writable));
                    at += len + 1;
                }
                if chain.is_empty() {
                    continue;
                }
                let head = d.submit_q(RXQ, &chain);
                buffers.push_back(Posted {
                    head,
                    segments: segs,
                });
            }
        }
        // The device moves frames into buffers; check each returned buffer.
        d.device.lock().expect("device lock").process_rx();
        for (id, len) in d.used_q(RXQ) {
            let posted = buffers.pop_front().expect("a buffer the driver posted");
            assert_eq!(id, u32::from(posted.head), "RX buffers are used in order");
            let frame = frames.pop_front().expect("a frame the host sent");
            let room: u64 = posted.segments.iter().filter(|s| s.2).map(|s| s.1).sum();
            let mut expected = frame.clone();
            let fits = room >= frame.len() as u64;
            if fits {
                assert_eq!(
                    len as usize,
                    frame.len(),
                    "used length of a delivered frame"
                );
                expected[..VNET_HDR_LEN].fill(0);
                expected[10..12].copy_from_slice(&1u16.to_le_bytes());
            } else {
                assert_eq!(len, 0, "a frame too big for its buffer is dropped");
                expected.clear();
            }
            // The writable segments hold the frame, then untouched bytes; the rest of
            // the buffer's area is untouched.
            let mut left = &expected[..];
            for (addr, seg_len, writable) in &posted.segments {
                let got = d.peek(*addr, *seg_len as usize + 1);
                let n = if *writable {
                    left.len().min(*seg_len as usize)
                } else {
                    0
                };
                assert!(got[..n] == left[..n], "frame bytes in the RX buffer");
                assert!(
                    got[n..].iter().all(|b| *b == 0xee),
                    "nothing written past the frame"
                );
                left = &left[n..];
            }
        }
        assert!(
            frames.is_empty() || buffers.is_empty(),
            "frames wait only while no buffer is posted"
        );
    }
}
