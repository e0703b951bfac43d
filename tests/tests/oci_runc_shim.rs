//! `ember-oci` driven by containerd's own runc shim (`io.containerd.runc.v2` with
//! `--runc-binary`), the route Docker 20.10 takes, on both sandbox backends: `ctr run`
//! output and exit codes, a detached task's `ps`, `exec`, pause/resume and kill, a
//! terminal, and nothing left behind. Each body runs as `name` on the `process` backend and
//! as `hw_kvm::name` on the `microvm` one (each container in its own microVM), which runs in
//! the nested KVM test host on hosts without hardware virtualization
//! ([`ember_tests::hw_kvm_runs_here`]).
//!
//! Each test starts its own containerd (`ember_tests::containerd`) and gives the shim a
//! wrapper script as its runc binary that sets `EMBER_CONFIG` (this test's config for its
//! backend) and execs the built `ember-oci`, whose `--root` is under this test's temporary
//! directory (`ctr run --runc-root`). Needs root, containerd/ctr, the runc shim,
//! busybox-static, and `ember-oci` and `ember-agent` built (`cargo build -p ember-runtime
//! -p ember-agent`), and for the microvm variants the guest assets (`make guest`);
//! otherwise each test says `SKIP` and why.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use ember_tests::backend::Backend;
use ember_tests::containerd::{
    self, mounts_under, processes_mentioning, Containerd, Options, RUNC_RUNTIME,
};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";
/// How long one step may take on the process backend ([`Backend::scaled`] scales it).
const STEP: Duration = Duration::from_secs(60);

/// Why these tests cannot run here with `backend`, if they cannot.
fn unavailable(backend: Backend) -> Option<String> {
    if let Some(why) = containerd::unavailable() {
        return Some(why);
    }
    if containerd::which("containerd-shim-runc-v2").is_none() {
        return Some("containerd-shim-runc-v2 is not on PATH".into());
    }
    if !fixtures::busybox_available() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    ember_tests::oci::unavailable().or_else(|| backend.unavailable())
}

