//! Pod networking of the `microvm` backend: the tap the VM's virtio-net uses, created in the
//! pod's network namespace and joined to the pod's interface (the one CNI made, `eth0`)
//! with tc, as Kata Containers' "tcfilter" model does:
//!
//! ```text
//! tc qdisc add dev eth0 ingress
//! tc filter add dev eth0 parent ffff: protocol all pref 58288 \
//!     u32 match u32 0 0 action mirred egress redirect dev ember_tap0
//! (and the same from ember_tap0 to eth0)
//! ```
//!
//! Every frame arriving on `eth0` goes out of the tap into the guest and back, so the guest
//! owns the pod's address: its NIC gets `eth0`'s MAC, and `eth0`'s addresses and routes
//! ([`PodNetwork`]) are what the guest has to configure. (The `process` backend's agent
//! joins the pod namespace directly and needs none of this.)
//!
//! Talks rtnetlink with `netlink-packet-route` messages over `ember-netlink`'s blocking
//! socket (shared with the agent), opened in a thread that entered the namespace: no async runtime is needed, so cleanup (synchronous, possibly
//! inside the shim's runtime) uses the same code. The tap itself is made with the tun
//! ioctls, because the kernel does not create tun/tap devices over rtnetlink.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ember_netlink::netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use ember_netlink::netlink_packet_route::address::{
    AddressAttribute, AddressMessage, AddressScope,
};
use ember_netlink::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use ember_netlink::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType,
};
use ember_netlink::netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use ember_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// The tap ember creates in a pod's network namespace (one VM per pod namespace).
pub const TAP_NAME: &str = "ember_tap0";
/// The interface ember connects the tap to when the namespace has one of this name.
pub const POD_INTERFACE: &str = "eth0";
/// The tc priority (`pref`) of ember's redirect filters. Cleanup removes only filters at
/// this priority, so filters of other software on the same interfaces are left alone.
pub const FILTER_PRIORITY: u16 = 0xe3b0;
/// The parent of filters on an ingress qdisc (`ffff:`).
const INGRESS_PARENT: u32 = 0xffff_0000;
/// `ETH_P_ALL`.
const ETH_P_ALL: u16 = 0x0003;
/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// Errors setting up or removing a pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The pod's network namespace cannot be entered.
    #[error(transparent)]
    Netns(#[from] ember_sys::netns::NetnsError),
    /// An rtnetlink request failed.
    #[error("{what}{}: {source}", in_ns(.netns))]
    Netlink {
        /// What was attempted (`add ingress qdisc on eth0`).
        what: String,
        /// The namespace, when not the host's.
        netns: Option<PathBuf>,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The tap could not be created.
    #[error("cannot create tap {name}{}: {what}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)", in_ns(.netns))]
    Tap {
        /// The tap name.
        name: String,
        /// The namespace, when not the host's.
        netns: Option<PathBuf>,
        /// Which step failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The namespace has no interface to connect the VM to.
    #[error("network namespace {netns} has no interface besides lo to connect the VM to (the pod's CNI plugin normally creates {POD_INTERFACE})")]
    NoInterface {
        /// The namespace.
        netns: PathBuf,
    },
}

fn in_ns(netns: &Option<PathBuf>) -> String {
    match netns {
        Some(p) => format!(" in network namespace {}", p.display()),
        None => String::new(),
    }
}

/// An address with its prefix length (`10.1.2.3/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A route of the pod's interface, as the guest should have it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodRoute {
    /// The destination; `None` is the default route.
    pub destination: Option<IpNet>,
    /// The next hop, for routes through a gateway.
    pub gateway: Option<IpAddr>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
}

impl fmt::Display for PodRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = &self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(s) = &self.source {
            write!(f, " src {s}")?;
        }
        Ok(())
    }
}

/// The pod interface the VM's NIC stands in for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodInterface {
    /// Its name in the pod namespace (`eth0`).
    pub name: String,
    /// Its index in the pod namespace.
    pub index: u32,
    /// Its MAC address, which the guest's NIC takes over.
    pub mac: [u8; 6],
    /// Its MTU, which the tap (and the guest's NIC) should use.
    pub mtu: u32,
    /// Its addresses (IPv6 link-local ones left out: the guest makes its own).
    pub addresses: Vec<IpNet>,
}

impl PodInterface {
    /// The MAC as `aa:bb:cc:dd:ee:ff` ([`ember_sys::mac::format`]).
    pub fn mac_string(&self) -> String {
        ember_sys::mac::format(&self.mac)
    }
}

/// The network of one pod as the VM sees it: the tap, the interface it is joined to, and
/// what the guest must configure on its NIC.
///
/// The agent protocol has no interface/route RPC yet, so nothing pushes this into the
/// guest today; the backend exposes it for when it has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodNetwork {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The tap's name (in `netns`).
    pub tap: String,
    /// The pod interface the tap is joined to.
    pub interface: PodInterface,
    /// The routes through that interface (main table, unicast).
    pub routes: Vec<PodRoute>,
}

