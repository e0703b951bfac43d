//! What the vsock device needs of the host side of its connections: the [`VsockBackend`]
//! trait. The device owns the virtqueues (it pops, checks and returns every chain); a
//! backend only sees packets the device has already checked, and RX buffers through
//! [`RxQueue`]. ember's backend is the hybrid Unix-socket [`Muxer`](super::muxer::Muxer);
//! the device's unit tests use a scripted one.

use super::rx::RxQueue;
use event_manager::EventOps;
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::EventSet;

/// Event-loop tokens from this value up are the device's own (its queue eventfds); a
/// backend registers its fds with tokens below it.
pub const FIRST_DEVICE_TOKEN: u32 = u32::MAX - 8;

/// A guest packet as the device hands it to its backend (guest memory has no dirty
/// bitmap in ember, hence `()`).
pub type GuestPacket<'a> = VsockPacket<'a, ()>;

/// The host side of a vsock device.
///
/// The device calls it from its event-loop thread only. Per round of work it calls
/// [`VsockBackend::handle_event`] (readiness of one of the backend's fds) or
/// [`VsockBackend::rx_refilled`] (a guest kick), then alternates
/// [`VsockBackend::recv_pkts`] and [`VsockBackend::send_pkt`] until neither moves, then
/// [`VsockBackend::sync_watches`].
pub trait VsockBackend: Send {
    /// Register the backend's fds with the event loop, with tokens below
    /// [`FIRST_DEVICE_TOKEN`] (called once, when the device joins the loop).
    fn init(&mut self, ops: &mut EventOps);

    /// One of the backend's fds, registered with `token`, is ready with `set`.
    fn handle_event(&mut self, token: u32, set: EventSet, ops: &mut EventOps);

    /// End of a round: bring the backend's registrations in line with what it now waits
    /// for.
    fn sync_watches(&mut self, ops: &mut EventOps);

    /// A packet the guest sent on the TX queue. Its header lies wholly in guest memory and
    /// its payload, when `len` is not zero, is exactly `len` bytes in guest memory; every
    /// header field is the guest's and unchecked. The device returns the chain afterwards,
    /// so the packet must not be kept.
    fn send_pkt(&mut self, pkt: &GuestPacket<'_>);

    /// Whether the backend has anything for the guest's RX queue. While it says no, the
    /// device takes no RX buffer.
    fn has_pending_rx(&self) -> bool;

    /// Fill RX buffers taken from `rx` with what is owed to the guest, as many as it has
    /// and `rx` gives.
    fn recv_pkts(&mut self, rx: &mut RxQueue<'_>);

    /// The guest posted RX buffers (it kicked the RX queue).
    fn rx_refilled(&mut self) {}
}
