//! The device's queue handling against the scripted [`TestBackend`]: guest memory and split
//! virtqueues laid out as a guest driver does (virtio-queue's `MockSplitQueue` for the
//! rings), the device on a real event-manager loop, kicked through its queue eventfds.

use super::defs::{op, HOST_CID, RXQ, TXQ, TYPE_STREAM};
use super::rx::RxQueue;
use super::test_backend::{read_hdr, Hdr, TestBackend};
use super::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice, INT_VRING};
use crate::memory::GuestMemory;
use event_manager::{EventManager, SubscriberOps};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;
const QSIZE: u16 = 16;
/// Guest memory: 1 MiB from 0.
const MEM_SIZE: u64 = 0x10_0000;
/// Where each queue's rings are (RX, TX, event).
const RINGS: [u64; 3] = [0x0, 0x1000, 0x2000];
/// Packet buffers: one slot per chain, payloads at +0x100.
const BUF_BASE: u64 = 0x1_0000;
const BUF_SLOT: u64 = 0x2000;
const DATA_AT: u64 = 0x100;
const HDR: u32 = 44;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

type Dev = Arc<Mutex<Vsock<TestBackend>>>;

fn guest_memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A descriptor: guest address, length, device-writable.
#[derive(Clone, Copy)]
struct D(u64, u32, bool);

/// A stream packet header from guest port `src` to host port `dst`.
fn to_host(src: u32, dst: u32, op: u16) -> Hdr {
    Hdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Hdr::default()
    }
}

/// A stream packet header from host port `src` to guest port `dst`.
fn to_guest(src: u32, dst: u32, op: u16) -> Hdr {
    Hdr {
        src_cid: HOST_CID,
        dst_cid: CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 << 10,
        fwd_cnt: 99,
        ..Hdr::default()
    }
}