/// Runs `f` in network namespace `netns` (on a thread of its own, see
/// [`ember_sys::netns::run_in`]), or right here without one.
fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    match netns {
        Some(ns) => ember_sys::netns::run_in(ns, f)?,
        None => f(),
    }
}

/// ember-netlink's socket with the namespace named in errors.
struct Rtnl {
    nl: ember_netlink::Rtnl,
    netns: Option<PathBuf>,
}

impl Rtnl {
    fn open(netns: Option<&Path>) -> Result<Rtnl, NetworkError> {
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

    fn err(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError + '_ {
        let what = what.into();
        move |source| NetworkError::Netlink {
            what,
            netns: self.netns.clone(),
            source,
        }
    }

    /// A request answered by an ACK.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.nl.request(msg, flags)
    }

    /// A dump request.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.nl.dump(msg)
    }

    fn links(&mut self) -> Result<Vec<Link>, NetworkError> {
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
    fn ingress_filters(&mut self, index: u32, name: &str) -> Result<Vec<TcMessage>, NetworkError> {
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

/// What ember needs to know of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
    mtu: u32,
    loopback: bool,
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
fn pick_interface<'a>(links: &'a [Link], tap: &str) -> Option<&'a Link> {
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
fn is_ember_filter(filter: &TcMessage) -> bool {
    (filter.header.info >> 16) as u16 == FILTER_PRIORITY
}

/// The addresses of interface `index` among an address dump (IPv6 link-local left out).
fn interface_addresses(answers: &[RouteNetlinkMessage], index: u32) -> Vec<IpNet> {
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
fn interface_routes(answers: &[RouteNetlinkMessage], index: u32) -> Vec<PodRoute> {
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

/// Creates persistent tap `name` in the calling thread's namespace (or reuses it), with
/// the flags the VMM opens it with ([`ember_sys::tap::FLAGS`]), so it outlives this
/// function and the VMM attaches to it by name.
fn create_persistent_tap(name: &str, netns: Option<&Path>) -> Result<(), NetworkError> {
    use ember_sys::tap::{Tap, TapError};
    let err = |e: TapError| {
        let (what, source) = match e {
            TapError::BadName(_) => (
                "name",
                io::Error::new(io::ErrorKind::InvalidInput, "must be 1 to 15 bytes"),
            ),
            TapError::OpenTun(e) => ("open /dev/net/tun", e),
            TapError::Ioctl { what, source, .. } => (what, source),
        };
        NetworkError::Tap {
            name: name.to_string(),
            netns: netns.map(Path::to_path_buf),
            what,
            source,
        }
    };
    Tap::open(name, false)
        .and_then(|tap| tap.set_persist(true))
        .map_err(err)
}

/// Creates tap `tap` in the pod's network namespace `netns`, joins it to the pod's
/// interface with ingress redirects both ways, and returns what the guest must configure.
///
/// The caller records [`crate::state::Resource::Tap`] first; [`delete_tap`] undoes all
/// of this (filters included), also after a partial setup.
pub fn setup_pod_network(netns: &Path, tap: &str) -> Result<PodNetwork, NetworkError> {
    in_netns(Some(netns), || {
        let mut nl = Rtnl::open(Some(netns))?;
        let links = nl.links()?;
        let pod =
            pick_interface(&links, tap)
                .cloned()
                .ok_or_else(|| NetworkError::NoInterface {
                    netns: netns.to_path_buf(),
                })?;
        let addrs = nl
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .map_err(nl.err("list addresses"))?;
        let mut get_routes = RouteMessage::default();
        get_routes.header.address_family = AddressFamily::Unspec;
        let routes = nl
            .dump(RouteNetlinkMessage::GetRoute(get_routes))
            .map_err(nl.err("list routes"))?;
        let interface = PodInterface {
            name: pod.name.clone(),
            index: pod.index,
            mac: pod.mac.unwrap_or_default(),
            mtu: pod.mtu,
            addresses: interface_addresses(&addrs, pod.index),
        };
        let routes = interface_routes(&routes, pod.index);

        create_persistent_tap(tap, Some(netns))?;
        let tap_index = nl
            .links()?
            .into_iter()
            .find(|l| l.name == tap)
            .map(|l| l.index)
            .ok_or_else(|| NetworkError::Tap {
                name: tap.to_string(),
                netns: Some(netns.to_path_buf()),
                what: "find it after creating it",
                source: io::ErrorKind::NotFound.into(),
            })?;
        nl.request(
            RouteNetlinkMessage::SetLink(link_up_message(tap_index, pod.mtu)),
            0,
        )
        .map_err(nl.err(format!("bring up {tap} with mtu {}", pod.mtu)))?;
        for (index, name) in [(pod.index, pod.name.as_str()), (tap_index, tap)] {
            // Stale filters of a sandbox that crashed before its cleanup would shadow ours.
            remove_ember_filters(&mut nl, index, name, |_| true)?;
            match nl.request(
                RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(index)),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r.map_err(nl.err(format!("add an ingress qdisc to {name}")))?,
            }
        }
        for (from, to, from_name, to_name) in [
            (pod.index, tap_index, pod.name.as_str(), tap),
            (tap_index, pod.index, tap, pod.name.as_str()),
        ] {
            nl.request(
                RouteNetlinkMessage::NewTrafficFilter(redirect_filter_message(from, to)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(nl.err(format!(
                "add the tc filter redirecting {from_name} to {to_name}"
            )))?;
        }
        Ok(PodNetwork {
            netns: netns.to_path_buf(),
            tap: tap.to_string(),
            interface,
            routes,
        })
    })
}

/// Removes ember's filters from the ingress of interface `index` when `matches` says so
/// for their redirect target; returns whether any were removed.
fn remove_ember_filters(
    nl: &mut Rtnl,
    index: u32,
    name: &str,
    matches: impl Fn(Option<u32>) -> bool,
) -> Result<bool, NetworkError> {
    let filters = nl.ingress_filters(index, name)?;
    let ours = filters
        .iter()
        .any(|f| is_ember_filter(f) && mirred_target(f).is_some() && matches(mirred_target(f)));
    if !ours {
        return Ok(false);
    }
    match nl.request(
        RouteNetlinkMessage::DelTrafficFilter(delete_filters_message(index)),
        0,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        r => r.map_err(nl.err(format!("remove ember's tc filters from {name}")))?,
    }
    Ok(true)
}

/// The tc filters on the ingress of interface `name` in `netns` that redirect somewhere:
/// `(priority, target ifindex)` pairs (for tests and diagnostics).
pub fn redirect_filters(netns: &Path, name: &str) -> Result<Vec<(u16, u32)>, NetworkError> {
    in_netns(Some(netns), || {
        let mut nl = Rtnl::open(Some(netns))?;
        let Some(link) = nl.links()?.into_iter().find(|l| l.name == name) else {
            return Ok(Vec::new());
        };
        Ok(nl
            .ingress_filters(link.index, name)?
            .iter()
            .filter_map(|f| mirred_target(f).map(|t| ((f.header.info >> 16) as u16, t)))
            .collect())
    })
}

/// The index of interface `name` in `netns`, if it exists (for tests and diagnostics).
pub fn interface_index(netns: &Path, name: &str) -> Result<Option<u32>, NetworkError> {
    in_netns(Some(netns), || {
        let mut nl = Rtnl::open(Some(netns))?;
        Ok(nl
            .links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index))
    })
}

/// Deletes tap `name` (in network namespace `netns`, or the host's) and ember's tc
/// redirects into it from other interfaces (also ones left pointing nowhere because the
/// tap went first), and the ingress qdiscs those leave empty. A tap that is already gone,
/// or a namespace that no longer exists, counts as deleted.
pub fn delete_tap(name: &str, netns: Option<&Path>) -> Result<(), NetworkError> {
    if let Some(ns) = netns {
        if !ns.exists() {
            return Ok(());
        }
    }
    in_netns(netns, || {
        let mut nl = Rtnl::open(netns)?;
        let links = nl.links()?;
        let tap = links.iter().find(|l| l.name == name).map(|l| l.index);
        let exists = |i: u32| links.iter().any(|l| l.index == i);
        for l in links.iter().filter(|l| Some(l.index) != tap && !l.loopback) {
            let removed = remove_ember_filters(&mut nl, l.index, &l.name, |target| {
                target.is_some_and(|t| Some(t) == tap || !exists(t))
            })?;
            if removed && nl.ingress_filters(l.index, &l.name)?.is_empty() {
                let mut q = ingress_qdisc_message(l.index);
                q.attributes.clear();
                match nl.request(RouteNetlinkMessage::DelQueueDiscipline(q), 0) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
                    r => r.map_err(nl.err(format!("remove the ingress qdisc of {}", l.name)))?,
                }
            }
        }
        if let Some(index) = tap {
            let mut m = LinkMessage::default();
            m.header.index = index;
            match nl.request(RouteNetlinkMessage::DelLink(m), 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                r => r.map_err(nl.err(format!("delete tap {name}")))?,
            }
        }
        Ok(())
    })
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
        let up = link_up_message(9, 1450);
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

    #[test]
    fn missing_namespace_counts_as_deleted() {
        delete_tap(TAP_NAME, Some(Path::new("/nonexistent/ember-netns"))).unwrap();
    }
}
