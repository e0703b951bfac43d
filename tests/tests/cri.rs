//! The CRI client against the private containerd's CRI plugin, with the default runtime
//! (runc): a host-network pod with two containers, ExecSync, container logs, teardown.

use std::time::Duration;

use ember_tests::containerd::{self, Containerd, Options, CRI_NAMESPACE};
use ember_tests::cri::{self, ContainerConfig, Cri, PodConfig};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    containerd::unavailable()
        .or_else(cri::unavailable)
        .or_else(|| (!fixtures::busybox_available()).then(|| "busybox-static missing".into()))
}

/// A CRI-enabled containerd with the busybox image in `k8s.io`, and a client that sees it.
fn start(opts: Options) -> (Containerd, Cri) {
    let ctrd = Containerd::start(opts).unwrap();
    let tar = ctrd.scratch().join("busybox.tar");
    busybox_image_tar(&tar, IMAGE).unwrap();
    ctrd.import_image(&tar, CRI_NAMESPACE).unwrap();
    let cri = Cri::for_containerd(&ctrd).unwrap();
    cri.wait_for_image(IMAGE, Duration::from_secs(30)).unwrap();
    (ctrd, cri)
}

#[test]
fn runc_pod_with_two_containers_execs_and_logs() {
    let test = "runc_pod_with_two_containers_execs_and_logs";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    let (ctrd, cri) = start(Options::with_cri());

    assert!(cri
        .image_status("docker.io/library/not-imported:x")
        .unwrap()
        .is_none());
    let version = cri.version().unwrap();
    assert_eq!(version["runtime_name"], "containerd", "{version}");

    let p = cri::start_two_container_pod(
        &cri,
        &format!("pod-{}", std::process::id()),
        "",
        IMAGE,
        &ctrd.scratch().join("pod-logs"),
    )
    .unwrap();
    let pods = cri.list_pod_sandbox().unwrap();
    assert!(
        pods.iter()
            .any(|x| x["id"] == p.pod_id.as_str() && x["state"] == "SANDBOX_READY"),
        "{pods:?}"
    );
    for id in &p.ids {
        assert_eq!(cri.container_status(id).unwrap()["id"], id.as_str());
    }
    p.assert_exec_and_logs(&cri);
    p.tear_down(&cri, &|| ctrd.log_tail(40));
    assert!(cri.list_containers().unwrap().is_empty());
    let err = cri.container_status(&p.ids[0]).unwrap_err();
    assert!(
        matches!(&err, cri::CriError::Rpc { code, .. } if code == "NOT_FOUND"),
        "{err}"
    );
}

#[test]
fn ember_runtime_handler_reaches_the_ember_shim_binary() {
    let test = "ember_runtime_handler_reaches_the_ember_shim_binary";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    let shims = match containerd::runc_shim_as_ember() {
        Ok(d) => d,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    // The runc shim under the ember shim's name, found only through path_prepend: proves
    // that handler "ember" maps to runtime_type io.containerd.ember.v2 and its binary.
    let (ctrd, cri) = start(Options {
        path_prepend: vec![shims.path().to_path_buf()],
        ..Options::with_cri()
    });
    let pod = PodConfig::host_network(&format!("ember-pod-{}", std::process::id()), "ember");
    let pod_id = cri.run_pod_sandbox(&pod).unwrap();
    let c = ContainerConfig::new("c", IMAGE, &["sleep", "1000"]);
    let id = cri.create_container(&pod_id, &pod, &c).unwrap();
    cri.start_container(&id).unwrap();
    let out = cri
        .exec_sync(&id, &["cat", "/proc/1/cmdline"], Duration::from_secs(30))
        .unwrap();
    // The pod shares one PID namespace (CRI's default, NamespaceMode POD): its PID 1 is the
    // sandbox container, the pause stand-in image.
    let pid1 = out.stdout_str();
    assert!(pid1.contains(ember_tests::image::PAUSE_SCRIPT), "{pid1:?}");
    let info = ctrd
        .ctr_ns_ok(CRI_NAMESPACE, &["containers", "info", &pod_id])
        .unwrap();
    assert!(info.contains(containerd::EMBER_RUNTIME), "{info}");
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    assert!(cri.list_containers().unwrap().is_empty());
}
