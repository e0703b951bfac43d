//! The host side of ember's hybrid vsock (the Firecracker design): one Unix socket for
//! host-initiated connections, and `<path>_<port>` sockets for guest-initiated ones.
//!
//! * Host-initiated: a client connects to `path` and writes `CONNECT <guest-port>\n`; the
//!   muxer sends the guest a REQUEST from a fresh local port, and on the guest's RESPONSE
//!   answers `OK <local-port>\n` and splices bytes. A guest RST closes the client.
//! * Guest-initiated: a REQUEST to host port P connects to the Unix socket `<path>_<P>`;
//!   if nothing listens there the guest gets RST.
//!
//! Flow control follows the virtio credit scheme in both directions, so nothing is
//! buffered without bound: the guest may only send what we advertised (CONN_BUF_ALLOC per
//! connection), and we only read from a host socket what the guest has room for. Host
//! sockets are watched only while there is something to do with them, so a stalled
//! connection costs no CPU.

use super::backend::{GuestPacket, VsockBackend};
use super::connection::{Connection, State};
use super::defs::*;
use super::rx::RxQueue;
use event_manager::{EventOps, Events};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::WriteVolatile;
use vmm_sys_util::epoll::EventSet;

/// Event-loop token of the listening socket (socket fds use their fd as token).
pub const TOKEN_LISTENER: u32 = u32::MAX - 16;

/// A connection is identified by (host port, guest port).
pub type ConnKey = (u32, u32);

enum FdKind {
    Handshake,
    Conn(ConnKey),
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connection multiplexer.
pub struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    fds: HashMap<RawFd, FdKind>,
    /// fds currently registered with the event loop, and for what.
    watched: HashMap<RawFd, EventSet>,
    /// RSTs owed for packets that matched no connection, oldest first, each key once,
    /// at most [`MAX_STRAY_RSTS`] (see [`Muxer::queue_stray_rst`]).
    stray_rsts: VecDeque<ConnKey>,
    /// The keys in `stray_rsts`.
    stray_rst_set: HashSet<ConnKey>,
    /// Connections with something for the guest, in round-robin order.
    rx_ready: VecDeque<ConnKey>,
    rx_ready_set: HashSet<ConnKey>,
    /// Connections whose watched events may need to change.
    dirty: HashSet<ConnKey>,
    /// Closed connections whose fds are still on the event loop.
    closed: Vec<Connection>,
    /// The guest gave no RX buffers last time we had something for it.
    pub rx_starved: bool,
    /// The listener is off the event loop because MAX_HANDSHAKES are pending.
    listener_paused: bool,
    used_local_ports: HashSet<u32>,
    next_local_port: u32,
}

