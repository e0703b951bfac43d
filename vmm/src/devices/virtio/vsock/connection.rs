//! One vsock stream between a guest port and a host Unix socket: its state, the credit
//! accounting of both directions, and the bounded buffer of guest data the host socket
//! has not taken yet.

use super::defs::*;
use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// Control packets owed to the guest (sent as RX buffers allow).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pending {
    /// OP_REQUEST (host-initiated connect).
    pub request: bool,
    /// OP_RESPONSE (guest-initiated connect accepted).
    pub response: bool,
    /// OP_CREDIT_UPDATE.
    pub credit_update: bool,
    /// OP_RST; the connection is removed once sent.
    pub rst: bool,
}

impl Pending {
    /// Whether any control packet is owed.
    pub fn any(&self) -> bool {
        self.request || self.response || self.credit_update || self.rst
    }
}

/// A connection.
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// State.
    pub state: State,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Guest's receive buffer size (from its packets).
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed (from its packets).
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// Bytes of guest data written to the host socket.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    pub last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host socket has not taken yet (at most CONN_BUF_ALLOC bytes,
    /// because the guest may only send what our credit allows).
    pub tx_buf: VecDeque<u8>,
    /// SHUTDOWN flags received from the guest.
    pub peer_shutdown: u32,
    /// The host socket reached EOF (SHUTDOWN SEND owed or sent).
    pub host_eof: bool,
    /// The host's write side was shut after the guest's SHUTDOWN SEND.
    pub host_write_shut: bool,
    /// Control packets owed.
    pub pending: Pending,
    /// The host socket may have data to read (cleared on WouldBlock).
    pub readable: bool,
}

impl Connection {
    /// A connection in `state` over `stream` (set non-blocking by the caller).
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            peer_shutdown: 0,
            host_eof: false,
            host_write_shut: false,
            pending: Pending::default(),
            readable: false,
        }
    }

    /// How many bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether data should be read from the host socket for the guest now.
    pub fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.pending.rst
            && self.peer_credit() > 0
    }

    /// Whether the host socket should be watched for writability.
    pub fn wants_to_write(&self) -> bool {
        !self.tx_buf.is_empty() && !self.pending.rst
    }

    /// Record that `n` bytes of guest data reached the host socket, and owe a credit
    /// update when the guest may be running low.
    pub fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Whether the guest sent more than our credit allowed.
    pub fn over_credit(&self, incoming: usize) -> bool {
        self.tx_buf.len() + incoming > CONN_BUF_ALLOC as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounts_wrap_around() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, State::Established, 1, 2);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = Wrapping(u32::MAX - 10);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 100);
        assert_eq!(c.peer_credit(), 910);
        c.rx_cnt += Wrapping(200); // wraps
        assert_eq!(c.peer_credit(), 710);
        c.peer_fwd_cnt = c.rx_cnt;
        assert_eq!(c.peer_credit(), 1000);
        c.rx_cnt += Wrapping(5000); // guest lied about fwd_cnt / buf_alloc: no underflow
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_to_read());
    }

    #[test]
    fn credit_update_after_threshold() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, State::Established, 1, 2);
        c.forwarded(CREDIT_UPDATE_THRESHOLD as usize - 1);
        assert!(!c.pending.credit_update);
        c.forwarded(1);
        assert!(c.pending.credit_update);
    }
}
