//! vsock packets: any header (CIDs, ports, length, type, operation, flags, credit; cut
//! short or not) and payload on the TX queue, through the device into the muxer behind
//! it, which connects to host sockets, forwards data and answers; the device runs on a
//! thread under the VMM's device seccomp filter, as in the VMM.
//!
//! Invariants: every packet to the guest comes from the host CID to the guest's CID,
//! is a stream packet with a known operation and a length that matches its payload; the
//! muxer holds no more connections than the guest asked for; afterwards a host program
//! still connects to a guest port through the muxer's handshake.

use super::decode;
use crate::vsock_guest::{Guest, Hdr, CID, HDR};
use arbitrary::Arbitrary;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

/// The host port a listener is bound for.
const LISTENING: u32 = 5000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

impl Cid {
    fn get(self) -> u64 {
        match self {
            Cid::Guest => CID,
            Cid::Host => 2,
            Cid::Raw(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Port {
    /// A host port with a listener.
    Listening,
    /// A small port (few distinct values, so packets meet the same connection).
    Small(u8),
    Raw(u32),
}

impl Port {
    fn get(self) -> u32 {
        match self {
            Port::Listening => LISTENING,
            Port::Small(p) => 1000 + u32::from(p % 8),
            Port::Raw(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Packet {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: Port,
    dst_port: Port,
    /// `None`: the payload's length.
    len: Option<u32>,
    /// `None`: a stream socket.
    type_: Option<u16>,
    /// Operation: 1..=7 are the known ones (taken modulo 8 below 256).
    op: u16,
    flags: u32,
    buf_alloc: Option<u32>,
    fwd_cnt: u32,
    /// Cut the header to this many bytes.
    cut: Option<u8>,
    /// At most 256 bytes are sent.
    payload: Vec<u8>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(packets) = decode::<Vec<Packet>>(data) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{LISTENING}", path.display())).expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut g = Guest::with_poll_ms(&path, 16, 0);
    let mut requests = 0;
    let mut accepted = Vec::new();
    for p in packets.iter().take(16) {
        let payload = &p.payload[..p.payload.len().min(256)];
        // Mostly the operations 0..=7, now and then any value.
        let op = if p.op < 0x100 { p.op % 8 } else { p.op };
        let h = Hdr {
            src_cid: p.src_cid.get(),
            dst_cid: p.dst_cid.get(),
            src_port: p.src_port.get(),
            dst_port: p.dst_port.get(),
            len: p.len.unwrap_or(payload.len() as u32),
            type_: p.type_.unwrap_or(1),
            op,
            flags: p.flags,
            buf_alloc: p.buf_alloc.unwrap_or(64 << 10),
            fwd_cnt: p.fwd_cnt,
        };
        if op == 1 {
            requests += 1;
        }
        let mut bytes = h.bytes();
        if let Some(n) = p.cut {
            bytes.truncate(usize::from(n) % HDR);
        }
        g.send_raw(&bytes, payload);
        // Accept what the muxer connected, and say something on it: the reply path.
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"pong");
            accepted.push(s);
        }
        check(&g.recv());
        assert!(
            g.d.device.lock().expect("device lock").connection_count() <= requests,
            "no more connections than REQUEST packets"
        );
    }
    // A clean host-initiated handshake still works.
    let mut c = UnixStream::connect(&path).expect("connect to the muxer");
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"CONNECT 77\n").expect("handshake line");
    let mut req = None;
    for _ in 0..100 {
        let pkts = g.recv();
        check(&pkts);
        req = pkts
            .into_iter()
            .find(|p| p.hdr.op == 1 && p.hdr.dst_port == 77);
        if req.is_some() {
            break;
        }
    }
    let req = req.expect("the muxer asks the guest to accept port 77");
    g.send(Hdr::to_host(77, req.hdr.src_port, 2), &[]);
    let mut line = [0u8; 3];
    c.read_exact(&mut line).expect("handshake answer");
    assert_eq!(&line, b"OK ", "the muxer answers OK");
}

fn check(pkts: &[crate::vsock_guest::Pkt]) {
    for p in pkts {
        assert_eq!(p.hdr.src_cid, 2, "from the host CID: {p:?}");
        assert_eq!(p.hdr.dst_cid, CID, "to the guest: {p:?}");
        assert_eq!(p.hdr.type_, 1, "a stream packet: {p:?}");
        assert!((1..=7).contains(&p.hdr.op), "a known operation: {p:?}");
        assert_eq!(p.hdr.len as usize, p.data.len(), "length matches payload");
        if p.hdr.op != 5 {
            assert!(p.data.is_empty(), "only RW carries data: {p:?}");
        }
    }
}