impl Muxer {
    /// Listen on `path` (a stale socket file there is replaced) for a guest with `cid`.
    pub fn new(path: &Path, cid: u64) -> std::io::Result<Self> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            cid,
            path: path.to_path_buf(),
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            fds: HashMap::new(),
            watched: HashMap::new(),
            stray_rsts: VecDeque::new(),
            stray_rst_set: HashSet::new(),
            rx_ready: VecDeque::new(),
            rx_ready_set: HashSet::new(),
            dirty: HashSet::new(),
            closed: Vec::new(),
            rx_starved: false,
            listener_paused: false,
            used_local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The Unix socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Register the listener with the event loop.
    fn watch_listener(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.listener,
            TOKEN_LISTENER,
            EventSet::IN,
        )) {
            log::error!("vsock: cannot watch {}: {e}", self.path.display());
        }
    }

    /// Owe the guest a RST for `key`, a packet that matched no connection.
    ///
    /// The guest decides how many such packets it sends and whether it posts RX buffers
    /// to take the RSTs, so the queue is bounded: a key already queued is not queued
    /// again, and when [`MAX_STRAY_RSTS`] are queued the oldest is dropped. Dropping one is
    /// harmless: the guest only misses a reset of a connection the host never had.
    fn queue_stray_rst(&mut self, key: ConnKey) {
        if !self.stray_rst_set.insert(key) {
            return;
        }
        if self.stray_rsts.len() >= MAX_STRAY_RSTS {
            if let Some(old) = self.stray_rsts.pop_front() {
                self.stray_rst_set.remove(&old);
            }
        }
        self.stray_rsts.push_back(key);
    }

    fn mark_rx(&mut self, key: ConnKey) {
        if self.rx_ready_set.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    /// Accept clients until the backlog is empty or MAX_HANDSHAKES are pending; at that
    /// limit the listener is unwatched (clients wait in the kernel's backlog) until a
    /// handshake finishes.
    fn accept(&mut self, ops: &mut EventOps) {
        while self.handshakes.len() < MAX_HANDSHAKES {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.path.display());
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.fds.insert(fd, FdKind::Handshake);
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
            self.watch(fd, EventSet::IN, ops);
            // Clients usually send their line at once.
            self.read_handshake(fd, ops);
        }
        if !self.listener_paused {
            self.listener_paused = true;
            let _ = ops.remove(Events::with_data(
                &self.listener,
                TOKEN_LISTENER,
                EventSet::IN,
            ));
        }
    }

    /// Read the `CONNECT <port>\n` line one byte at a time, so no data after it is
    /// consumed here.
    fn read_handshake(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match h.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&h.line),
                Ok(1) if h.line.len() < MAX_HANDSHAKE_LINE => h.line.push(byte[0]),
                Ok(_) => break None, // EOF or line too long
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let h = self.handshakes.remove(&fd).expect("present");
        self.fds.remove(&fd);
        self.unwatch(fd, ops);
        if self.listener_paused {
            self.listener_paused = false;
            self.watch_listener(ops);
        }
        let Some(peer_port) = port else {
            log::debug!(
                "vsock: bad handshake {:?}; closing",
                String::from_utf8_lossy(&h.line)
            );
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::guest_warn!(
                "vsock: {} connections open; refusing a new one",
                self.conns.len()
            );
            return;
        }
        let local_port = self.allocate_local_port();
        let key = (local_port, peer_port);
        let mut conn = Connection::new(h.stream, State::Connecting, local_port, peer_port);
        conn.pending.request = true;
        self.fds.insert(fd, FdKind::Conn(key));
        self.conns.insert(key, conn);
        self.mark_rx(key);
        self.dirty.insert(key);
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if self.used_local_ports.insert(p) {
                return p;
            }
        }
    }

    fn guest_connect(&mut self, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) {
        let target = PathBuf::from(format!("{}_{}", self.path.display(), key.0));
        let stream =
            match (self.conns.len() < MAX_CONNECTIONS).then(|| connect_nonblocking(&target)) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    log::debug!(
                        "vsock: guest connect to port {}: {}: {e}",
                        key.0,
                        target.display()
                    );
                    self.queue_stray_rst(key);
                    return;
                }
                None => {
                    self.queue_stray_rst(key);
                    return;
                }
            };
        let fd = stream.as_raw_fd();
        let mut conn = Connection::new(stream, State::Established, key.0, key.1);
        conn.peer_buf_alloc = buf_alloc;
        conn.peer_fwd_cnt = Wrapping(fwd_cnt);
        conn.pending.response = true;
        self.fds.insert(fd, FdKind::Conn(key));
        self.conns.insert(key, conn);
        self.mark_rx(key);
        self.dirty.insert(key);
    }

    /// Guest data for the host socket: written straight through when possible, the rest
    /// buffered (bounded by the credit we gave).
    fn guest_data<B: BitmapSlice>(&mut self, key: ConnKey, data: &vm_memory::VolatileSlice<'_, B>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.peer_shutdown & SHUTDOWN_SEND != 0 || conn.over_credit(data.len()) {
            crate::guest_warn!(
                "vsock: guest port {} sent beyond its credit or after shutdown; resetting",
                key.1
            );
            conn.pending.rst = true;
            return;
        }
        let mut written = 0;
        if conn.tx_buf.is_empty() {
            match conn.stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    conn.pending.rst = true;
                    return;
                }
            }
        }
        if written < data.len() {
            let rest = data
                .subslice(written, data.len() - written)
                .expect("within slice");
            let mut buf = vec![0u8; rest.len()];
            rest.copy_to(&mut buf[..]);
            conn.tx_buf.extend(buf);
        }
        conn.forwarded(written);
    }

    fn flush_tx(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        while !conn.tx_buf.is_empty() {
            let (front, _) = conn.tx_buf.as_slices();
            match conn.stream.write(front) {
                Ok(n) => {
                    conn.tx_buf.drain(..n);
                    conn.forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.pending.rst = true;
                    conn.tx_buf.clear();
                    break;
                }
            }
        }
        if conn.tx_buf.is_empty()
            && conn.peer_shutdown & SHUTDOWN_SEND != 0
            && !conn.host_write_shut
        {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            conn.host_write_shut = true;
        }
        if conn.pending.credit_update {
            self.mark_rx(key);
        }
        self.dirty.insert(key);
    }

    /// The guest reset the connection: give the host socket what it takes now, then close.
    fn guest_reset(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            while !c.tx_buf.is_empty() {
                let (front, _) = c.tx_buf.as_slices();
                match c.stream.write(front) {
                    Ok(n) if n > 0 => {
                        c.tx_buf.drain(..n);
                    }
                    _ => break,
                }
            }
        }
        self.close(key);
    }

    fn pop_ready(&mut self) {
        if let Some(key) = self.rx_ready.pop_front() {
            self.rx_ready_set.remove(&key);
        }
    }

    /// Write control packet `op` of connection `key` (a stray RST when `None`) and update
    /// the connection for it.
    fn send_control<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        key: Option<ConnKey>,
        local: u32,
        peer: u32,
        op: u16,
    ) {
        let Some(key) = key else {
            if let Some(k) = self.stray_rsts.pop_front() {
                self.stray_rst_set.remove(&k);
            }
            write_header(pkt, self.cid, local, peer, op, 0, Wrapping(0));
            return;
        };
        self.pop_ready();
        let conn = self.conns.get_mut(&key).expect("ready connection exists");
        match op {
            op::REQUEST => conn.pending.request = false,
            op::RESPONSE => conn.pending.response = false,
            _ => {}
        }
        // Every packet carries our fwd_cnt, so any of them is a credit update.
        conn.pending.credit_update = false;
        conn.last_fwd_cnt_sent = conn.fwd_cnt;
        write_header(pkt, self.cid, local, peer, op, 0, conn.fwd_cnt);
        let again = conn.pending.any() || (conn.readable && conn.wants_to_read());
        if op == op::RST {
            self.close(key);
        } else if again {
            self.mark_rx(key);
        }
        self.dirty.insert(key);
    }

    /// Move data from `key`'s host socket into as many RX buffers as its credit allows,
    /// with one `readv` (one syscall instead of one per 4 KiB buffer). Buffers left over
    /// go back to the ring. Returns whether it made progress (`false`: no usable RX
    /// buffer).
    fn read_batch(&mut self, rx: &mut RxQueue<'_>, key: ConnKey) -> bool {
        const MAX_BATCH: usize = 64;
        let conn = self.conns.get_mut(&key).expect("ready connection exists");
        let mut credit = conn.peer_credit() as usize;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(MAX_BATCH);
        while batch.len() < MAX_BATCH && credit > 0 {
            let Some(buf) = rx.pop() else {
                break;
            };
            let room = buf.pkt.data_slice().map_or(0, |d| d.len()).min(credit);
            let Some(data) = buf.pkt.data_slice().filter(|_| room > 0) else {
                // Header-only buffer: not usable for data.
                rx.put_back(buf);
                break;
            };
            iov.push(libc::iovec {
                iov_base: data.ptr_guard_mut().as_ptr().cast(),
                iov_len: room,
            });
            credit -= room;
            batch.push((buf, room));
        }
        if batch.is_empty() {
            // No usable buffer (none left, or one too small for data): stop for now.
            return false;
        }
        // SAFETY: every iovec points into guest memory that `rx`'s memory keeps mapped,
        // within a descriptor the guest made device-writable, for at most its length.
        let n = unsafe { libc::readv(conn.stream.as_raw_fd(), iov.as_mut_ptr(), iov.len() as i32) };
        // Bytes read, or the control packet that takes the first buffer instead.
        let (mut left, control) = if n > 0 {
            (n as usize, None)
        } else if n == 0 {
            conn.host_eof = true;
            (0, Some((op::SHUTDOWN, SHUTDOWN_SEND)))
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock {
                conn.readable = false;
                (0, None)
            } else {
                conn.pending.rst = true;
                (0, Some((op::RST, 0)))
            }
        };
        let mut filled = 0;
        let mut unused = Vec::new();
        for (mut buf, room) in batch {
            if let Some((op, flags)) = control.filter(|_| filled == 0) {
                write_header(
                    &mut buf.pkt,
                    self.cid,
                    conn.local_port,
                    conn.peer_port,
                    op,
                    flags,
                    conn.fwd_cnt,
                );
                rx.complete(buf, PKT_HEADER_SIZE as u32);
                filled += 1;
            } else if left > 0 {
                let take = left.min(room);
                left -= take;
                conn.rx_cnt += Wrapping(take as u32);
                write_header(
                    &mut buf.pkt,
                    self.cid,
                    conn.local_port,
                    conn.peer_port,
                    op::RW,
                    0,
                    conn.fwd_cnt,
                );
                buf.pkt.set_len(take as u32);
                rx.complete(buf, (PKT_HEADER_SIZE + take) as u32);
                filled += 1;
            } else {
                unused.push(buf);
            }
        }
        // Newest first, so each goes back on the ring in its place.
        for buf in unused.into_iter().rev() {
            rx.put_back(buf);
        }
        if filled > 0 {
            conn.pending.credit_update = false;
            conn.last_fwd_cnt_sent = conn.fwd_cnt;
        }
        let again = conn.pending.any() || (conn.readable && conn.wants_to_read());
        let rst = conn.pending.rst && control.is_some_and(|(op, _)| op == op::RST);
        self.pop_ready();
        if rst {
            self.close(key);
        } else if again {
            self.mark_rx(key);
        }
        self.dirty.insert(key);
        // Progress either way: buffers were filled, or (nothing to read) the connection
        // left the ready queue.
        true
    }

    /// Forget a connection. Its socket stays open (in `closed`) until `sync_watches` has
    /// taken its fd off the event loop, so the fd number cannot be reused before that.
    fn close(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.fds.remove(&c.stream.as_raw_fd());
            self.used_local_ports.remove(&c.local_port);
            self.closed.push(c);
        }
    }

    fn watch(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        let events = Events::with_data_raw(fd, fd as u32, set);
        let result = match self.watched.get(&fd) {
            Some(cur) if *cur == set => return,
            Some(_) => ops.modify(events),
            None => ops.add(events),
        };
        match result {
            Ok(()) => {
                self.watched.insert(fd, set);
            }
            Err(e) => log::warn!("vsock: cannot watch fd {fd}: {e}"),
        }
    }

    fn unwatch(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(set) = self.watched.remove(&fd) {
            let _ = ops.remove(Events::with_data_raw(fd, fd as u32, set));
        }
    }
}

