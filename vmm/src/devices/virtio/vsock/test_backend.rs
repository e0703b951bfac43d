//! A scripted [`VsockBackend`] for the device's unit tests: it records every packet the
//! guest sends, and hands the guest the packets a test gives it, one per RX buffer.

use super::backend::{GuestPacket, VsockBackend};
use super::rx::RxQueue;
use event_manager::EventOps;
use std::collections::VecDeque;
use virtio_vsock::packet::PKT_HEADER_SIZE;
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;

/// A packet header as plain fields (virtio 1.2 §5.10.6, little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// The header of `pkt`, as the device parsed it.
    pub fn of(pkt: &GuestPacket<'_>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Write every field into `pkt`'s header.
    pub fn write_to(&self, pkt: &mut GuestPacket<'_>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }

    /// The wire form, as a guest driver writes it.
    pub fn bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parse the wire form, as a guest driver reads it.
    pub fn parse(b: &[u8; PKT_HEADER_SIZE]) -> Self {
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

/// The scripted backend.
#[derive(Default)]
pub struct TestBackend {
    /// Packets the guest sent, in order: header and payload.
    pub sent: Vec<(Hdr, Vec<u8>)>,
    /// Packets owed to the guest, oldest first (`len` is set from the payload).
    pub owed: VecDeque<(Hdr, Vec<u8>)>,
    /// How often the device lent it the RX queue.
    pub rx_rounds: usize,
    /// How often the guest kicked the RX queue.
    pub refills: usize,
    /// How often it was registered with an event loop.
    pub inits: usize,
}

impl VsockBackend for TestBackend {
    fn init(&mut self, _ops: &mut EventOps) {
        self.inits += 1;
    }

    fn handle_event(&mut self, _token: u32, _set: EventSet, _ops: &mut EventOps) {}

    fn sync_watches(&mut self, _ops: &mut EventOps) {}

    fn send_pkt(&mut self, pkt: &GuestPacket<'_>) {
        let data = pkt.data_slice().map_or_else(Vec::new, |d| {
            let mut v = vec![0u8; d.len()];
            d.copy_to(&mut v[..]);
            v
        });
        self.sent.push((Hdr::of(pkt), data));
    }

    fn has_pending_rx(&self) -> bool {
        !self.owed.is_empty()
    }

    fn recv_pkts(&mut self, rx: &mut RxQueue<'_>) {
        self.rx_rounds += 1;
        while let Some((hdr, data)) = self.owed.front() {
            let Some(mut buf) = rx.pop() else {
                break;
            };
            let Some(room) = buf.pkt.data_slice().filter(|d| d.len() >= data.len()) else {
                // Too small for this packet: it waits for a bigger buffer.
                rx.put_back(buf);
                break;
            };
            if !data.is_empty() {
                room.subslice(0, data.len()).unwrap().copy_from(&data[..]);
            }
            let hdr = Hdr {
                len: data.len() as u32,
                ..*hdr
            };
            hdr.write_to(&mut buf.pkt);
            rx.complete(buf, (PKT_HEADER_SIZE + data.len()) as u32);
            self.owed.pop_front();
        }
    }

    fn rx_refilled(&mut self) {
        self.refills += 1;
    }
}

/// Read the header at `addr` of `mem`, as the guest driver does.
pub fn read_hdr(mem: &crate::memory::GuestMemory, addr: vm_memory::GuestAddress) -> Hdr {
    let mut raw = [0u8; PKT_HEADER_SIZE];
    mem.read_slice(&mut raw, addr).unwrap();
    Hdr::parse(&raw)
}
