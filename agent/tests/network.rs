//! UpdateNetwork through the real ttrpc API: an agent started in a test network namespace
//! configures a NIC found by its MAC (one end of a veth pair standing in for the microVM's
//! virtio-net NIC) with the pod's MTU, addresses and routes; repeating the call is fine; bad
//! requests fail naming the field. As root with iproute2; skips otherwise.

mod common;

use std::process::Command;

use common::{ctx, report_skip, TestAgent};
use ember_agent_protocol::agent as pb;

const MAC: &str = "02:42:ac:11:00:02";

/// A network namespace `ip netns add`-ed for the test, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn request(mac: &str) -> pb::UpdateNetworkRequest {
    let mut r = pb::UpdateNetworkRequest::new();
    let mut i = pb::Interface::new();
    i.mac = mac.into();
    i.mtu = 1400;
    i.addresses = vec!["10.77.0.5/24".into()];
    r.interfaces.push(i);
    for (dest, gw) in [("", "10.77.0.1"), ("10.99.0.0/16", "10.77.0.254")] {
        let mut rt = pb::Route::new();
        rt.destination = dest.into();
        rt.gateway = gw.into();
        rt.interface_mac = mac.into();
        r.routes.push(rt);
    }
    r
}

#[tokio::test]
async fn update_network_configures_the_nic_with_that_mac() {
    const TEST: &str = "update_network_configures_the_nic_with_that_mac";
    if !ember_tests::is_root() {
        return report_skip(TEST, "needs root (network namespaces)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return report_skip(TEST, "needs iproute2 (`ip`) to set the test namespace up");
    }
    let ns = Netns(format!("ember-agent-net-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "nic0", "address", MAC, "type", "veth", "peer", "name", "nic0p",
    ]);
    let agent =
        TestAgent::start_in(Some(std::path::Path::new(&format!("/run/netns/{}", ns.0)))).await;

    agent
        .agent
        .update_network(ctx(), &request(MAC))
        .await
        .unwrap();
    let link = ip(&["-n", &ns.0, "link", "show", "nic0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addr = ip(&["-n", &ns.0, "-4", "addr", "show", "nic0"]);
    assert!(addr.contains("inet 10.77.0.5/24"), "{addr}");
    let routes = ip(&["-n", &ns.0, "-4", "route"]);
    assert!(
        routes.contains("default via 10.77.0.1 dev nic0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.99.0.0/16 via 10.77.0.254 dev nic0"),
        "{routes}"
    );

    // Again: what is already there is not an error.
    agent
        .agent
        .update_network(ctx(), &request(MAC))
        .await
        .unwrap();

    let e = agent
        .agent
        .update_network(ctx(), &request("02:00:00:00:00:99"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interfaces[0].mac") && e.contains("nic0 02:42:ac:11:00:02"),
        "{e}"
    );
    let mut bad = request(MAC);
    bad.interfaces[0].addresses = vec!["10.77.0.5/40".into()];
    let e = agent
        .agent
        .update_network(ctx(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("interfaces[0].addresses[0]"), "{e}");
}
