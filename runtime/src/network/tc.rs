//! The tc messages of ember's pod-network model: the ingress qdisc, the u32 match-all filter
//! with a mirred egress redirect, and how ember's filters are told apart from others'.

use ember_netlink::netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

/// The tc priority (`pref`) of ember's redirect filters. Cleanup removes only filters at
/// this priority, so filters of other software on the same interfaces are left alone.
pub const FILTER_PRIORITY: u16 = 0xe3b0;
/// The parent of filters on an ingress qdisc (`ffff:`).
pub(super) const INGRESS_PARENT: u32 = 0xffff_0000;
/// `ETH_P_ALL`.
const ETH_P_ALL: u16 = 0x0003;

/// The RTM_NEWQDISC message of an ingress qdisc on interface `index`
/// (`tc qdisc add dev DEV ingress`).
pub fn ingress_qdisc_message(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_PARENT.into();
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// The tc header `info` of ember's filters: priority and protocol (`ETH_P_ALL`, in
/// network byte order as the kernel expects it).
fn filter_info() -> u32 {
    (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be())
}

/// The RTM_NEWTFILTER message redirecting every frame arriving on interface `from` to
/// the egress of interface `to`: `tc filter add dev FROM parent ffff: protocol all pref
/// FILTER_PRIORITY u32 match u32 0 0 action mirred egress redirect dev TO`.
pub fn redirect_filter_message(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_PARENT.into();
    m.header.info = filter_info();
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

/// The RTM_DELTFILTER message removing ember's filters (every filter at
/// [`FILTER_PRIORITY`]) from the ingress of interface `index`.
pub fn delete_filters_message(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = INGRESS_PARENT.into();
    m.header.info = filter_info();
    m
}

/// The interface index a filter's mirred action redirects to, if it has one.
pub fn mirred_target(filter: &TcMessage) -> Option<u32> {
    filter.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::U32(TcFilterU32Option::Action(actions)) => actions.iter().find_map(|act| {
                act.attributes.iter().find_map(|aa| match aa {
                    TcActionAttribute::Options(ao) => ao.iter().find_map(|x| match x {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) => Some(m.ifindex),
                        _ => None,
                    }),
                    _ => None,
                })
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// Whether a filter is one of ember's (at [`FILTER_PRIORITY`]).
pub(super) fn is_ember_filter(filter: &TcMessage) -> bool {
    (filter.header.info >> 16) as u16 == FILTER_PRIORITY
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_netlink::netlink_packet_core::{Emitable, Parseable};
    use ember_netlink::netlink_packet_route::tc::TcMessageBuffer;

    fn round_trip(m: &TcMessage) -> TcMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        TcMessage::parse(&TcMessageBuffer::new_checked(&buf).unwrap()).unwrap()
    }

    #[test]
    fn redirect_filter_is_a_terminal_u32_match_all_with_mirred_egress_redirect() {
        let m = redirect_filter_message(3, 7);
        assert_eq!(m.header.index, 3);
        assert_eq!(u32::from(m.header.parent), 0xffff_0000);
        assert_eq!(m.header.info >> 16, u32::from(FILTER_PRIORITY));
        // protocol all: ETH_P_ALL in network byte order.
        assert_eq!((m.header.info & 0xffff) as u16, 0x0003u16.to_be());
        assert_eq!(m.attributes[0], TcAttribute::Kind("u32".into()));
        let back = round_trip(&m);
        assert_eq!(mirred_target(&back), Some(7));
        assert!(is_ember_filter(&back));
        let TcAttribute::Options(opts) = &back.attributes[1] else {
            panic!("options: {:?}", back.attributes)
        };
        let sel = opts
            .iter()
            .find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s),
                _ => None,
            })
            .expect("a selector");
        assert!(sel.flags.contains(TcU32SelectorFlags::Terminal));
        assert_eq!(sel.keys.len(), 1);
        assert_eq!((sel.keys[0].mask, sel.keys[0].val), (0, 0), "matches all");
    }

    #[test]
    fn ingress_qdisc_and_delete_messages() {
        let q = ingress_qdisc_message(4);
        assert_eq!(q.header.parent, TcHandle::INGRESS);
        assert_eq!(u32::from(q.header.handle), 0xffff_0000);
        assert_eq!(q.attributes, vec![TcAttribute::Kind("ingress".into())]);
        let d = delete_filters_message(4);
        assert_eq!(d.header.info, redirect_filter_message(4, 1).header.info);
        assert!(d.attributes.is_empty(), "deletes the whole priority");
    }
}
