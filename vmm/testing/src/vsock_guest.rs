//! A simulated guest vsock driver on top of the simulated virtio driver: it keeps the RX
//! queue stocked, parses received packets, and sends packets on the TX queue, while a
//! real event-manager loop (pumped by the test) runs the device and its host sockets.

use crate::confined::ConfinedLoop;
use crate::driver::{Desc, Driver, F_WRITE};
use ember_vmm::devices::virtio::vsock::defs::{RXQ, TXQ};
use ember_vmm::devices::virtio::vsock::Vsock;
use std::collections::HashMap;
use std::path::Path;

/// The guest's CID in these tests.
pub const CID: u64 = 3;
/// Size of the header.
pub const HDR: usize = 44;
const RX_BASE: u64 = 0x20_0000;
const RX_STRIDE: u64 = 0x2000;
/// Payload room of each RX buffer.
pub const RX_DATA: u32 = 4096;
const TX_BASE: u64 = 0x80_0000;
const TX_STRIDE: u64 = 0x1_1000;
const TX_SLOTS: u64 = 32;

/// A packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (1 = stream).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Flags.
    pub flags: u32,
    /// Receive buffer size.
    pub buf_alloc: u32,
    /// Bytes consumed.
    pub fwd_cnt: u32,
}

impl Hdr {
    /// A stream packet from guest `src_port` to host `dst_port`.
    pub fn to_host(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: CID,
            dst_cid: 2,
            src_port,
            dst_port,
            type_: 1,
            op,
            buf_alloc: 64 << 10,
            ..Default::default()
        }
    }

    /// Encode.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HDR);
        b.extend(self.src_cid.to_le_bytes());
        b.extend(self.dst_cid.to_le_bytes());
        b.extend(self.src_port.to_le_bytes());
        b.extend(self.dst_port.to_le_bytes());
        b.extend(self.len.to_le_bytes());
        b.extend(self.type_.to_le_bytes());
        b.extend(self.op.to_le_bytes());
        b.extend(self.flags.to_le_bytes());
        b.extend(self.buf_alloc.to_le_bytes());
        b.extend(self.fwd_cnt.to_le_bytes());
        b
    }

    /// Decode.
    pub fn parse(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// A received packet.
#[derive(Debug, Clone)]
pub struct Pkt {
    /// Header.
    pub hdr: Hdr,
    /// Payload.
    pub data: Vec<u8>,
}

/// The simulated guest.
pub struct Guest {
    /// The virtio driver.
    pub d: Driver<Vsock>,
    em: ConfinedLoop,
    rx_slots: HashMap<u32, u64>,
    tx_next: u64,
    poll_ms: i32,
}

impl Guest {
    /// A guest whose device listens on `path`, with `rx_buffers` RX buffers posted.
    pub fn new(path: &Path, rx_buffers: usize) -> Self {
        Self::with_poll_ms(path, rx_buffers, 1)
    }

    /// [`Guest::new`] whose idle polls wait `poll_ms` (see [`Guest::pump`]); 0 makes the
    /// fuzz target fast, relying on host sockets being ready at once.
    pub fn with_poll_ms(path: &Path, rx_buffers: usize, poll_ms: i32) -> Self {
        let dev = Vsock::new(CID, path).expect("vsock device");
        let mut d = Driver::new(dev, 64);
        let st = d.init_queues(3);
        assert_eq!(st & 0x40, 0, "device needs no reset");
        // The device runs on a thread confined by the device seccomp filter.
        let em = ConfinedLoop::new(vec![d.device.clone()]);
        let mut g = Self {
            d,
            em,
            rx_slots: HashMap::new(),
            tx_next: 0,
            poll_ms,
        };
        for i in 0..rx_buffers as u64 {
            g.post_rx(RX_BASE + i * RX_STRIDE);
        }
        g.d.kick_q(RXQ);
        g.pump();
        g
    }

    fn post_rx(&mut self, addr: u64) {
        let head = self.d.submit_q(
            RXQ,
            &[Desc {
                addr,
                len: HDR as u32 + RX_DATA,
                flags: F_WRITE,
                next: 0,
            }],
        );
        self.rx_slots.insert(u32::from(head), addr);
    }

    /// Run the event loop until it is idle.
    pub fn pump(&mut self) {
        // Everything (device, host sockets) is driven from this thread and the device
        // thread it commands, so readiness is immediate: two empty polls in a row (1 ms
        // each unless set otherwise) mean idle.
        self.em.pump(self.poll_ms, 2);
    }

    /// Run the event loop once (waiting up to `timeout_ms`); returns the events handled.
    pub fn step(&mut self, timeout_ms: i32) -> usize {
        self.em.run(timeout_ms)
    }

    /// Received packets (pumping first), re-posting their buffers.
    pub fn recv(&mut self) -> Vec<Pkt> {
        self.pump();
        let out = self.drain_rx();
        if !out.is_empty() {
            self.pump();
        }
        out
    }

    /// Packets already in the used ring, re-posting their buffers (no pumping).
    pub fn drain_rx(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        for (id, len) in self.d.used_q(RXQ) {
            let addr = self.rx_slots.remove(&id).expect("known RX buffer");
            let raw = self.d.peek(addr, len as usize);
            let hdr = Hdr::parse(&raw[..HDR]);
            assert_eq!(
                hdr.len as usize,
                len as usize - HDR,
                "used length = header + payload"
            );
            out.push(Pkt {
                hdr,
                data: raw[HDR..].to_vec(),
            });
            self.post_rx(addr);
        }
        if !out.is_empty() {
            self.d.kick_q(RXQ);
        }
        out
    }

    /// Return every used RX buffer to the device without copying payloads; returns the
    /// payload bytes they carried (what a guest draining its RX queue does).
    pub fn drain_rx_bytes(&mut self) -> usize {
        let mut bytes = 0;
        let used = self.d.used_q(RXQ);
        for (id, len) in &used {
            assert!(self.rx_slots.contains_key(id), "known RX buffer");
            bytes += *len as usize - HDR;
            // The descriptor is unchanged: only its head goes back on the ring.
            self.d.republish(RXQ, *id as u16);
        }
        if !used.is_empty() {
            self.d.kick_q(RXQ);
        }
        bytes
    }

    /// Send a packet (header and payload in two descriptors, as Linux does).
    pub fn send(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = data.len() as u32;
        self.send_raw(&hdr.bytes(), data);
    }

    /// Queue a packet and kick, without running the event loop (the next `step` sends it).
    pub fn queue_tx(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = data.len() as u32;
        self.submit_tx(&hdr.bytes(), data);
        let _ = self.d.used_q(TXQ);
    }

    fn submit_tx(&mut self, hdr: &[u8], data: &[u8]) {
        let base = TX_BASE + (self.tx_next % TX_SLOTS) * TX_STRIDE;
        self.tx_next += 1;
        self.d.poke(base, hdr);
        let mut chain = vec![Desc {
            addr: base,
            len: hdr.len() as u32,
            flags: 0,
            next: 0,
        }];
        if !data.is_empty() {
            self.d.poke(base + 0x100, data);
            chain.push(Desc {
                addr: base + 0x100,
                len: data.len() as u32,
                flags: 0,
                next: 0,
            });
        }
        self.d.submit_q(TXQ, &chain);
        self.d.kick_q(TXQ);
    }

    /// Send raw header bytes (possibly malformed) and payload.
    pub fn send_raw(&mut self, hdr: &[u8], data: &[u8]) {
        self.submit_tx(hdr, data);
        self.pump();
        let _ = self.d.used_q(TXQ);
    }
}