/// The guest's driver side and the device on its event loop.
struct Rig<'m> {
    mem: &'m GuestMemory,
    queues: Vec<MockSplitQueue<'m, GuestMemory>>,
    next_desc: [u16; 3],
    used_seen: [u16; 3],
    next_slot: u64,
    dev: Dev,
    em: EventManager<Dev>,
    irq: EventFd,
    interrupt: Arc<Interrupt>,
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemory) -> Self {
        let queues: Vec<_> = RINGS
            .iter()
            .map(|&a| MockSplitQueue::create(mem, GuestAddress(a), QSIZE))
            .collect();
        let mut dev = Vsock::with_backend(CID, TestBackend::default()).unwrap();
        for (i, q) in queues.iter().enumerate() {
            dev.state.queues[i] = q.create_queue::<Queue>().unwrap();
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        dev.activate(mem.clone(), interrupt.clone()).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        assert_eq!(dev.lock().unwrap().backend().inits, 1);
        Self {
            mem,
            queues,
            next_desc: [0; 3],
            used_seen: [0; 3],
            next_slot: BUF_BASE,
            dev,
            em,
            irq,
            interrupt,
        }
    }

    fn dev(&self) -> MutexGuard<'_, Vsock<TestBackend>> {
        self.dev.lock().unwrap()
    }

    /// A fresh buffer slot in guest memory.
    fn slot(&mut self) -> u64 {
        let a = self.next_slot;
        self.next_slot += BUF_SLOT;
        assert!(self.next_slot <= MEM_SIZE);
        a
    }

    /// Write `descs`, linked in order, into queue `q`'s table and make the chain available;
    /// returns its head.
    fn post(&mut self, q: usize, descs: &[D]) -> u16 {
        let head = self.next_desc[q];
        for (i, d) in descs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if d.2 { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let next = if last { 0 } else { (index + 1) % QSIZE };
            let desc = RawDescriptor::from(Descriptor::new(d.0, d.1, flags, next));
            self.queues[q].desc_table().store(index, desc).unwrap();
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        self.publish(q, head);
        head
    }

    /// Put `head` (any value) in queue `q`'s available ring.
    fn publish(&mut self, q: usize, head: u16) {
        let avail = self.queues[q].avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head.to_le());
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Send a packet on TX, header and payload in two descriptors (one when `data` is
    /// empty); returns the head.
    fn send(&mut self, hdr: Hdr, data: &[u8]) -> u16 {
        let a = self.slot();
        let hdr = Hdr {
            len: data.len() as u32,
            ..hdr
        };
        self.mem.write_slice(&hdr.bytes(), GuestAddress(a)).unwrap();
        self.mem
            .write_slice(data, GuestAddress(a + DATA_AT))
            .unwrap();
        let mut descs = vec![D(a, HDR, false)];
        if !data.is_empty() {
            descs.push(D(a + DATA_AT, data.len() as u32, false));
        }
        self.post(TXQ, &descs)
    }

    /// Post an RX buffer: a header descriptor and one of `room` bytes for data. Returns
    /// the head and the buffer's address (data at `DATA_AT` from it).
    fn post_rx(&mut self, room: u32) -> (u16, u64) {
        let a = self.slot();
        let head = self.post(RXQ, &[D(a, HDR, true), D(a + DATA_AT, room, true)]);
        (head, a)
    }

    /// The guest kicks queue `q`: one event-loop round.
    fn kick(&mut self, q: usize) {
        self.dev().state.queue_events[q].write(1).unwrap();
        assert_eq!(self.em.run_with_timeout(0).unwrap(), 1);
    }

    /// New entries in queue `q`'s used ring: (head, length written).
    fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let used = self.queues[q].used();
        let idx = used.idx().load();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let slot = usize::from(self.used_seen[q] % QSIZE);
            let e = used.ring().ref_at(slot).unwrap().load();
            out.push((e.id(), e.len()));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// Interrupts raised since the last call (acknowledged, as the driver does).
    fn interrupts(&mut self) -> u64 {
        let n = self.irq.read().unwrap_or(0); // EAGAIN: none
        if n > 0 {
            assert_ne!(
                self.interrupt.status() & INT_VRING,
                0,
                "a used-ring interrupt"
            );
        }
        self.interrupt.ack(INT_VRING);
        n
    }

    /// `len` bytes of guest memory at `addr`.
    fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn a_tx_packet_reaches_the_backend_with_its_header_and_payload() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let hdr = Hdr {
        flags: 3,
        buf_alloc: 4096,
        fwd_cnt: 17,
        ..to_host(1234, 5678, op::RW)
    };
    let two = r.send(hdr, b"hello");
    // Linux 6.2 and later put header and payload in one descriptor.
    let a = r.slot();
    let one_hdr = Hdr {
        len: 3,
        ..to_host(1235, 5679, op::RW)
    };
    r.mem
        .write_slice(&one_hdr.bytes(), GuestAddress(a))
        .unwrap();
    r.mem
        .write_slice(b"abc", GuestAddress(a + u64::from(HDR)))
        .unwrap();
    let one = r.post(TXQ, &[D(a, HDR + 3, false)]);
    let empty = r.send(to_host(1236, 5680, op::REQUEST), &[]);
    r.kick(TXQ);
    assert_eq!(
        r.dev().backend().sent,
        vec![
            (Hdr { len: 5, ..hdr }, b"hello".to_vec()),
            (one_hdr, b"abc".to_vec()),
            (to_host(1236, 5680, op::REQUEST), Vec::new()),
        ]
    );
    // TX buffers go back with nothing written.
    assert_eq!(
        r.used(TXQ),
        vec![(two.into(), 0), (one.into(), 0), (empty.into(), 0)]
    );
}

#[test]
fn an_owed_packet_is_written_into_an_rx_buffer_and_the_used_ring_has_its_length() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let (head, addr) = r.post_rx(4096);
    let hdr = to_guest(5678, 1234, op::RW);
    r.dev()
        .backend_mut()
        .owed
        .push_back((hdr, b"world".to_vec()));
    r.kick(RXQ);
    assert_eq!(r.used(RXQ), vec![(head.into(), HDR + 5)]);
    assert_eq!(read_hdr(&mem, GuestAddress(addr)), Hdr { len: 5, ..hdr });
    assert_eq!(r.peek(addr + DATA_AT, 5), b"world");
    assert!(r.dev().backend().owed.is_empty());
}

#[test]
fn with_nothing_owed_no_rx_buffer_is_taken() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let (first, _) = r.post_rx(4096);
    r.post_rx(4096);
    r.kick(RXQ);
    r.send(to_host(1, 2, op::CREDIT_UPDATE), &[]);
    r.kick(TXQ);
    assert!(r.used(RXQ).is_empty());
    assert_eq!(r.dev().backend().refills, 1);
    assert_eq!(
        r.dev().backend().rx_rounds,
        0,
        "the device does not even lend out the RX queue"
    );
    // The buffers are all still there, in order: the next packet takes the first.
    r.dev()
        .backend_mut()
        .owed
        .push_back((to_guest(2, 1, op::RST), Vec::new()));
    r.kick(RXQ);
    assert_eq!(r.used(RXQ), vec![(first.into(), HDR)]);
}

