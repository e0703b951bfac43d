//! The private containerd harness and the offline busybox image, checked with containerd's
//! own runc shim (`io.containerd.runc.v2`).

use std::path::Path;

use ember_tests::containerd::{self, Containerd, Options, RUNC_RUNTIME};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";

fn can_run(test: &str) -> bool {
    if let Some(why) = containerd::unavailable() {
        skip(test, &why);
        return false;
    }
    if !fixtures::busybox_available() {
        skip(
            test,
            "busybox-static is not installed (apt-get install busybox-static)",
        );
        return false;
    }
    true
}

/// A unique container id, since runc's state dir (/run/containerd/runc/<ns>) is shared with
/// any other containerd on the host.
fn cid(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

#[test]
fn image_tarball_is_deterministic_and_well_formed() {
    if !fixtures::busybox_available() {
        skip(
            "image_tarball_is_deterministic_and_well_formed",
            "busybox-static is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    let da = busybox_image_tar(&a, IMAGE).unwrap();
    let db = busybox_image_tar(&b, IMAGE).unwrap();
    assert_eq!(da, db, "digests differ between two builds");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "tarballs differ"
    );
    assert_ne!(
        da.layer, da.diff_id,
        "diff_id must be the uncompressed digest"
    );

    let mut names = Vec::new();
    let mut index = None;
    let mut ar = tar::Archive::new(std::fs::File::open(&a).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "index.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            index = Some(serde_json::from_str::<serde_json::Value>(&s).unwrap());
        }
        names.push(name);
    }
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    for d in [&da.layer, &da.config, &da.manifest] {
        let blob = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        assert!(names.contains(&blob), "{blob} missing from {names:?}");
    }
    let m = &index.expect("index.json")["manifests"][0];
    assert_eq!(m["digest"], da.manifest.as_str());
    assert_eq!(m["annotations"]["io.containerd.image.name"], IMAGE);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "ember"
    );
}

#[test]
fn runc_container_runs_from_imported_image_and_drop_leaves_nothing() {
    let test = "runc_container_runs_from_imported_image_and_drop_leaves_nothing";
    if !can_run(test) {
        return;
    }
    let ctrd = Containerd::start(Options::default()).unwrap();
    let tar = ctrd.scratch().join("busybox.tar");
    busybox_image_tar(&tar, IMAGE).unwrap();
    ctrd.import_image(&tar, containerd::DEFAULT_NAMESPACE)
        .unwrap();
    assert!(ctrd.ctr_ok(&["image", "ls", "-q"]).unwrap().contains(IMAGE));

    let id = cid("hi");
    let out = ctrd
        .ctr_ok(&[
            "run",
            "--rm",
            "--runtime",
            RUNC_RUNTIME,
            IMAGE,
            &id,
            "echo",
            "hi",
        ])
        .unwrap();
    assert_eq!(out.trim(), "hi");

    // Leave a running container (and so a shim and a rootfs mount) for Drop to clean up.
    let id = cid("sleeper");
    ctrd.ctr_ok(&["run", "-d", IMAGE, &id, "sleep", "1000"])
        .unwrap();
    let root = ctrd.scratch().to_path_buf();
    let sock_dir = ctrd.address().parent().unwrap().to_path_buf();
    let mut pids = ctrd.shim_pids();
    assert!(!pids.is_empty(), "no shim found for the running container");
    pids.push(ctrd.pid().unwrap());
    assert!(
        !containerd::mounts_under(&root).is_empty(),
        "expected the container's rootfs mount under {}",
        root.display()
    );
    drop(ctrd);

    let left = containerd::mounts_under(&root);
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    let alive: Vec<_> = pids
        .into_iter()
        .filter(|p| containerd::process_alive(*p))
        .collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
    assert!(!root.exists(), "{} not removed", root.display());
    assert!(!sock_dir.exists(), "{} not removed", sock_dir.display());
    assert!(containerd::processes_mentioning(&sock_dir.to_string_lossy()).is_empty());
}

#[test]
fn start_fails_with_the_log_when_containerd_cannot_start() {
    let test = "start_fails_with_the_log_when_containerd_cannot_start";
    if !can_run(test) {
        return;
    }
    // A containerd that is not containerd: `false` exits at once.
    let opts = Options {
        containerd: Path::new("false").into(),
        ..Options::default()
    };
    let err = Containerd::start(opts).unwrap_err();
    assert!(
        matches!(err, containerd::ContainerdError::Exited { .. }),
        "{err}"
    );
}

#[test]
fn ember_runtime_resolves_to_a_shim_in_path_prepend() {
    let test = "ember_runtime_resolves_to_a_shim_in_path_prepend";
    if !can_run(test) {
        return;
    }
    let shims = match containerd::runc_shim_as_ember() {
        Ok(d) => d,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    // Stand in for the ember shim: containerd maps io.containerd.ember.v2 to the binary
    // containerd-shim-ember-v2, here the runc shim under that name, only in `shims`.
    let ctrd = Containerd::start(Options {
        path_prepend: vec![shims.path().to_path_buf()],
        ..Options::default()
    })
    .unwrap();
    let tar = ctrd.scratch().join("busybox.tar");
    busybox_image_tar(&tar, IMAGE).unwrap();
    ctrd.import_image(&tar, containerd::DEFAULT_NAMESPACE)
        .unwrap();
    let id = cid("via-ember-name");
    let out = ctrd
        .ctr_ok(&[
            "run",
            "--rm",
            "--runtime",
            containerd::EMBER_RUNTIME,
            IMAGE,
            &id,
            "echo",
            "found",
        ])
        .unwrap();
    assert_eq!(out.trim(), "found");
}
