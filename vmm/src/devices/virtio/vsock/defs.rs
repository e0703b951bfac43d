//! virtio-vsock protocol constants (virtio 1.2 §5.10) and ember's limits.

/// virtio device id of a socket device.
pub const DEVICE_TYPE: u32 = 19;
/// Queue indexes.
pub const RXQ: usize = 0;
/// Transmit queue (guest → host).
pub const TXQ: usize = 1;
/// Event queue (unused by ember, but part of the device).
pub const EVQ: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream sockets, the only type ember supports.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept.
    pub const RESPONSE: u16 = 2;
    /// Reset.
    pub const RST: u16 = 3;
    /// Half or full shutdown.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit announcement.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Ask for a credit announcement.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer each connection offers the guest (bytes in flight guest → host).
pub const CONN_BUF_ALLOC: u32 = 256 << 10;
/// Credit update is sent once this many bytes were forwarded since the last one.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// Largest payload of one packet (the driver's buffers are smaller).
pub const MAX_PKT_DATA: u32 = 64 << 10;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most RSTs owed to the guest for packets that matched no connection (the oldest is
/// dropped beyond that).
pub const MAX_STRAY_RSTS: usize = 256;
/// Most host clients still sending their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 256;
/// Longest `CONNECT <port>\n` line.
pub const MAX_HANDSHAKE_LINE: usize = 32;
/// First local port handed to host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