#[test]
fn a_packet_waits_for_an_rx_buffer_big_enough() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let (small, _) = r.post_rx(2);
    r.dev()
        .backend_mut()
        .owed
        .push_back((to_guest(7, 8, op::RW), b"four".to_vec()));
    r.kick(RXQ);
    assert!(
        r.used(RXQ).is_empty(),
        "the small buffer went back on the ring"
    );
    assert_eq!(r.dev().backend().owed.len(), 1);
    // The backend sends a header-only packet: the small buffer is still first in line.
    r.dev()
        .backend_mut()
        .owed
        .push_front((to_guest(7, 8, op::CREDIT_UPDATE), Vec::new()));
    r.kick(RXQ);
    assert_eq!(r.used(RXQ), vec![(small.into(), HDR)]);
}

#[test]
fn a_malformed_tx_chain_fails_alone_and_the_next_one_is_served() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let a = r.slot();
    let h = Hdr {
        len: 4,
        ..to_host(1, 2, op::RW)
    };
    r.mem.write_slice(&h.bytes(), GuestAddress(a)).unwrap();
    let malformed: Vec<Vec<D>> = vec![
        // The header descriptor is too short for a header.
        vec![D(a, HDR - 1, false), D(a + DATA_AT, 4, false)],
        // The header is in a device-writable descriptor.
        vec![D(a, HDR, true), D(a + DATA_AT, 4, false)],
        // The header lies outside guest memory, or runs past its end.
        vec![D(MEM_SIZE + 0x1000, HDR, false)],
        vec![D(MEM_SIZE - 10, HDR, false)],
        // The payload lies outside guest memory (its address wraps around).
        vec![D(a, HDR, false), D(u64::MAX - 1, 4, false)],
        // The payload is shorter than the header's length.
        vec![D(a, HDR, false), D(a + DATA_AT, 3, false)],
        // The header says 4 bytes follow, and nothing does.
        vec![D(a, HDR, false)],
        // The payload is device-writable.
        vec![D(a, HDR, false), D(a + DATA_AT, 4, true)],
    ];
    let bad: Vec<u16> = malformed.iter().map(|c| r.post(TXQ, c)).collect();
    let good = r.send(to_host(3, 4, op::RW), b"ok");
    r.kick(TXQ);
    assert_eq!(
        r.dev().backend().sent,
        vec![(
            Hdr {
                len: 2,
                ..to_host(3, 4, op::RW)
            },
            b"ok".to_vec()
        )],
        "only the well-formed packet reaches the backend"
    );
    let mut expected: Vec<(u32, u32)> = bad.iter().map(|&h| (h.into(), 0)).collect();
    expected.push((good.into(), 0));
    assert_eq!(r.used(TXQ), expected, "every chain goes back to the guest");
    assert!(r.dev().is_activated());
    // And the device goes on serving.
    let next = r.send(to_host(5, 6, op::SHUTDOWN), &[]);
    r.kick(TXQ);
    assert_eq!(r.used(TXQ), vec![(next.into(), 0)]);
    assert_eq!(r.dev().backend().sent.len(), 2);
}

#[test]
fn a_tx_head_index_beyond_the_queue_is_dropped_and_the_next_chain_is_served() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    r.publish(TXQ, QSIZE + 3);
    let good = r.send(to_host(3, 4, op::RW), b"ok");
    r.kick(TXQ);
    assert_eq!(r.dev().backend().sent.len(), 1);
    assert_eq!(r.used(TXQ), vec![(good.into(), 0)]);
}

#[test]
fn a_malformed_rx_chain_fails_alone_and_the_next_one_is_served() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let a = r.slot();
    let data = D(a + DATA_AT, 4096, true);
    let malformed: Vec<Vec<D>> = vec![
        // A read-only header descriptor.
        vec![D(a, HDR, false), data],
        // A header descriptor too short for a header.
        vec![D(a, HDR - 4, true), data],
        // A header outside guest memory.
        vec![D(MEM_SIZE + 0x1000, HDR, true), data],
        // A data area running past the end of guest memory.
        vec![D(a, HDR, true), D(MEM_SIZE - 16, 4096, true)],
        // A read-only data area.
        vec![D(a, HDR, true), D(a + DATA_AT, 4096, false)],
        // A header and no data area.
        vec![D(a, HDR, true)],
    ];
    let bad: Vec<u16> = malformed.iter().map(|c| r.post(RXQ, c)).collect();
    let (good, addr) = r.post_rx(4096);
    let hdr = to_guest(9, 10, op::RW);
    r.dev()
        .backend_mut()
        .owed
        .push_back((hdr, b"fine".to_vec()));
    r.kick(RXQ);
    let mut expected: Vec<(u32, u32)> = bad.iter().map(|&h| (h.into(), 0)).collect();
    expected.push((good.into(), HDR + 4));
    assert_eq!(r.used(RXQ), expected, "bad buffers go back empty");
    assert_eq!(read_hdr(&mem, GuestAddress(addr)), Hdr { len: 4, ..hdr });
    assert_eq!(r.peek(addr + DATA_AT, 4), b"fine");
    assert!(r.dev().backend().owed.is_empty());
}

