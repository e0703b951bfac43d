//! Installed defaults just work: after `scripts/install.sh` (the body of `make install`:
//! the binaries in `/usr/local/bin`, the guest assets in `/usr/share/ember`, the default
//! config in `/etc/ember/config.toml`, whose backend is `microvm`), with no other
//! configuration (no `EMBER_CONFIG`, no runtime options, the shim found on containerd's
//! `PATH`):
//! - `ember run --bundle` of a bundle from `runc spec` (args and terminal changed);
//! - `ctr run --rm --runtime io.containerd.ember.v2 IMAGE id cmd`: stdout and exit codes;
//! - a CRI pod of two containers (runtime handler `ember`, declared the way the install
//!   notes say, without options) and an exec in each, through containerd's CRI plugin.
//!
//! The test installs into the system's directories, so it runs only where that is thrown
//! away: inside the nested KVM test host, whose root is an overlay on a tmpfs
//! (`scripts/run-tests.sh` runs it there on hosts without hardware virtualization). On a
//! host with hardware virtualization it says `SKIP` unless `EMBER_TEST_INSTALL=1` allows it
//! to install there.
//!
//! It installs the binaries of the test build (`target/debug`), not a release build: what
//! it checks is the installed layout and defaults, not the optimiser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::containerd::{
    self, Containerd, Options, CRI_NAMESPACE, DEFAULT_NAMESPACE, EMBER_RUNTIME, EMBER_SHIM,
    SANDBOX_IMAGE,
};
use ember_tests::cri::{self, Cri};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, guest, kvm_host, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";
/// Where `scripts/install.sh` puts the binaries (its default `PREFIX`).
const BIN: &str = "/usr/local/bin";
/// How long one step may take: everything runs under TCG in the nested host.
const STEP: Duration = Duration::from_secs(300);

/// Why the installed-defaults test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !kvm_host::inside() && std::env::var("EMBER_TEST_INSTALL").as_deref() != Ok("1") {
        return Some(format!(
            "installs ember into {BIN}, /usr/share/ember and /etc/ember: runs in the nested KVM test host, or here with EMBER_TEST_INSTALL=1"
        ));
    }
    if let Some(why) = containerd::unavailable() {
        return Some(why);
    }
    if let Some(why) = cri::unavailable() {
        return Some(why);
    }
    if !fixtures::busybox_available() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    if containerd::which("runc").is_none() {
        return Some(
            "runc is not installed (apt-get install runc): the bundle comes from `runc spec`"
                .into(),
        );
    }
    if containerd::workspace_binary("ember").is_none() {
        return Some("ember is not built: run `cargo build --workspace --bins`".into());
    }
    if guest::kernel().is_none() || guest::initramfs().is_none() {
        return Some("the guest assets are not built: run `make guest`".into());
    }
    None
}

/// Runs `scripts/install.sh` on the test build and the guest assets of `make guest`.
fn install() {
    let build = containerd::workspace_binary("ember")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("checked by unavailable()");
    let guest_dir = guest::workspace_root().join("build/guest");
    let out = Command::new(guest::workspace_root().join("scripts/install.sh"))
        .arg(&build)
        .arg(&guest_dir)
        .env_remove("DESTDIR")
        .env_remove("PREFIX")
        // The debug binaries are 700 MB with their debug info, all of it in the nested
        // host's RAM (its root is an overlay on a tmpfs).
        .env("STRIP", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        format!("{BIN}/ember"),
        format!("{BIN}/{EMBER_SHIM}"),
        "/usr/share/ember/vmlinux".into(),
        "/usr/share/ember/initramfs.cpio".into(),
        "/etc/ember/config.toml".into(),
    ] {
        assert!(Path::new(&f).is_file(), "{f} was not installed");
    }
    let config = std::fs::read_to_string("/etc/ember/config.toml").unwrap();
    assert!(
        config.contains("backend = \"microvm\""),
        "the default config does not choose the microvm backend:\n{config}"
    );
}

