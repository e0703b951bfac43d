//! The pod network of the `microvm` backend against the real kernel: a network namespace
//! with a veth end as `eth0` (as a CNI plugin leaves it), the tap and tc redirects set up
//! in it, and cleanup through the state record removing them again.
//!
//! Needs root and iproute2 (to make the namespace and veth pair, as CNI would); skips,
//! saying why, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use ember_runtime::network::{self, FILTER_PRIORITY, TAP_NAME};
use ember_runtime::state::{Resource, SandboxState};

fn skip_unless_root(test: &str) -> bool {
    if !ember_tests::is_root() {
        ember_tests::skip(test, "needs root (network namespaces, taps, tc)");
        return true;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        ember_tests::skip(test, "iproute2 missing (apt-get install iproute2)");
        return true;
    }
    false
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace with `eth0` (10.123.0.2/24, default via 10.123.0.1) whose
/// veth peer stays in the namespace; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("ember-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        run(&[
            "ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        run(&["ip", "-n", n, "link", "set", "eth0", "mtu", "1400"]);
        run(&["ip", "-n", n, "addr", "add", "10.123.0.2/24", "dev", "eth0"]);
        run(&["ip", "-n", n, "link", "set", "peer0", "up"]);
        run(&["ip", "-n", n, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            "10.123.0.1",
        ]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn tc(&self, what: &str, dev: &str) -> String {
        let mut args = vec!["tc", "-n", &self.name, what, "show", "dev", dev];
        if what == "filter" {
            args.push("ingress");
        }
        run(&args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn tap_is_joined_to_eth0_with_tc_redirects_and_cleanup_removes_them() {
    const TEST: &str = "tap_is_joined_to_eth0_with_tc_redirects_and_cleanup_removes_them";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = Netns::new("pn");
    let path = ns.path();
    let tmp = tempfile::tempdir().unwrap();
    let mut state = SandboxState::create(tmp.path(), "podnet", "microvm").unwrap();
    state
        .add(Resource::Tap {
            name: TAP_NAME.into(),
            netns: Some(path.clone()),
        })
        .unwrap();
    let net = network::setup_pod_network(&path, TAP_NAME).unwrap();

    assert_eq!(net.tap, TAP_NAME);
    assert_eq!(net.interface.name, "eth0");
    assert_eq!(net.interface.mtu, 1400);
    let addrs: Vec<String> = net
        .interface
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(addrs, ["10.123.0.2/24"]);
    let routes: Vec<String> = net.routes.iter().map(ToString::to_string).collect();
    assert!(
        routes.iter().any(|r| r == "default via 10.123.0.1"),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r.starts_with("10.123.0.0/24")),
        "{routes:?}"
    );
    let link = run(&["ip", "-n", &ns.name, "link", "show", "eth0"]);
    assert!(link.contains(&net.interface.mac_string()), "{link}");

    let tap = network::interface_index(&path, TAP_NAME)
        .unwrap()
        .expect("the tap exists in the pod namespace");
    let eth0 = network::interface_index(&path, "eth0").unwrap().unwrap();
    assert_eq!(
        network::redirect_filters(&path, "eth0").unwrap(),
        vec![(FILTER_PRIORITY, tap)]
    );
    assert_eq!(
        network::redirect_filters(&path, TAP_NAME).unwrap(),
        vec![(FILTER_PRIORITY, eth0)]
    );
    let shown = ns.tc("filter", "eth0");
    assert!(
        shown.contains("protocol all")
            && shown.contains(&format!("mirred (Egress Redirect to device {TAP_NAME})")),
        "{shown}"
    );
    let tap_link = run(&["ip", "-n", &ns.name, "-d", "link", "show", TAP_NAME]);
    assert!(
        tap_link.contains("mtu 1400") && tap_link.contains("tun type tap"),
        "{tap_link}"
    );

    // The VMM attaches to the persistent tap by name, as Vm::new does.
    let opened = ember_vmm::devices::virtio::net::tap::Tap::open(TAP_NAME, Some(&path)).unwrap();
    drop(opened);
    assert!(
        network::interface_index(&path, TAP_NAME).unwrap().is_some(),
        "the tap outlives the VMM's file"
    );

    state.cleanup().unwrap();
    assert_eq!(network::interface_index(&path, TAP_NAME).unwrap(), None);
    assert!(network::redirect_filters(&path, "eth0").unwrap().is_empty());
    let qdiscs = ns.tc("qdisc", "eth0");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // Cleanup twice is fine (a crash between cleanup steps).
    network::delete_tap(TAP_NAME, Some(&path)).unwrap();
}

#[test]
fn redirects_left_pointing_at_a_vanished_tap_are_removed() {
    const TEST: &str = "redirects_left_pointing_at_a_vanished_tap_are_removed";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = Netns::new("pv");
    let path = ns.path();
    network::setup_pod_network(&path, TAP_NAME).unwrap();
    // Someone else's filter on eth0 at another priority (a mirror to peer0) stays.
    run(&[
        "tc", "-n", &ns.name, "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "ip",
        "pref", "7", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
        "dev", "peer0",
    ]);
    run(&["ip", "-n", &ns.name, "link", "del", TAP_NAME]);
    let dangling = ns.tc("filter", "eth0");
    assert!(
        dangling.contains("Egress Redirect to device *"),
        "{dangling}"
    );
    network::delete_tap(TAP_NAME, Some(&path)).unwrap();
    let peer0 = network::interface_index(&path, "peer0").unwrap().unwrap();
    assert_eq!(
        network::redirect_filters(&path, "eth0").unwrap(),
        vec![(7, peer0)]
    );
    let left = ns.tc("filter", "eth0");
    assert!(
        left.contains("pref 7") && left.contains("Mirror") && !left.contains("Redirect"),
        "{left}"
    );
    // Setting up again over the same namespace works (a restarted sandbox).
    network::setup_pod_network(&path, TAP_NAME).unwrap();
    network::delete_tap(TAP_NAME, Some(&path)).unwrap();
}

#[test]
fn namespace_without_an_interface_is_reported() {
    const TEST: &str = "namespace_without_an_interface_is_reported";
    if skip_unless_root(TEST) {
        return;
    }
    let name = format!("ember-pe-{}", std::process::id());
    run(&["ip", "netns", "add", &name]);
    let path = Path::new("/run/netns").join(&name);
    let e = network::setup_pod_network(&path, TAP_NAME)
        .unwrap_err()
        .to_string();
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("no interface besides lo"),
        "{e}"
    );
}
