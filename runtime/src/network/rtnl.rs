//! ember-netlink's blocking rtnetlink socket, with the namespace named in errors, and the
//! thread that runs code in a pod's namespace.

use std::io;
use std::path::{Path, PathBuf};

use ember_netlink::netlink_packet_route::link::LinkMessage;
use ember_netlink::netlink_packet_route::tc::TcMessage;
use ember_netlink::netlink_packet_route::RouteNetlinkMessage;

use super::link::Link;
use super::tc::INGRESS_PARENT;
use super::NetworkError;

/// Runs `f` in network namespace `netns` (on a thread of its own, see
/// [`ember_sys::netns::run_in`]), or right here without one.
pub(super) fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    match netns {
        Some(ns) => ember_sys::netns::run_in(ns, f)?,
        None => f(),
    }
}

/// ember-netlink's socket with the namespace named in errors.
pub(super) struct Rtnl {
    nl: ember_netlink::Rtnl,
    netns: Option<PathBuf>,
}

impl Rtnl {
    pub(super) fn open(netns: Option<&Path>) -> Result<Rtnl, NetworkError> {
        let nl = ember_netlink::Rtnl::open().map_err(|source| NetworkError::Netlink {
            what: "open an rtnetlink socket".into(),
            netns: netns.map(Path::to_path_buf),
            source,
        })?;
        Ok(Rtnl {
            nl,
            netns: netns.map(Path::to_path_buf),
        })
    }

    pub(super) fn err(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> NetworkError + '_ {
        let what = what.into();
        move |source| NetworkError::Netlink {
            what,
            netns: self.netns.clone(),
            source,
        }
    }

    /// A request answered by an ACK.
    pub(super) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.nl.request(msg, flags)
    }

    /// A dump request.
    pub(super) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.nl.dump(msg)
    }

    pub(super) fn links(&mut self) -> Result<Vec<Link>, NetworkError> {
        let answers = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(self.err("list interfaces"))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from(&l)),
                _ => None,
            })
            .collect())
    }

    /// The ingress filters of interface `index` (empty when it has no ingress qdisc).
    pub(super) fn ingress_filters(
        &mut self,
        index: u32,
        name: &str,
    ) -> Result<Vec<TcMessage>, NetworkError> {
        let mut q = TcMessage::with_index(index as i32);
        q.header.parent = INGRESS_PARENT.into();
        let answers = self
            .dump(RouteNetlinkMessage::GetTrafficFilter(q))
            .map_err(self.err(format!("list the ingress filters of {name}")))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
                _ => None,
            })
            .collect())
    }
}
