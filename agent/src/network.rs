//! UpdateNetwork: the guest's NICs configured from the pod's network (microVM backend).
//! Each NIC is found by its MAC address (the VMM gives the guest NIC the pod interface's
//! MAC), brought up with the pod's MTU and addresses, and then the pod's routes are added.
//!
//! Requests are validated completely before anything changes, and errors name the field
//! (`interfaces[0].addresses[1]: ...`). Already present addresses and routes (the kernel
//! adds the subnet route of an address by itself) are not errors, so the call can be
//! repeated.
//!
//! rtnetlink goes through `ember-netlink`, the blocking request/answer socket the runtime's
//! pod-network code uses too.

use std::io;
use std::net::IpAddr;

use ember_agent_protocol::agent as pb;
use ember_netlink::netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use ember_netlink::netlink_packet_route::address::{
    AddressAttribute, AddressMessage, AddressScope,
};
use ember_netlink::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use ember_netlink::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use ember_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// Errors of UpdateNetwork.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A field of the request is malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `interfaces[0].addresses[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No NIC has the MAC address of an interface.
    #[error("{field}: no network interface with MAC {mac} (present: {present})")]
    NoSuchNic {
        /// The field.
        field: String,
        /// The MAC asked for.
        mac: String,
        /// The NICs there are, `name mac`.
        present: String,
    },
    /// The kernel refused a change.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's error.
        source: io::Error,
    },
}

fn invalid(field: String, message: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field,
        message: message.into(),
    }
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

/// Parses `10.1.2.3/24` (a bare address means a host prefix).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address in CIDR form"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
    };
    Ok(Cidr { addr, prefix })
}

/// Parses a NIC's MAC ([`ember_sys::mac::parse`]'s rule), as a message for [`invalid`].
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    ember_sys::mac::parse(s).map_err(|e| e.to_string())
}

/// A validated NIC configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// Which NIC.
    pub mac: [u8; 6],
    /// MTU, 0 to keep.
    pub mtu: u32,
    /// Addresses.
    pub addresses: Vec<Cidr>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination; `None` for default.
    pub destination: Option<Cidr>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Preferred source.
    pub source: Option<IpAddr>,
    /// The NIC's MAC.
    pub mac: [u8; 6],
}

/// Validates a request completely.
pub fn plan(
    req: &pb::UpdateNetworkRequest,
) -> Result<(Vec<NicPlan>, Vec<RoutePlan>), NetworkError> {
    let mut nics = Vec::new();
    for (i, n) in req.interfaces.iter().enumerate() {
        let mac = parse_mac(&n.mac).map_err(|m| invalid(format!("interfaces[{i}].mac"), m))?;
        if n.mtu != 0 && !(68..=65535).contains(&n.mtu) {
            return Err(invalid(
                format!("interfaces[{i}].mtu"),
                format!("{} is out of range 68 to 65535", n.mtu),
            ));
        }
        let addresses = n
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| {
                parse_cidr(a).map_err(|m| invalid(format!("interfaces[{i}].addresses[{j}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        nics.push(NicPlan {
            mac,
            mtu: n.mtu,
            addresses,
        });
    }
    let mut routes = Vec::new();
    for (i, r) in req.routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        let mac = parse_mac(&r.interface_mac).map_err(|m| invalid(field("interface_mac"), m))?;
        if !nics.iter().any(|n| n.mac == mac) {
            return Err(invalid(
                field("interface_mac"),
                format!("{} is not one of the request's interfaces", r.interface_mac),
            ));
        }
        let destination = (!r.destination.is_empty())
            .then(|| parse_cidr(&r.destination))
            .transpose()
            .map_err(|m| invalid(field("destination"), m))?;
        let ip = |s: &str, f: &str| -> Result<Option<IpAddr>, NetworkError> {
            (!s.is_empty())
                .then(|| s.parse::<IpAddr>())
                .transpose()
                .map_err(|_| invalid(field(f), format!("{s:?} is not an IP address")))
        };
        let gateway = ip(&r.gateway, "gateway")?;
        let source = ip(&r.source, "source")?;
        let v4 = destination
            .map(|d| d.addr.is_ipv4())
            .or(gateway.map(|g| g.is_ipv4()))
            .unwrap_or(true);
        for (f, a) in [("gateway", gateway), ("source", source)] {
            if a.is_some_and(|a| a.is_ipv4() != v4) {
                return Err(invalid(
                    field(f),
                    "mixes IPv4 and IPv6 with the destination",
                ));
            }
        }
        routes.push(RoutePlan {
            destination,
            gateway,
            source,
            mac,
        });
    }
    Ok((nics, routes))
}

/// rtnetlink with the errors of this module.
struct Rtnl(ember_netlink::Rtnl);

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        ember_netlink::Rtnl::open().map(Rtnl)
    }

    /// A change answered by an ACK; `EEXIST` counts as done.
    fn change(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: String,
    ) -> Result<(), NetworkError> {
        match self.0.request(msg, flags) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetworkError::Netlink { what, source }),
        }
    }

    /// (index, name, MAC) of every link.
    fn links(&mut self) -> Result<Vec<(u32, String, Vec<u8>)>, NetworkError> {
        let answers = self
            .0
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|source| NetworkError::Netlink {
                what: "list the network interfaces".into(),
                source,
            })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let mut name = String::new();
                    let mut mac = Vec::new();
                    for a in &l.attributes {
                        match a {
                            LinkAttribute::IfName(n) => name = n.clone(),
                            LinkAttribute::Address(m) => mac = m.clone(),
                            _ => {}
                        }
                    }
                    Some((l.header.index, name, mac))
                }
                _ => None,
            })
            .collect())
    }
}

