//! `ember-oci` under Podman 4.3 (Debian's `podman`, with conmon): a private storage root
//! and run root, and a `containers.conf` (through `CONTAINERS_CONF`) with the README's
//! entry (`[engine.runtimes] ember = [...]`, `runtime_supports_json`,
//! `runtime_supports_kvm`). The offline busybox image is loaded with `podman load`;
//! `podman --runtime ember run` must print, pass exit codes, exec, stop, and leave nothing
//! behind.
//!
//! The body runs as `podman_run_exec_stop` on the `process` backend, through that named
//! runtime, and as `hw_kvm::podman_run_exec_stop` on the `microvm` one (each container in
//! its own microVM), through the other form, `podman --runtime PATH` (the path of a wrapper
//! that runs `ember-oci` with the microvm config); on hosts without hardware virtualization
//! that one runs in the nested KVM test host ([`ember_tests::hw_kvm_runs_here`]).
//!
//! Needs root, podman and conmon (`apt-get install podman`), busybox-static, and
//! `ember-oci` and `ember-agent` built, and for the microvm variant the guest assets (`make
//! guest`); otherwise each test says `SKIP` and why.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::backend::Backend;
use ember_tests::containerd::{self, mounts_under, processes_mentioning, unmount_under};
use ember_tests::image::busybox_docker_archive;
use ember_tests::{fixtures, skip};

/// ember-oci's default `--root`, which Podman uses (only this test does in the suite).
const OCI_ROOT: &str = "/run/ember-oci";
/// How long one step may take on the process backend ([`Backend::scaled`] scales it).
const STEP: Duration = Duration::from_secs(60);

fn unavailable(backend: Backend) -> Option<String> {
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
    if containerd::which("timeout").is_none() {
        return Some("coreutils' timeout is not on PATH".into());
    }
    ember_tests::oci::unavailable().or_else(|| backend.unavailable())
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
    /// `--runtime`: the name `ember` from containers.conf (process backend) or the
    /// wrapper's path (microvm backend).
    runtime: String,
    backend: Backend,
}

impl Podman {
    /// Podman for `body`'s test on `backend` (`tag` keeps its paths apart from the other
    /// tests'), or `None` after a `SKIP` line when it cannot run here.
    fn start(backend: Backend, body: &str, tag: &str) -> Option<Podman> {
        if let Some(why) = unavailable(backend) {
            skip(&backend.test_name(body), &why);
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-podman")
            .tempdir()
            .unwrap();
        // Both variants may run at once (on a host with hardware KVM).
        let suffix = if backend == Backend::Microvm { "v" } else { "" };
        let state = PathBuf::from(format!("/run/eps{}{tag}{suffix}", std::process::id()));
        let run_root = PathBuf::from(format!("/run/epr{}{tag}{suffix}", std::process::id()));
        let runc = ember_tests::oci::wrapper(tmp.path(), &state, backend).unwrap();
        let runtime = match backend {
            Backend::Process => "ember".to_string(),
            Backend::Microvm => runc.display().to_string(),
        };
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
            runtime,
            backend,
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

    /// `podman` with this test's storage, run root, containers.conf and runtime; a step
    /// that hangs is ended after twice [`STEP`] on this backend (`timeout`'s status 124).
    fn command(&self) -> Command {
        let limit = (self.backend.scaled(STEP) * 2).as_secs().to_string();
        let mut c = Command::new("timeout");
        c.args(["-k", "10", &limit, "podman"])
            .env("CONTAINERS_CONF", self.tmp.path().join("containers.conf"))
            .arg("--root")
            .arg(self.tmp.path().join("storage"))
            .arg("--runroot")
            .arg(&self.run_root)
            .arg("--tmpdir")
            .arg(self.tmp.path().join("tmp"))
            // No `--runtime-flag root=...`: Podman 4.3 passes runtime flags to `create` and
            // `start` but not to `delete`, so records kept elsewhere would outlive their
            // containers (as the README says). ember-oci's default root it is.
            .args(["--storage-driver", "overlay", "--runtime", &self.runtime])
            .stdin(Stdio::null());
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn assert_nothing_left(&self) {
        // The records under ember-oci's default root that are this test's (their
        // sandbox state dir is its own: the other variant may use the root at the same time).
        let records: Vec<_> = std::fs::read_dir(OCI_ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|dir| {
                let record =
                    std::fs::read_to_string(dir.join("container.json")).unwrap_or_default();
                serde_json::from_str::<serde_json::Value>(&record)
                    .map(|r| r["sandbox_state_dir"] == self.state.display().to_string())
                    // A record being written or unreadable: count it.
                    .unwrap_or(true)
            })
            .collect();
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

// The body as `podman_run_exec_stop` (process backend) and `hw_kvm::podman_run_exec_stop`
// (microvm backend).
ember_tests::on_both_backends!(podman_run_exec_stop);

/// The test body that runs on both backends ([`ember_tests::on_both_backends`]).
mod body {
    use super::*;

    pub fn podman_run_exec_stop(backend: Backend) {
        let Some(p) = Podman::start(backend, "podman_run_exec_stop", "r") else {
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

        let name = match backend {
            Backend::Process => format!("det-{}", std::process::id()),
            Backend::Microvm => format!("det-v{}", std::process::id()),
        };
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
            assert!(
                start.elapsed() < backend.scaled(Duration::from_secs(30)),
                "state {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = p.podman(&["exec", &name, "sh", "-c", "echo exec-hi; exit 4"]);
        assert_code(&out, 4);
        assert_eq!(text(&out.stdout), "exec-hi\n");
        let grace = backend
            .scaled(Duration::from_secs(20))
            .as_secs()
            .to_string();
        let out = p.podman(&["stop", "-t", &grace, &name]);
        assert_code(&out, 0);
        let out = p.podman(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
        assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
        let out = p.podman(&["rm", &name]);
        assert_code(&out, 0);
        p.assert_nothing_left();
    }
}
