//! virtio-net over a tap: one RX and one TX queue, a MAC address from the config, no
//! offloads (the guest sends and receives plain Ethernet frames).
//!
//! Optional rate limiters ([`Net::with_rate_limiters`]), one per direction, count one
//! operation and the frame's length (without the virtio-net header) per frame. A TX frame
//! the limiter refuses stays in the available ring; an RX frame waits in the device's one
//! frame buffer, and the tap is not read while it waits. Each limiter's timer resumes its
//! direction on the event loop.

pub mod tap;

use super::{DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::rate_limiter::RateLimiter;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::{ErrorKind, Read, Write};
use tap::{Tap, TapError, VNET_HDR_LEN};
use thiserror::Error;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

/// virtio device id of a network device.
pub const DEVICE_TYPE: u32 = 1;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// RX queue index.
pub const RXQ: usize = 0;
/// TX queue index.
pub const TXQ: usize = 1;
/// VIRTIO_NET_F_MAC.
const F_MAC: u32 = 5;
/// Largest frame with its header (64 KiB frames, as without offloads the MTU bounds it).
pub const MAX_FRAME: usize = 65_562;
const TOKEN_QUEUE_BASE: u32 = 0;
const TOKEN_TAP: u32 = 16;
const TOKEN_RX_LIMIT: u32 = 17;
const TOKEN_TX_LIMIT: u32 = 18;

/// Errors of creating a network device.
#[derive(Debug, Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The network device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    state: DeviceState,
    /// Buffer frames are read into from the tap (allocated once).
    rx_buf: Vec<u8>,
    /// Length of a frame in `rx_buf` that found no RX buffer yet.
    pending: Option<usize>,
    /// Whether the tap fd is on the event loop (off while the guest has no RX buffers).
    tap_watched: bool,
    /// Bounds frames to the guest; `None`: unlimited.
    rx_limiter: Option<RateLimiter>,
    /// Bounds frames from the guest; `None`: unlimited.
    tx_limiter: Option<RateLimiter>,
}

