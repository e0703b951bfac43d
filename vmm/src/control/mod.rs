//! The control channel between the runtime and a confined `ember-vmm` process (one per
//! sandbox): line-delimited JSON on a `SOCK_SEQPACKET` socket pair, disk fds in
//! `SCM_RIGHTS`.
//!
//! - [`channel`]: the transport, bounded (a message over 64 KiB is refused, never
//!   allocated for), used by both sides;
//! - [`protocol`]: the messages, each request with an id its reply carries back;
//! - [`server`]: the VMM's side (`ember-vmm --control-fd N`): build, jail
//!   ([`crate::jail`]), start, serve.

pub mod channel;
pub mod protocol;
pub mod server;

pub use channel::{Channel, ChannelError, MessageError, Received, MAX_MESSAGE};
pub use protocol::{Reply, ReplyMessage, Request, RequestMessage, SlotInfo};