/// `cmd` with no ember setting from the test's environment: the installed defaults only.
fn plain(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for k in [
        "EMBER_CONFIG",
        "EMBER_SHIM_DIR",
        "EMBER_GUEST_KERNEL",
        "EMBER_GUEST_INITRD",
    ] {
        c.env_remove(k);
    }
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ember run --bundle` of a `runc spec` bundle, with the installed `ember`.
fn ember_run_of_a_runc_spec_bundle(scratch: &Path) {
    let bundle = scratch.join("bundle");
    fixtures::busybox_rootfs(&bundle.join("rootfs")).unwrap();
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec: {}", text(&out.stderr));
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] =
        serde_json::json!(["/bin/sh", "-c", "echo hi from $(uname -r); exit 7"]);
    fixtures::write_spec(&bundle, &spec).unwrap();

    let out = run_with_timeout(
        plain(format!("{BIN}/ember"))
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--id")
            .arg(format!("installed-run-{}", std::process::id())),
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "ember run: stdout {stdout:?}, stderr: {}",
        text(&out.stderr)
    );
    // The container ran in the guest kernel, not on the host's.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let line = stdout.trim();
    assert!(line.starts_with("hi from "), "{stdout:?}");
    assert_ne!(
        line.trim_start_matches("hi from "),
        host_release.trim(),
        "the container ran on the host's kernel: the installed default is not a microVM"
    );
}

/// Runs `cmd` to its end, killing it after [`STEP`].
fn run_with_timeout(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > STEP {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The path of the executable of process `pid`.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

mod hw_kvm {
    use super::*;

    #[test]
    fn installed_defaults_just_work() {
        const TEST: &str = "hw_kvm::installed_defaults_just_work";
        if !ember_tests::hw_kvm_runs_here(TEST) {
            return;
        }
        if let Some(why) = unavailable() {
            skip(TEST, &why);
            return;
        }
        install();
        let scratch = tempfile::tempdir().unwrap();
        ember_run_of_a_runc_spec_bundle(scratch.path());

        // containerd finds the installed shim on its PATH; the CRI runtime `ember` has no
        // options, so the shim reads /etc/ember/config.toml.
        let ctrd = Containerd::start(Options {
            start_timeout: Duration::from_secs(150),
            ..Options::with_cri()
        })
        .unwrap();
        ctrd.set_ctr_timeout(STEP);
        let config = std::fs::read_to_string(ctrd.config_path()).unwrap();
        assert!(!config.contains("ConfigPath"), "{config}");
        let tar = ctrd.scratch().join("busybox.tar");
        busybox_image_tar(&tar, IMAGE).unwrap();
        for ns in [DEFAULT_NAMESPACE, CRI_NAMESPACE] {
            ctrd.import_image(&tar, ns).unwrap();
        }

        let id = format!("installed-{}", std::process::id());
        let out = ctrd
            .ctr(&[
                "run",
                "--rm",
                "--runtime",
                EMBER_RUNTIME,
                IMAGE,
                &id,
                "sh",
                "-c",
                "echo hello ember; exit 3",
            ])
            .unwrap();
        assert_eq!(
            (out.status.code(), text(&out.stdout).as_str()),
            (Some(3), "hello ember\n"),
            "ctr run: {}\n{}",
            text(&out.stderr),
            ctrd.log_tail(40)
        );

        let mut cri = Cri::connect(&ctrd.address()).unwrap();
        cri.timeout = STEP;
        cri.wait = STEP;
        cri.wait_for_image(SANDBOX_IMAGE, cri.wait).unwrap();
        cri.wait_for_image(IMAGE, cri.wait).unwrap();
        let pod = cri::start_two_container_pod(
            &cri,
            &format!("installed-pod-{}", std::process::id()),
            "ember",
            IMAGE,
            &ctrd.scratch().join("pod-logs"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ctrd.log_tail(40)));
        let shims = ctrd.shim_pids();
        assert!(!shims.is_empty(), "no shim serves the pod");
        for pid in shims {
            assert_eq!(
                exe(pid),
                Path::new(BIN).join(EMBER_SHIM),
                "containerd did not start the installed shim"
            );
        }
        pod.assert_exec_and_logs(&cri);
        pod.tear_down(&cri, &|| {
            ctrd.diagnostics(Path::new(ember_config::DEFAULT_STATE_DIR), 40)
        });
    }
}