fn family(a: &IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Applies a validated plan in this thread's network namespace.
pub fn apply(nics: &[NicPlan], routes: &[RoutePlan]) -> Result<(), NetworkError> {
    let mut rtnl = Rtnl::open().map_err(|source| NetworkError::Netlink {
        what: "open an rtnetlink socket".into(),
        source,
    })?;
    let links = rtnl.links()?;
    let index_of = |mac: &[u8; 6]| {
        links
            .iter()
            .find(|(_, _, m)| m == mac)
            .map(|l| (l.0, l.1.clone()))
    };
    let mut indexes = Vec::new();
    for (i, nic) in nics.iter().enumerate() {
        let Some((index, name)) = index_of(&nic.mac) else {
            return Err(NetworkError::NoSuchNic {
                field: format!("interfaces[{i}].mac"),
                mac: ember_sys::mac::format(&nic.mac),
                present: links
                    .iter()
                    .map(|(_, n, m)| format!("{n} {}", ember_sys::mac::format(m)))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        indexes.push((nic.mac, index));
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        if nic.mtu != 0 {
            link.attributes.push(LinkAttribute::Mtu(nic.mtu));
        }
        rtnl.change(
            RouteNetlinkMessage::SetLink(link),
            0,
            format!("bring {name} up (mtu {})", nic.mtu),
        )?;
        for a in &nic.addresses {
            let mut m = AddressMessage::default();
            m.header.family = family(&a.addr);
            m.header.prefix_len = a.prefix;
            m.header.scope = AddressScope::Universe;
            m.header.index = index;
            m.attributes.push(AddressAttribute::Local(a.addr));
            m.attributes.push(AddressAttribute::Address(a.addr));
            rtnl.change(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
                format!("add address {}/{} to {name}", a.addr, a.prefix),
            )?;
        }
    }
    for r in routes {
        let index = indexes
            .iter()
            .find(|(m, _)| *m == r.mac)
            .map(|(_, i)| *i)
            .expect("plan() checked the route's interface");
        let v4 = r
            .destination
            .map(|d| d.addr.is_ipv4())
            .or(r.gateway.map(|g| g.is_ipv4()))
            .unwrap_or(true);
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: if v4 {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            destination_prefix_length: r.destination.map(|d| d.prefix).unwrap_or(0),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if r.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..m.header
        };
        if let Some(d) = r.destination {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
        }
        if let Some(g) = r.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        if let Some(s) = r.source {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(s)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        let dest = r
            .destination
            .map(|d| format!("{}/{}", d.addr, d.prefix))
            .unwrap_or_else(|| "default".into());
        rtnl.change(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add route {dest}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(addrs: &[&str], routes: &[(&str, &str)]) -> pb::UpdateNetworkRequest {
        let mut r = pb::UpdateNetworkRequest::new();
        let mut i = pb::Interface::new();
        i.mac = "02:42:ac:11:00:02".into();
        i.mtu = 1400;
        i.addresses = addrs.iter().map(|s| s.to_string()).collect();
        r.interfaces.push(i);
        for (d, g) in routes {
            let mut rt = pb::Route::new();
            rt.destination = d.to_string();
            rt.gateway = g.to_string();
            rt.interface_mac = "02:42:ac:11:00:02".into();
            r.routes.push(rt);
        }
        r
    }

    #[test]
    fn requests_are_validated_with_the_field_named() {
        let (nics, routes) =
            plan(&req(&["10.88.0.5/16", "fd00::5/64"], &[("", "10.88.0.1")])).unwrap();
        assert_eq!(nics[0].mac, [2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(nics[0].addresses[0].prefix, 16);
        assert_eq!(routes[0].destination, None);
        let e = plan(&req(&["10.88.0.5/33"], &[])).unwrap_err().to_string();
        assert!(
            e.starts_with("interfaces[0].addresses[0]:") && e.contains("0 to 32"),
            "{e}"
        );
        let e = plan(&req(&["not-an-ip/8"], &[])).unwrap_err().to_string();
        assert!(e.contains("interfaces[0].addresses[0]"), "{e}");
        let mut bad = req(&[], &[]);
        bad.interfaces[0].mac = "02:42:ac:11:00".into();
        assert!(plan(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("interfaces[0].mac:"));
        let mut bad = req(&[], &[("", "10.0.0.1")]);
        bad.routes[0].interface_mac = "02:00:00:00:00:09".into();
        assert!(plan(&bad)
            .unwrap_err()
            .to_string()
            .contains("routes[0].interface_mac"));
        let e = plan(&req(&[], &[("10.0.0.0/8", "fd00::1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[0].gateway") && e.contains("mixes"),
            "{e}"
        );
        let mut bad = req(&[], &[]);
        bad.interfaces[0].mtu = 10;
        assert!(plan(&bad)
            .unwrap_err()
            .to_string()
            .contains("interfaces[0].mtu"));
    }
}
