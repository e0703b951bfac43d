//! The guest's RX queue as the device lends it to its backend for one round: buffers are
//! popped and checked by the device and handed out one at a time ([`RxQueue::pop`]); the
//! backend returns each one filled ([`RxQueue::complete`]) or unused
//! ([`RxQueue::put_back`]). A backend may hold several at once (the muxer reads a batch of
//! buffers with one `readv`).
//!
//! Everything here is guest-controlled: a malformed chain (too short, read-only, outside
//! guest memory) is returned to the guest empty and never reaches the backend.

use super::backend::GuestPacket;
use super::defs::MAX_PKT_DATA;
use crate::memory::GuestMemory;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;

/// An RX buffer lent to the backend: write the packet through [`RxBuffer::pkt`], then
/// give it back with [`RxQueue::complete`] or [`RxQueue::put_back`].
#[must_use = "an RX buffer must go back through RxQueue::complete or RxQueue::put_back"]
pub struct RxBuffer<'a> {
    head: u16,
    seq: u64,
    /// The buffer: a header and a data area, both device-writable guest memory.
    pub pkt: GuestPacket<'a>,
}

impl RxBuffer<'_> {
    /// The head index of the buffer's descriptor chain.
    pub fn head(&self) -> u16 {
        self.head
    }
}

/// The RX queue, lent to the backend for one round.
pub struct RxQueue<'a> {
    mem: &'a GuestMemory,
    queue: &'a mut Queue,
    /// Buffers popped so far (each buffer's `seq` is its position in this count).
    popped: u64,
    /// The oldest pop that can still be undone: pops from here on are all still lent out,
    /// so the queue can step back over them. A used buffer moves it past itself.
    rewind_from: u64,
    /// Buffers lent out and not yet back: (seq, head).
    lent: Vec<(u64, u16)>,
    /// Used-ring entries added.
    used: usize,
    /// The guest had no buffer left when one was asked for.
    starved: bool,
}

impl<'a> RxQueue<'a> {
    /// Lend `queue` (the device's RX queue, in `mem`) for one round.
    pub(super) fn new(mem: &'a GuestMemory, queue: &'a mut Queue) -> Self {
        Self {
            mem,
            queue,
            popped: 0,
            rewind_from: 0,
            lent: Vec::new(),
            used: 0,
            starved: false,
        }
    }

    /// The next RX buffer the guest posted, checked. `None` when the guest has none left
    /// ([`RxQueue::starved`] then says so), or when the next one is malformed while other
    /// buffers are lent out: it stays first in line, to be returned empty on a later
    /// call, so the lent buffers can still go back unused. A malformed buffer with none
    /// lent out is returned to the guest empty at once, and the next one is tried.
    pub fn pop(&mut self) -> Option<RxBuffer<'a>> {
        loop {
            let Some(mut chain) = self.queue.pop_descriptor_chain(self.mem) else {
                self.starved = true;
                return None;
            };
            let head = chain.head_index();
            let seq = self.popped;
            self.popped += 1;
            match VsockPacket::from_rx_virtq_chain(self.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    self.lent.push((seq, head));
                    return Some(RxBuffer { head, seq, pkt });
                }
                Err(_) if self.rewind_from < seq => {
                    // Buffers before it may still go back: keep the ring's order.
                    self.queue.go_to_previous_position();
                    self.popped -= 1;
                    return None;
                }
                Err(e) => {
                    crate::guest_warn!("vsock: bad RX buffer {head}: {e}; returned empty");
                    self.add_used(seq, head, 0);
                }
            }
        }
    }

    /// Return `buf` to the guest with `len` bytes (header included) written.
    pub fn complete(&mut self, buf: RxBuffer<'a>, len: u32) {
        self.give_back(&buf);
        self.add_used(buf.seq, buf.head, len);
    }

    /// Give `buf` back unused. The buffer popped last goes back on the ring, first in line
    /// for the next packet (put a batch back newest first); any other one can no longer
    /// take its place in the ring and is returned to the guest empty.
    pub fn put_back(&mut self, buf: RxBuffer<'a>) {
        self.give_back(&buf);
        self.undo_or_return(buf.seq, buf.head);
    }

    /// Whether the guest had no buffer left when the backend asked for one.
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// How many used-ring entries were added so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// End the round: buffers the backend kept go back as [`RxQueue::put_back`] would
    /// take them (newest first). Returns how many used-ring entries were added.
    pub(super) fn finish(mut self) -> usize {
        while let Some((seq, head)) = self.lent.pop() {
            log::error!("vsock: backend kept RX buffer {head}; giving it back");
            self.undo_or_return(seq, head);
        }
        self.used
    }

    fn give_back(&mut self, buf: &RxBuffer<'a>) {
        self.lent.retain(|&(seq, _)| seq != buf.seq);
    }

    fn undo_or_return(&mut self, seq: u64, head: u16) {
        if seq + 1 == self.popped && seq >= self.rewind_from {
            self.queue.go_to_previous_position();
            self.popped -= 1;
        } else {
            self.add_used(seq, head, 0);
        }
    }

    fn add_used(&mut self, seq: u64, head: u16, len: u32) {
        self.rewind_from = self.rewind_from.max(seq + 1);
        if let Err(e) = self.queue.add_used(self.mem, head, len) {
            crate::guest_warn!("vsock: cannot return RX buffer {head}: {e}");
            return;
        }
        self.used += 1;
    }
}
