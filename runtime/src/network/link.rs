//! Interfaces as ember sees them: what it reads of a link, which one is the pod's, and the
//! message that brings one up.

use ember_netlink::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use super::POD_INTERFACE;

/// What ember needs to know of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    /// Its index.
    pub(super) index: u32,
    /// Its name.
    pub(super) name: String,
    /// Its MAC, when it has an Ethernet one.
    pub(super) mac: Option<[u8; 6]>,
    /// Its MTU.
    pub(super) mtu: u32,
    /// Whether it is a loopback.
    pub(super) loopback: bool,
}

impl From<&LinkMessage> for Link {
    fn from(l: &LinkMessage) -> Link {
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            mac: None,
            mtu: 1500,
            loopback: l.header.flags.contains(LinkFlags::Loopback),
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac = Some(a.as_slice().try_into().expect("6 bytes"))
                }
                _ => {}
            }
        }
        link
    }
}

/// Picks the pod interface: `eth0` when there is one, else the first interface that is
/// neither loopback nor ember's tap.
pub(super) fn pick_interface<'a>(links: &'a [Link], tap: &str) -> Option<&'a Link> {
    links.iter().find(|l| l.name == POD_INTERFACE).or_else(|| {
        links
            .iter()
            .find(|l| !l.loopback && l.name != tap && l.mac.is_some())
    })
}

/// The RTM_SETLINK message that brings interface `index` up with `mtu`.
pub fn link_up_message(index: u32, mtu: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::TAP_NAME;

    #[test]
    fn link_up_message_sets_up_and_mtu() {
        let up = link_up_message(9, 1450);
        assert_eq!(up.header.index, 9);
        assert!(up.header.flags.contains(LinkFlags::Up));
        assert!(up.header.change_mask.contains(LinkFlags::Up));
        assert_eq!(up.attributes, vec![LinkAttribute::Mtu(1450)]);
    }

    #[test]
    fn pod_interface_is_eth0_or_the_first_real_one() {
        let link = |index: u32, name: &str, loopback: bool| Link {
            index,
            name: name.into(),
            mac: (!loopback).then_some([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            loopback,
        };
        let links = vec![
            link(1, "lo", true),
            link(2, TAP_NAME, false),
            link(3, "net1", false),
            link(4, "eth0", false),
        ];
        assert_eq!(pick_interface(&links, TAP_NAME).unwrap().name, "eth0");
        assert_eq!(pick_interface(&links[..3], TAP_NAME).unwrap().name, "net1");
        assert!(pick_interface(&links[..2], TAP_NAME).is_none());
    }
}