/// A private containerd with the busybox image, an ember config and the wrapper.
struct Env {
    ctrd: Containerd,
    /// The wrapper script given as `--runc-binary`.
    runc: PathBuf,
    /// `--runc-root`: ember-oci's records.
    root: PathBuf,
    /// ember's `sandbox.state_dir` (short: agent socket paths must fit in sun_path).
    state: PathBuf,
    backend: Backend,
    _tmp: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Holders outlive containerd and its shims (as runc's containers do): a failed test
        // force-deletes what it left.
        if let Ok(entries) = std::fs::read_dir(self.ns_root()) {
            for e in entries.flatten() {
                let _ = std::process::Command::new(&self.runc)
                    .arg("--root")
                    .arg(self.ns_root())
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        containerd::unmount_under(&self.state);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Env {
    fn start(backend: Backend, body: &str, tag: &str) -> Option<Env> {
        if let Some(why) = unavailable(backend) {
            skip(&backend.test_name(body), &why);
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("ember-oci-shim")
            .tempdir()
            .unwrap();
        // Both variants of a body may run at once (on a host with hardware KVM).
        let suffix = if backend == Backend::Microvm { "v" } else { "" };
        let state = PathBuf::from(format!("/run/eos{}{tag}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let runc = ember_tests::oci::wrapper(tmp.path(), &state, backend).unwrap();
        let ctrd = Containerd::start(Options {
            start_timeout: backend.scaled(Options::default().start_timeout),
            ..Options::default()
        })
        .unwrap();
        // A hung step fails its test with containerd's log rather than stalling the run.
        ctrd.set_ctr_timeout(backend.scaled(STEP) * 2);
        let tar = ctrd.scratch().join("busybox.tar");
        busybox_image_tar(&tar, IMAGE).unwrap();
        ctrd.import_image(&tar, containerd::DEFAULT_NAMESPACE)
            .unwrap();
        Some(Env {
            ctrd,
            runc,
            root: tmp.path().join("root"),
            state,
            backend,
            _tmp: tmp,
        })
    }

    /// `ctr run FLAGS --runtime io.containerd.runc.v2 --runc-binary W --runc-root R IMAGE
    /// ID CMD...`.
    fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend([
            "--runtime".into(),
            RUNC_RUNTIME.into(),
            "--runc-binary".into(),
            self.runc.display().to_string(),
            "--runc-root".into(),
            self.root.display().to_string(),
            IMAGE.into(),
            id.into(),
        ]);
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctrd.ctr(&args).unwrap()
    }

    /// `ctr ARGS` with a terminal as its stdin and stdout (ctr's `-t` needs one), under
    /// util-linux's `script`, whose exit code is ctr's (`-e`); at most two steps.
    fn ctr_in_terminal(&self, args: &[&str]) -> Output {
        let cmd = self.ctrd.ctr_command(containerd::DEFAULT_NAMESPACE);
        let line = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .chain(args.iter().map(|a| a.to_string()))
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let limit = (self.backend.scaled(STEP) * 2).as_secs().to_string();
        std::process::Command::new("timeout")
            .args([limit.as_str(), "script", "-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctrd.ctr_ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The task's status in `ctr task ls` (`None` when it is not listed).
    fn task_status(&self, id: &str) -> Option<String> {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .skip(1)
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
    }

    fn wait_status(&self, id: &str, want: Option<&str>) {
        let start = Instant::now();
        loop {
            let st = self.task_status(id);
            if st.as_deref() == want {
                return;
            }
            assert!(
                start.elapsed() < self.backend.scaled(STEP),
                "task {id} is {st:?}, not {want:?}\n{}",
                self.ctrd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// ember-oci's `--root` as the runc shim passes it (the runc root and the namespace).
    fn ns_root(&self) -> PathBuf {
        self.root.join(containerd::DEFAULT_NAMESPACE)
    }

    fn assert_nothing_left(&self, id: &str) {
        assert!(!self.ns_root().join(id).exists(), "ember-oci record left");
        let sb = self.state.join("sandboxes").join(id);
        assert!(!sb.exists(), "sandbox state left: {}", sb.display());
        assert!(
            mounts_under(&self.state).is_empty(),
            "mounts left under {}",
            self.state.display()
        );
        assert!(
            processes_mentioning(&self.state.display().to_string()).is_empty(),
            "sandbox processes left"
        );
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A unique container id: both variants of a body may run at once.
fn cid(backend: Backend, base: &str) -> String {
    match backend {
        Backend::Process => format!("{base}-{}", std::process::id()),
        Backend::Microvm => format!("{base}-v{}", std::process::id()),
    }
}

// Each body as `name` (process backend) and `hw_kvm::name` (microvm backend).
ember_tests::on_both_backends!(
    ctr_run_echo_and_exit_codes,
    detached_task_ps_exec_pause_kill,
    ctr_run_with_a_terminal,
);

/// The test bodies that run on both backends ([`ember_tests::on_both_backends`]).
mod body {
    use super::*;

    pub fn ctr_run_echo_and_exit_codes(backend: Backend) {
        let Some(env) = Env::start(backend, "ctr_run_echo_and_exit_codes", "r") else {
            return;
        };
        let id = cid(backend, "echo");
        let out = env.run(&["--rm"], &id, &["echo", "hi"]);
        assert!(
            out.status.success(),
            "ctr run: {}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        assert_eq!(text(&out.stdout), "hi\n");
        env.assert_nothing_left(&id);

        let id = cid(backend, "code");
        let out = env.run(&["--rm"], &id, &["sh", "-c", "echo to-stderr >&2; exit 7"]);
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("to-stderr"));
        env.assert_nothing_left(&id);
    }

    pub fn detached_task_ps_exec_pause_kill(backend: Backend) {
        let Some(env) = Env::start(backend, "detached_task_ps_exec_pause_kill", "d") else {
            return;
        };
        let id = cid(backend, "det");
        let out = env.run(&["-d"], &id, &["sleep", "1000"]);
        assert!(
            out.status.success(),
            "ctr run -d: {}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        env.wait_status(&id, Some("RUNNING"));
        // The task's pid is the holder's, and ember-oci's state agrees.
        let pid = env
            .ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap();
        let state = std::process::Command::new(&env.runc)
            .arg("--root")
            .arg(env.ns_root())
            .args(["state", &id])
            .output()
            .unwrap();
        let state: serde_json::Value = serde_json::from_slice(&state.stdout)
            .unwrap_or_else(|e| panic!("state: {e}: {}", text(&state.stderr)));
        assert_eq!(state["status"], "running", "{state}");
        assert_eq!(state["pid"].to_string(), pid, "{state}");

        // ctr task ps: runc ps --format json, host pids of the container's cgroup.
        let ps = env.ctr_ok(&["task", "ps", &id]);
        assert!(ps.lines().count() >= 2, "no processes: {ps}");

        let out = env
            .ctrd
            .ctr(&[
                "task",
                "exec",
                "--exec-id",
                "e1",
                &id,
                "sh",
                "-c",
                "echo exec-hi; exit 3",
            ])
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "exec-hi\n");

        // exec with a terminal: `ember-oci exec --detach --console-socket` under the shim.
        if containerd::which("script").is_some() {
            let args = [
                "task",
                "exec",
                "-t",
                "--exec-id",
                "e2",
                &id,
                "sh",
                "-c",
                "test -t 0 && test -t 1 && echo exec-tty; exit 5",
            ];
            let out = env.ctr_in_terminal(&args);
            assert_eq!(
                out.status.code(),
                Some(5),
                "{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            assert!(
                text(&out.stdout).contains("exec-tty"),
                "{}",
                text(&out.stdout)
            );
        }

        env.ctr_ok(&["task", "pause", &id]);
        env.wait_status(&id, Some("PAUSED"));
        env.ctr_ok(&["task", "resume", &id]);
        env.wait_status(&id, Some("RUNNING"));

        env.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
        env.wait_status(&id, Some("STOPPED"));
        let out = env.ctrd.ctr(&["task", "rm", &id]).unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("exit code 137") || text(&out.stdout).contains("137"),
            "ctr task rm does not report 137: {}",
            text(&out.stderr)
        );
        env.ctr_ok(&["container", "rm", &id]);
        env.assert_nothing_left(&id);
    }

    pub fn ctr_run_with_a_terminal(backend: Backend) {
        let Some(env) = Env::start(backend, "ctr_run_with_a_terminal", "t") else {
            return;
        };
        if containerd::which("script").is_none() {
            return skip(
                &backend.test_name("ctr_run_with_a_terminal"),
                "util-linux's script is not installed",
            );
        }
        let id = cid(backend, "tty");
        // The container's terminal comes through the console socket the shim gave ember-oci.
        let runc = env.runc.display().to_string();
        let root = env.root.display().to_string();
        let out = env.ctr_in_terminal(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            RUNC_RUNTIME,
            "--runc-binary",
            &runc,
            "--runc-root",
            &root,
            IMAGE,
            &id,
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; exit 4",
        ]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            env.ctrd.log_tail(20)
        );
        assert!(
            text(&out.stdout).contains("is-a-tty"),
            "{}",
            text(&out.stdout)
        );
        env.assert_nothing_left(&id);
    }
}