impl VsockBackend for Muxer {
    fn init(&mut self, ops: &mut EventOps) {
        self.watch_listener(ops);
    }

    /// Handle readiness of the listener or a host socket.
    fn handle_event(&mut self, token: u32, set: EventSet, ops: &mut EventOps) {
        if token == TOKEN_LISTENER {
            self.accept(ops);
            return;
        }
        let fd = token as RawFd;
        match self.fds.get(&fd) {
            Some(FdKind::Handshake) => self.read_handshake(fd, ops),
            Some(FdKind::Conn(key)) => {
                let key = *key;
                if set.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                ) {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.readable = true;
                    }
                    self.mark_rx(key);
                }
                if set.contains(EventSet::OUT) {
                    self.flush_tx(key);
                }
                self.dirty.insert(key);
            }
            None => {
                log::debug!("vsock: event for unknown fd {fd}");
                self.unwatch(fd, ops);
            }
        }
    }

    /// Bring the event loop's watch list in line with what each changed connection needs.
    fn sync_watches(&mut self, ops: &mut EventOps) {
        for c in std::mem::take(&mut self.closed) {
            self.unwatch(c.stream.as_raw_fd(), ops);
        }
        for key in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get(&key) else {
                continue;
            };
            let mut want = EventSet::empty();
            if c.wants_to_read() && !c.readable && !self.rx_starved {
                want |= EventSet::IN;
            }
            if c.wants_to_write() {
                want |= EventSet::OUT;
            }
            if c.state == State::Connecting && !c.pending.request {
                // Notice a client that gives up while the guest has not answered.
                want |= EventSet::READ_HANG_UP;
            }
            let fd = c.stream.as_raw_fd();
            if want.is_empty() {
                self.unwatch(fd, ops);
            } else {
                self.watch(fd, want, ops);
            }
        }
    }

    /// A packet the guest sent (its chain is returned by the caller).
    fn send_pkt(&mut self, pkt: &GuestPacket<'_>) {
        if pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID {
            log::debug!(
                "vsock: dropping packet {}->{}",
                pkt.src_cid(),
                pkt.dst_cid()
            );
            return;
        }
        let key = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != TYPE_STREAM {
            self.queue_stray_rst(key);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match pkt.op() {
                op::REQUEST => self.guest_connect(key, pkt.buf_alloc(), pkt.fwd_cnt()),
                op::RST => {}
                _ => self.queue_stray_rst(key),
            }
            return;
        };
        conn.peer_buf_alloc = pkt.buf_alloc();
        conn.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());
        match pkt.op() {
            op::RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", conn.local_port);
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    conn.pending.rst = true;
                }
            }
            op::RW if conn.state == State::Established => {
                if let Some(data) = pkt.data_slice() {
                    let len = (pkt.len() as usize).min(data.len());
                    self.guest_data(key, &data.subslice(0, len).expect("len within slice"));
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.pending.credit_update = true,
            op::SHUTDOWN => {
                conn.peer_shutdown |= pkt.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // Both directions closed: flush what the socket takes and reset.
                    conn.pending.rst = true;
                }
                self.flush_tx(key);
            }
            op::RST => {
                self.guest_reset(key);
                return;
            }
            _ => conn.pending.rst = true, // protocol violation
        }
        self.mark_rx(key);
        self.dirty.insert(key);
    }

    /// Whether anything waits for RX buffers.
    fn has_pending_rx(&self) -> bool {
        !self.stray_rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// Fill RX buffers from `rx` with what is owed to the guest.
    ///
    /// Control packets (RST, REQUEST, RESPONSE, a credit update with no data to carry it)
    /// take one buffer each; data goes through `Muxer::read_batch` (batched `readv` per connection).
    fn recv_pkts(&mut self, rx: &mut RxQueue<'_>) {
        let used_before = rx.used();
        loop {
            let (key, local, peer, op) = if let Some(&(local, peer)) = self.stray_rsts.front() {
                (None, local, peer, op::RST)
            } else {
                let Some(&key) = self.rx_ready.front() else {
                    break;
                };
                let Some(c) = self.conns.get(&key) else {
                    self.pop_ready();
                    continue;
                };
                let data = c.readable && c.wants_to_read();
                let p = c.pending;
                let op = if p.rst {
                    op::RST
                } else if p.request {
                    op::REQUEST
                } else if p.response {
                    op::RESPONSE
                } else if p.credit_update && !data {
                    op::CREDIT_UPDATE
                } else if data {
                    if self.read_batch(rx, key) {
                        continue;
                    }
                    break;
                } else {
                    // Nothing owed after all: untracked until an event says otherwise.
                    self.pop_ready();
                    self.dirty.insert(key);
                    continue;
                };
                (Some(key), c.local_port, c.peer_port, op)
            };
            // A malformed buffer is returned empty by `rx` and the packet stays owed.
            let Some(mut buf) = rx.pop() else {
                break;
            };
            self.send_control(&mut buf.pkt, key, local, peer, op);
            rx.complete(buf, PKT_HEADER_SIZE as u32);
        }
        if rx.starved() {
            self.rx_starved = true;
        }
        if rx.used() > used_before {
            self.rx_starved = false;
        }
    }

    /// The guest refilled its RX queue: sockets we stopped watching may be read again.
    fn rx_refilled(&mut self) {
        self.rx_starved = false;
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        self.dirty.extend(keys);
    }
}

