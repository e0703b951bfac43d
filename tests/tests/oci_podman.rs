//! `ember-oci` under Podman 4.3 (Debian's `podman`, with conmon): a private storage root
//! and run root, and a `containers.conf` (through `CONTAINERS_CONF`) with the README's
//! entry (`[engine.runtimes] ember = [...]`, `runtime_supports_json`,
//! `runtime_supports_kvm`). The offline busybox image is loaded with `podman load`;
//! `podman --runtime ember run` must print, pass exit codes, exec, stop, and leave nothing
//! behind.
//!
//! Needs root, podman and conmon (`apt-get install podman`), busybox-static, and
//! `ember-oci` and `ember-agent` built; otherwise each test says `SKIP` and why.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::containerd::{self, mounts_under, processes_mentioning, unmount_under};
use ember_tests::image::busybox_docker_archive;
use ember_tests::{fixtures, skip};

/// ember-oci's default `--root`, which Podman uses (only this test does in the suite).
const OCI_ROOT: &str = "/run/ember-oci";

fn unavailable() -> Option<String> {
    if !ember_tests::is_root() {
        return Some("needs root".into());
    }
    for bin in ["podman", "conmon"] {
        if containerd::which(bin).is_none() {
            return Some(format!("{bin} is not installed (apt-get install podman)"));
        }
    }
    if !fixtures::busybox_available() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    ember_tests::oci::unavailable()
}

/// Podman with its own storage, run root and containers.conf, and the image loaded.
struct Podman {
    tmp: tempfile::TempDir,
    /// The loaded image's name, as `podman load` reports it.
    image: String,
    /// ember's sandbox.state_dir.
    state: PathBuf,
    /// Podman's run root (short: conmon's sockets).
    run_root: PathBuf,
}

impl Podman {
    fn start(test: &str, tag: &str) -> Option<Podman> {
        if let Some(why) = unavailable() {
            skip(test, &why);
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-podman")
            .tempdir()
            .unwrap();
        let state = PathBuf::from(format!("/run/eps{}{tag}", std::process::id()));
        let run_root = PathBuf::from(format!("/run/epr{}{tag}", std::process::id()));
        let runc =
            ember_tests::oci::wrapper(tmp.path(), &state, ember_tests::backend::Backend::Process)
                .unwrap();
        std::fs::write(
            tmp.path().join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime_supports_json = [\"crun\", \"runc\", \"ember\"]\n\
                 runtime_supports_kvm = [\"ember\"]\n\n\
                 [engine.runtimes]\nember = [\"{}\"]\n",
                runc.display()
            ),
        )
        .unwrap();
        let mut p = Podman {
            image: String::new(),
            tmp,
            state,
            run_root,
        };
        let tar = p.tmp.path().join("busybox.tar");
        busybox_docker_archive(&tar, "busybox:ember").unwrap();
        let out = p.podman(&["load", "-i", tar.to_str().unwrap()]);
        assert!(out.status.success(), "podman load: {}", text(&out.stderr));
        p.image = text(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| panic!("podman load named no image: {}", text(&out.stdout)));
        Some(p)
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.tmp.path().join("containers.conf"))
            .arg("--root")
            .arg(self.tmp.path().join("storage"))
            .arg("--runroot")
            .arg(&self.run_root)
            .arg("--tmpdir")
            .arg(self.tmp.path().join("tmp"))
            .args(["--storage-driver", "overlay", "--runtime", "ember"])
            // ember-oci's --root: podman passes `--runtime-flag X=Y` as `--X=Y`.
            .arg("--runtime-flag")
            .arg(format!(
                "root={}",
                self.tmp.path().join("oci-root").display()
            ))
            .stdin(Stdio::null());
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn assert_nothing_left(&self) {
        // Podman passes no --root: the records are under ember-oci's default root.
        let records: Vec<_> = std::fs::read_dir(OCI_ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(records.is_empty(), "ember-oci records left: {records:?}");
        let sandboxes = self.state.join("sandboxes");
        let left: Vec<_> = std::fs::read_dir(&sandboxes)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "sandbox state left: {left:?}");
        assert!(mounts_under(&self.state).is_empty(), "sandbox mounts left");
        assert!(
            processes_mentioning(&self.state.display().to_string()).is_empty(),
            "sandbox processes left"
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["system", "reset", "--force"]);
        for dir in [&self.state, &self.run_root, &self.tmp.path().to_path_buf()] {
            unmount_under(dir);
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.run_root);
        // Only when empty: other users of ember-oci's default root keep theirs.
        let _ = std::fs::remove_dir(OCI_ROOT);
    }
}

/// `podman run` options every test uses. The rlimits: podman's defaults (NOFILE 1048576,
/// NPROC at the host's maximum with `--ulimit`) need CAP_SYS_RESOURCE to raise the hard
/// limits, which hosts that are containers themselves may lack (crun fails there the same
/// way).
const RUN_OPTS: [&str; 8] = [
    "--pull",
    "never",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn podman_run_exec_stop() {
    let Some(p) = Podman::start("podman_run_exec_stop", "r") else {
        return;
    };
    let image = p.image.as_str();
    let run = [&["run", "--rm"][..], &RUN_OPTS[..], &[image]].concat();
    let out = p.podman(&[&run[..], &["echo", "hi"]].concat());
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "hi\n");
    let out = p.podman(&[&run[..], &["sh", "-c", "echo oops >&2; exit 3"]].concat());
    assert_code(&out, 3);
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));

    let name = format!("det-{}", std::process::id());
    let detached = [
        &["run", "-d", "--name", &name][..],
        &RUN_OPTS[..],
        &[
            image,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ],
    ]
    .concat();
    let out = p.podman(&detached);
    assert_code(&out, 0);
    let start = Instant::now();
    loop {
        let st = text(
            &p.podman(&["inspect", "-f", "{{.State.Status}}", &name])
                .stdout,
        );
        if st.trim() == "running" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "state {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = p.podman(&["exec", &name, "sh", "-c", "echo exec-hi; exit 4"]);
    assert_code(&out, 4);
    assert_eq!(text(&out.stdout), "exec-hi\n");
    let out = p.podman(&["stop", "-t", "20", &name]);
    assert_code(&out, 0);
    let out = p.podman(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
    let out = p.podman(&["rm", &name]);
    assert_code(&out, 0);
    p.assert_nothing_left();
}