impl Net {
    /// A device on `tap` with `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Self, NetError> {
        Ok(Self {
            tap,
            mac,
            state: DeviceState::new(&[QUEUE_SIZE, QUEUE_SIZE]).map_err(NetError::EventFd)?,
            rx_buf: vec![0u8; MAX_FRAME],
            pending: None,
            tap_watched: false,
            rx_limiter: None,
            tx_limiter: None,
        })
    }

    /// The same device with limiters on received (`rx`) and sent (`tx`) frames (`None`:
    /// unlimited).
    pub fn with_rate_limiters(mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) -> Self {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
        self
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Send the frames the guest queued, as many as the TX limiter (if any) lets through;
    /// returns how many chains were returned.
    pub fn process_tx(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        if self
            .tx_limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            return 0;
        }
        let queue = &mut self.state.queues[TXQ];
        let mut frame = Vec::with_capacity(MAX_FRAME);
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Some(limiter) = self.tx_limiter.as_mut() {
                let len = chain.clone().reader(mem).map_or(0, |r| r.available_bytes());
                if !limiter.consume(len.saturating_sub(VNET_HDR_LEN) as u64) {
                    // Put the chain back: it stays available until the timer fires.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
            }
            frame.clear();
            match chain.reader(mem) {
                Ok(mut r)
                    if r.available_bytes() >= VNET_HDR_LEN && r.available_bytes() <= MAX_FRAME =>
                {
                    if r.read_to_end(&mut frame).is_ok() {
                        // Offloads are off: a zeroed header means a plain frame.
                        frame[..VNET_HDR_LEN].fill(0);
                        if let Err(e) = self.tap.write_frame(&frame) {
                            log::debug!(
                                "virtio-net: tap {} write: {e}; frame dropped",
                                self.tap.name()
                            );
                        }
                    }
                }
                _ => crate::guest_warn!("virtio-net: malformed TX chain {head}; dropped"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                crate::guest_warn!("virtio-net: cannot return TX chain {head}: {e}");
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
            }
            done += 1;
        }
        done
    }

    /// Move frames from the tap into RX buffers until one side runs dry or the RX limiter
    /// (if any) says stop; returns how many buffers were used.
    pub fn process_rx(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        let queue = &mut self.state.queues[RXQ];
        let mut done = 0;
        loop {
            // A blocked limiter: the frame in hand waits, and the tap is not read.
            if self
                .rx_limiter
                .as_ref()
                .is_some_and(RateLimiter::is_blocked)
            {
                break;
            }
            // The frame is read into the one reused buffer and stays there while it waits.
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("virtio-net: tap {} read: {e}", self.tap.name());
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.pending = Some(len);
                break;
            };
            let head = chain.head_index();
            if let Some(limiter) = self.rx_limiter.as_mut() {
                if !limiter.consume(len.saturating_sub(VNET_HDR_LEN) as u64) {
                    // The buffer goes back to the ring and the frame waits for the timer.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    self.pending = Some(len);
                    break;
                }
            }
            let frame = &mut self.rx_buf[..len];
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= len => {
                    frame[..VNET_HDR_LEN].fill(0);
                    frame[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    w.write_all(frame).map(|_| len as u32).unwrap_or(0)
                }
                _ => {
                    log::debug!(
                        "virtio-net: RX buffer {head} too small or malformed; frame dropped"
                    );
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, written) {
                crate::guest_warn!("virtio-net: cannot return RX buffer {head}: {e}");
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
            }
            done += 1;
        }
        done
    }

    /// Watch the tap only while frames can be delivered (no frame waiting for a buffer or
    /// for the RX limiter).
    fn sync_tap_watch(&mut self, ops: &mut EventOps) {
        let want = self.pending.is_none()
            && !self
                .rx_limiter
                .as_ref()
                .is_some_and(RateLimiter::is_blocked);
        if want == self.tap_watched {
            return;
        }
        let events = Events::with_data(&self.tap, TOKEN_TAP, EventSet::IN);
        let result = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.tap_watched = want,
            Err(e) => log::warn!("virtio-net: cannot (un)watch tap {}: {e}", self.tap.name()),
        }
    }

    /// One round of work for event `token` (also used by tests without an event loop).
    pub fn handle(&mut self, token: u32, ops: &mut EventOps) {
        match token {
            TOKEN_RX_LIMIT => {
                if let Some(limiter) = self.rx_limiter.as_mut() {
                    limiter.on_timer();
                }
            }
            TOKEN_TX_LIMIT => {
                if let Some(limiter) = self.tx_limiter.as_mut() {
                    limiter.on_timer();
                }
            }
            t if t < TOKEN_TAP => {
                if let Some(evt) = self.state.queue_events.get((t - TOKEN_QUEUE_BASE) as usize) {
                    let _ = evt.read();
                }
            }
            _ => {}
        }
        if self.is_activated() {
            let tx = if token == TOKEN_QUEUE_BASE + TXQ as u32 || token == TOKEN_TX_LIMIT {
                self.process_tx()
            } else {
                0
            };
            let rx = self.process_rx();
            self.state.notify(&[(RXQ, rx), (TXQ, tx)]);
        }
        self.sync_tap_watch(ops);
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1 << F_MAC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac: [u8; 6]; status and the rest are not offered.
        super::read_config_bytes(&self.mac, offset, data);
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.handle(events.data(), ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state
            .register_queue_events(ops, TOKEN_QUEUE_BASE, "virtio-net");
        for (limiter, token) in [
            (&self.rx_limiter, TOKEN_RX_LIMIT),
            (&self.tx_limiter, TOKEN_TX_LIMIT),
        ] {
            if let Some(limiter) = limiter {
                if let Err(e) = ops.add(Events::with_data(limiter, token, EventSet::IN)) {
                    log::error!("virtio-net: cannot watch a rate limiter's timer: {e}");
                }
            }
        }
        self.sync_tap_watch(ops);
    }
}