/// Fill `pkt`'s header for a host → guest packet from `local` to `peer` (length 0).
fn write_header<B: BitmapSlice>(
    pkt: &mut VsockPacket<'_, B>,
    cid: u64,
    local: u32,
    peer: u32,
    op: u16,
    flags: u32,
    fwd_cnt: Wrapping<u32>,
) {
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(cid)
        .set_src_port(local)
        .set_dst_port(peer)
        .set_type(TYPE_STREAM)
        .set_op(op)
        .set_flags(flags)
        .set_len(0)
        .set_buf_alloc(CONN_BUF_ALLOC)
        .set_fwd_cnt(fwd_cnt.0);
}

fn would_block(e: &vm_memory::VolatileMemoryError) -> bool {
    matches!(e, vm_memory::VolatileMemoryError::IOError(io) if io.kind() == ErrorKind::WouldBlock)
}

impl Drop for Muxer {
    /// The listening socket file is the VMM's: remove it with the device.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `CONNECT <port>` → port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    s.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Connect to a Unix socket without blocking the event loop (a full backlog fails with
/// EAGAIN instead of waiting). std's `UnixStream::connect` blocks, hence libc.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }

    /// Hands the muxer a guest → host packet (no data) from guest port `src_port` to host
    /// port `dst_port`.
    fn handle(m: &mut Muxer, op: u16, dst_port: u32, src_port: u32) {
        let mut hdr = [0u8; PKT_HEADER_SIZE];
        // SAFETY: `hdr` is a whole header and outlives the packet.
        let mut pkt = unsafe { VsockPacket::new(&mut hdr[..], None) }.unwrap();
        pkt.set_src_cid(3)
            .set_dst_cid(HOST_CID)
            .set_src_port(src_port)
            .set_dst_port(dst_port)
            .set_type(TYPE_STREAM)
            .set_op(op);
        m.send_pkt(&pkt);
    }

