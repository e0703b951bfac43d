//! virtio-vsock with a hybrid Unix-socket backend (no vhost): the host reaches guest
//! ports through one Unix socket and `CONNECT <port>`, the guest reaches host ports
//! through `<path>_<port>` sockets. See [`muxer`] for the protocol and flow control.
//!
//! The device ([`Vsock`]) owns the virtqueues and checks every chain; what it carries goes
//! to and from a [`VsockBackend`] ([`backend`]), the [`muxer::Muxer`] in ember.

pub mod backend;
pub mod connection;
pub mod defs;
pub mod muxer;
pub mod rx;
#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod tests;

use super::{read_config_bytes, DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
pub use backend::VsockBackend;
use backend::FIRST_DEVICE_TOKEN;
use defs::*;
use event_manager::{EventOps, Events, MutEventSubscriber};
use muxer::Muxer;
use rx::RxQueue;
use std::path::Path;
use thiserror::Error;
use virtio_queue::QueueT;
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::EventSet;

/// Event-loop tokens of the three queue eventfds (the backend's are below them).
const TOKEN_QUEUE_BASE: u32 = FIRST_DEVICE_TOKEN;

/// Errors of creating a vsock device.
#[derive(Debug, Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved: use 3 or more")]
    ReservedCid(u64),
    /// The Unix socket cannot be created.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The vsock device, carrying packets between the guest's queues and `B` (ember's
/// hybrid Unix-socket [`Muxer`] unless said otherwise).
pub struct Vsock<B: VsockBackend = Muxer> {
    cid: u64,
    state: DeviceState,
    backend: B,
}

/// Refuse a `cid` no guest may have: 0-2 are reserved, and ember keeps guest CIDs within
/// 32 bits.
fn check_cid(cid: u64) -> Result<(), VsockError> {
    if cid < 3 || cid > u64::from(u32::MAX) {
        return Err(VsockError::ReservedCid(cid));
    }
    Ok(())
}

impl Vsock {
    /// A device for a guest with `cid`, whose host side listens on `path`.
    pub fn new(cid: u64, path: &Path) -> Result<Self, VsockError> {
        check_cid(cid)?;
        let muxer = Muxer::new(path, cid).map_err(|source| VsockError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        Self::with_backend(cid, muxer)
    }

    /// Open connections (for tests and diagnostics).
    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }
}

impl<B: VsockBackend> Vsock<B> {
    /// A device for a guest with `cid` whose packets go to and from `backend`.
    pub fn with_backend(cid: u64, backend: B) -> Result<Self, VsockError> {
        check_cid(cid)?;
        Ok(Self {
            cid,
            state: DeviceState::new(&[QUEUE_SIZE; 3]).map_err(VsockError::EventFd)?,
            backend,
        })
    }

    /// The guest CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Handle every packet the guest sent; returns how many chains were returned.
    fn process_tx(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        let queue = &mut self.state.queues[TXQ];
        let mut done = 0;
        while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => self.backend.send_pkt(&pkt),
                Err(e) => crate::guest_warn!("vsock: malformed TX packet {head}: {e}; dropped"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                crate::guest_warn!("vsock: cannot return TX buffer {head}: {e}");
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
            }
            done += 1;
        }
        done
    }

    /// Send what is owed to the guest and raise the interrupt for whatever queue moved.
    fn process_rx_and_notify(&mut self, tx_done: usize) {
        let Some(mem) = self.state.mem.as_ref() else {
            return;
        };
        // With nothing owed, no RX buffer is taken.
        let rx_done = if self.backend.has_pending_rx() {
            let mut rx = RxQueue::new(mem, &mut self.state.queues[RXQ]);
            self.backend.recv_pkts(&mut rx);
            rx.finish()
        } else {
            0
        };
        self.state.notify(&[(RXQ, rx_done), (TXQ, tx_done)]);
    }

    /// One round of work, as the event loop would do it on `token`: used by `process`
    /// and by tests that drive the device without an event loop thread.
    pub fn handle(&mut self, token: u32, set: EventSet, ops: &mut EventOps) {
        let mut tx_done = 0;
        if token >= TOKEN_QUEUE_BASE {
            let q = (token - TOKEN_QUEUE_BASE) as usize;
            if let Some(evt) = self.state.queue_events.get(q) {
                let _ = evt.read();
            }
            if self.is_activated() {
                match q {
                    RXQ => self.backend.rx_refilled(),
                    TXQ => tx_done = self.process_tx(),
                    _ => {} // the event queue carries nothing ember sends
                }
            }
        } else {
            self.backend.handle_event(token, set, ops);
        }
        if self.is_activated() {
            // Sending a packet may free the guest's TX credit and vice versa: loop until
            // neither side has anything more right now.
            loop {
                self.process_rx_and_notify(tx_done);
                tx_done = self.process_tx();
                if tx_done == 0 {
                    break;
                }
            }
        }
        self.backend.sync_watches(ops);
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // guest_cid: le64 at offset 0.
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

impl<B: VsockBackend> MutEventSubscriber for Vsock<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.handle(events.data(), events.event_set(), ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state
            .register_queue_events(ops, TOKEN_QUEUE_BASE, "vsock");
        self.backend.init(ops);
    }
}
