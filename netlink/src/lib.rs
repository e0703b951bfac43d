//! `ember-netlink`: one blocking rtnetlink socket of the calling thread's network namespace,
//! sending a request and collecting its answers until the ACK or the end of a dump.
//!
//! The agent (configuring the guest's NICs) and the runtime (pod taps and tc filters on the
//! host) both need exactly this. The `rtnetlink` crate is async-only and would add a second
//! copy of netlink-packet-route and netlink-sys next to the ones libcontainer links, so the
//! few lines live here, on top of those crates' message types.

use std::io;

pub use netlink_packet_core;
pub use netlink_packet_route;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A blocking rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` and collects the answers until the ACK (or the end of a
    /// dump). A kernel error is returned as its errno. Answers that do not parse are skipped
    /// (a dump may hold attributes this version of netlink-packet-route does not know).
    pub fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let nb =
                    NetlinkBuffer::new_checked(&data[off..]).map_err(|e| bad(e.to_string()))?;
                let len = nb.length() as usize;
                let (ty, seq) = (nb.message_type(), nb.sequence_number());
                let one = &data[off..off + len];
                off += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                            .map_err(|e| bad(e.to_string()))?;
                        if let NetlinkPayload::Error(e) = m.payload {
                            return match e.code {
                                None => Ok(out),
                                Some(_) => Err(e.to_io()),
                            };
                        }
                    }
                    _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(one) {
                        Ok(NetlinkMessage {
                            payload: NetlinkPayload::InnerMessage(m),
                            ..
                        }) => out.push(m),
                        Ok(_) => {}
                        Err(e) => log::debug!("rtnetlink: skipped an answer: {e}"),
                    },
                }
            }
        }
    }

    /// A request answered by an ACK.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(msg, flags | NLM_F_ACK).map(|_| ())
    }

    /// A dump request.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_DUMP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    #[test]
    fn dumps_the_loopback_link_and_reports_kernel_errors() {
        let mut nl = Rtnl::open().expect("an rtnetlink socket opens without privileges");
        let links = nl
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .unwrap();
        let lo = links.iter().any(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo")),
            _ => false,
        });
        assert!(lo, "every network namespace has lo");
        // Deleting an interface index that cannot exist: the kernel's errno comes back.
        let mut m = LinkMessage::default();
        m.header.index = u32::MAX - 1;
        let e = nl.request(RouteNetlinkMessage::DelLink(m), 0).unwrap_err();
        assert!(e.raw_os_error().is_some(), "{e}");
    }
}