    #[test]
    fn stray_rsts_are_bounded_while_the_guest_takes_none() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Muxer::new(&tmp.path().join("v.sock"), 3).unwrap();
        // A guest that posts no RX buffers and keeps sending packets for no connection
        // (data, and REQUESTs to host ports nothing listens on).
        for i in 0..(4 * MAX_STRAY_RSTS as u32) {
            handle(&mut m, op::RW, 5000, 10_000 + i);
            handle(&mut m, op::REQUEST, 6000, 10_000 + i);
        }
        assert_eq!(m.stray_rsts.len(), MAX_STRAY_RSTS);
        assert_eq!(m.stray_rst_set.len(), MAX_STRAY_RSTS);
        assert!(m.has_pending_rx());
        // The newest are kept (the last packet's key among them).
        let last = 10_000 + 4 * MAX_STRAY_RSTS as u32 - 1;
        assert_eq!(m.stray_rsts.back(), Some(&(6000, last)));
        assert!(!m.stray_rst_set.contains(&(5000, 10_000)));
        // The same key again is owed once.
        let before = m.stray_rsts.clone();
        for _ in 0..1000 {
            handle(&mut m, op::RW, 6000, last);
        }
        assert_eq!(m.stray_rsts, before);
        assert!(m.conns.is_empty());
    }
}
