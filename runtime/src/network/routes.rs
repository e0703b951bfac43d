//! What the guest must configure, read from the pod namespace's address and route dumps.

use std::net::IpAddr;

use ember_netlink::netlink_packet_route::address::{
    AddressAttribute, AddressMessage, AddressScope,
};
use ember_netlink::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType,
};
use ember_netlink::netlink_packet_route::RouteNetlinkMessage;

use super::{IpNet, PodRoute};

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// The addresses of interface `index` among an address dump (IPv6 link-local left out).
pub(super) fn interface_addresses(answers: &[RouteNetlinkMessage], index: u32) -> Vec<IpNet> {
    answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
            _ => None,
        })
        .filter(|a| a.header.scope != AddressScope::Link)
        .filter_map(|a: &AddressMessage| {
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
            // otherwise (and the only one IPv6 sends).
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            Some(IpNet {
                addr,
                prefix_len: a.header.prefix_len,
            })
        })
        .collect()
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The unicast main-table routes through interface `index` among a route dump (IPv6
/// link-local and multicast ones left out: the guest's kernel makes those itself).
pub(super) fn interface_routes(answers: &[RouteNetlinkMessage], index: u32) -> Vec<PodRoute> {
    let mut routes = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let r: &RouteMessage = r;
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(o) => Some(*o),
            _ => None,
        });
        if table != RT_TABLE_MAIN || r.header.kind != RouteType::Unicast || oif != Some(index) {
            continue;
        }
        let mut route = PodRoute {
            destination: None,
            gateway: None,
            source: None,
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => {
                    route.destination = route_ip(d).map(|addr| IpNet {
                        addr,
                        prefix_len: r.header.destination_prefix_length,
                    })
                }
                RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
                RouteAttribute::PrefSource(s) => route.source = route_ip(s),
                _ => {}
            }
        }
        if let Some(IpNet {
            addr: IpAddr::V6(v6),
            ..
        }) = route.destination
        {
            let seg = v6.segments()[0];
            if seg & 0xffc0 == 0xfe80 || seg & 0xff00 == 0xff00 {
                continue;
            }
        }
        routes.push(route);
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_routes_are_filtered_for_the_guest() {
        let addr = |index, ip: &str, len, scope| {
            let mut a = AddressMessage::default();
            a.header.index = index;
            a.header.prefix_len = len;
            a.header.scope = scope;
            a.attributes
                .push(AddressAttribute::Address(ip.parse().unwrap()));
            RouteNetlinkMessage::NewAddress(a)
        };
        let addrs = [
            addr(2, "10.88.0.5", 16, AddressScope::Universe),
            addr(2, "fe80::1", 64, AddressScope::Link),
            addr(3, "10.1.0.1", 24, AddressScope::Universe),
        ];
        assert_eq!(
            interface_addresses(&addrs, 2),
            vec![IpNet {
                addr: "10.88.0.5".parse().unwrap(),
                prefix_len: 16
            }]
        );
        let route = |dst: Option<(&str, u8)>, gw: Option<&str>, oif, kind| {
            let mut r = RouteMessage::default();
            r.header.table = 254;
            r.header.kind = kind;
            if let Some((d, len)) = dst {
                r.header.destination_prefix_length = len;
                r.attributes.push(RouteAttribute::Destination(
                    d.parse::<IpAddr>().unwrap().into(),
                ));
            }
            if let Some(g) = gw {
                r.attributes
                    .push(RouteAttribute::Gateway(g.parse::<IpAddr>().unwrap().into()));
            }
            r.attributes.push(RouteAttribute::Oif(oif));
            RouteNetlinkMessage::NewRoute(r)
        };
        let routes = [
            route(None, Some("10.88.0.1"), 2, RouteType::Unicast),
            route(Some(("10.88.0.0", 16)), None, 2, RouteType::Unicast),
            route(Some(("fe80::", 64)), None, 2, RouteType::Unicast),
            route(Some(("10.88.0.5", 32)), None, 2, RouteType::Local),
            route(Some(("10.1.0.0", 24)), None, 3, RouteType::Unicast),
        ];
        let got = interface_routes(&routes, 2);
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["default via 10.88.0.1", "10.88.0.0/16"]);
    }
}
