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
//!
//! One concern per module: [`rtnl`] (the socket and the namespace thread), [`link`] (which
//! interface is the pod's), [`routes`] (what the guest must configure), [`tc`] (the
//! redirect filters).

mod link;
mod routes;
mod rtnl;
mod tc;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ember_netlink::netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use ember_netlink::netlink_packet_route::address::AddressMessage;
use ember_netlink::netlink_packet_route::link::LinkMessage;
use ember_netlink::netlink_packet_route::route::RouteMessage;
use ember_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub use link::link_up_message;
pub use tc::{
    delete_filters_message, ingress_qdisc_message, mirred_target, redirect_filter_message,
    FILTER_PRIORITY,
};

use link::pick_interface;
use routes::{interface_addresses, interface_routes};
use rtnl::{in_netns, Rtnl};
use tc::is_ember_filter;

/// The tap ember creates in a pod's network namespace (one VM per pod namespace).
pub const TAP_NAME: &str = "ember_tap0";
/// The interface ember connects the tap to when the namespace has one of this name.
pub const POD_INTERFACE: &str = "eth0";

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
    /// The namespace is the host's own (Docker's and Podman's `--network host` pass it as a
    /// path): joining it would redirect the host's own interface into the VM.
    #[error("network namespace {netns} is the host's own: a microVM cannot share the host's network (this is what `--network host` asks of Docker and Podman); use `--network none` or a network namespace of the container's own, or the process backend (`[sandbox] backend = \"process\"`), whose containers can share the host's network")]
    HostNamespace {
        /// The namespace.
        netns: PathBuf,
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
    if is_host_namespace(netns) {
        return Err(NetworkError::HostNamespace {
            netns: netns.to_path_buf(),
        });
    }
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

/// Whether `netns` is the network namespace of this process or of the host's init (PID 1):
/// the same nsfs inode. Such a namespace is never a pod's, and redirecting its interface
/// into a VM would cut the host off its network. An unreadable path is not the host's (the
/// setup then fails on entering it, naming it).
pub fn is_host_namespace(netns: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(theirs) = id(netns) else {
        return false;
    };
    ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|own| id(Path::new(own)) == Some(theirs))
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

/// Whether `netns` has an interface [`setup_pod_network`] would connect the VM to (one
/// besides `lo` and the tap `tap`): what decides whether a network namespace that a hook
/// (Docker's `libnetwork-setkey`) may have filled is a pod network at all.
pub fn has_pod_interface(netns: &Path, tap: &str) -> Result<bool, NetworkError> {
    in_netns(Some(netns), || {
        let mut nl = Rtnl::open(Some(netns))?;
        Ok(pick_interface(&nl.links()?, tap).is_some())
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

    #[test]
    fn the_hosts_own_namespace_is_refused_before_anything_is_made() {
        // The checks read only nsfs inodes: no root needed.
        assert!(is_host_namespace(Path::new("/proc/self/ns/net")));
        assert!(!is_host_namespace(Path::new("/nonexistent/ember-netns")));
        // Any other namespace file (here a different nsfs kind) is not the host's network.
        assert!(!is_host_namespace(Path::new("/proc/self/ns/mnt")));
        let e = setup_pod_network(Path::new("/proc/self/ns/net"), "ember_tst0").unwrap_err();
        assert!(matches!(e, NetworkError::HostNamespace { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("/proc/self/ns/net") && msg.contains("--network none"),
            "{msg}"
        );
        // Nothing was created: no such tap in this namespace.
        assert!(!Path::new("/sys/class/net/ember_tst0").exists());
    }

    #[test]
    fn missing_namespace_counts_as_deleted() {
        delete_tap(TAP_NAME, Some(Path::new("/nonexistent/ember-netns"))).unwrap();
    }
}