#[test]
fn the_interrupt_is_raised_when_used_entries_are_added() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    r.post_rx(4096);
    r.kick(RXQ);
    assert_eq!(r.interrupts(), 0, "no used entry, no interrupt");
    r.send(to_host(1, 2, op::RW), b"x");
    r.kick(TXQ);
    assert_eq!(r.used(TXQ).len(), 1);
    assert_eq!(r.interrupts(), 1, "TX buffer returned");
    r.dev()
        .backend_mut()
        .owed
        .push_back((to_guest(2, 1, op::RW), b"y".to_vec()));
    r.kick(RXQ);
    assert_eq!(r.used(RXQ).len(), 1);
    assert_eq!(r.interrupts(), 1, "RX buffer filled");
    r.kick(RXQ);
    assert_eq!(r.interrupts(), 0, "nothing moved");
}

/// The lending contract the muxer's batched `readv` relies on.
#[test]
fn rx_buffers_given_back_unused_are_offered_again_in_order() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let (b0, _) = r.post_rx(4096);
    let (b1, _) = r.post_rx(4096);
    let (b2, _) = r.post_rx(4096);
    {
        let mut dev = r.dev();
        let mem = dev.state.mem.clone().unwrap();
        let mut rx = RxQueue::new(&mem, &mut dev.state.queues[RXQ]);
        let x0 = rx.pop().unwrap();
        let x1 = rx.pop().unwrap();
        let x2 = rx.pop().unwrap();
        assert_eq!((x0.head(), x1.head(), x2.head()), (b0, b1, b2));
        rx.complete(x0, HDR);
        // A batch's unused tail goes back newest first.
        rx.put_back(x2);
        rx.put_back(x1);
        let again = rx.pop().unwrap();
        assert_eq!(again.head(), b1);
        let x2 = rx.pop().unwrap();
        // An older buffer cannot take its place in the ring again: it goes back empty.
        rx.put_back(again);
        // The newest one still can.
        rx.put_back(x2);
        let kept = rx.pop().unwrap();
        assert_eq!(kept.head(), b2);
        assert!(rx.pop().is_none());
        assert!(rx.starved());
        // A buffer the backend keeps is given back at the end of the round.
        assert_eq!(rx.finish(), 2);
    }
    assert_eq!(r.used(RXQ), vec![(b0.into(), HDR), (b1.into(), 0)]);
    r.dev()
        .backend_mut()
        .owed
        .push_back((to_guest(1, 2, op::RST), Vec::new()));
    r.kick(RXQ);
    assert_eq!(r.used(RXQ), vec![(b2.into(), HDR)]);
}

#[test]
fn a_malformed_rx_chain_behind_lent_buffers_waits_until_they_are_back() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem);
    let (b0, _) = r.post_rx(4096);
    let a = r.slot();
    let bad = r.post(RXQ, &[D(a, HDR, false), D(a + DATA_AT, 64, true)]);
    let (b2, _) = r.post_rx(4096);
    {
        let mut dev = r.dev();
        let mem = dev.state.mem.clone().unwrap();
        let mut rx = RxQueue::new(&mem, &mut dev.state.queues[RXQ]);
        let x0 = rx.pop().unwrap();
        assert!(rx.pop().is_none(), "the batch ends before the bad buffer");
        assert!(!rx.starved());
        rx.put_back(x0);
        let x0 = rx.pop().unwrap();
        assert_eq!(x0.head(), b0);
        rx.complete(x0, HDR);
        // Nothing lent out now: the bad buffer goes back empty and the next one comes.
        let x2 = rx.pop().unwrap();
        assert_eq!(x2.head(), b2);
        rx.complete(x2, HDR);
        assert_eq!(rx.finish(), 3);
    }
    assert_eq!(
        r.used(RXQ),
        vec![(b0.into(), HDR), (bad.into(), 0), (b2.into(), HDR)]
    );
}

#[test]
fn a_reserved_cid_is_refused() {
    for cid in [0, 1, 2, u64::from(u32::MAX) + 1] {
        assert!(Vsock::with_backend(cid, TestBackend::default()).is_err());
    }
}
