//! The harness of the shim's end-to-end tests (`tests/tests/ember_shim.rs`): a private
//! containerd that runs ember's shim with an ember config of one backend, the busybox image,
//! and helpers to run `ctr`, wait for task states and check that nothing is left behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::containerd::{
    self, Containerd, Options, CRI_NAMESPACE, DEFAULT_NAMESPACE, EMBER_RUNTIME, EMBER_SHIM,
};
use crate::cri;
use crate::image::busybox_image_tar;
use crate::{fixtures, skip};

/// The offline busybox image's reference.
pub const IMAGE: &str = "docker.io/library/busybox:ember";
/// How long one step (a task reaching a state, a `ctr run` ending) may take on the process
/// backend; [`Backend::scaled`] scales it.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the crash cleanup that containerd runs asynchronously may take on the process
/// backend (scaled like [`TIMEOUT`]).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why ember's shim cannot be tested here with `backend`, if it cannot.
pub fn unavailable(backend: Backend) -> Option<String> {
    if let Some(why) = containerd::unavailable() {
        return Some(why);
    }
    if !fixtures::busybox_available() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    let Some(dir) = containerd::ember_shim_dir() else {
        return Some(format!(
            "{EMBER_SHIM} is not built: run `cargo build -p ember-shim -p ember-agent`"
        ));
    };
    if !dir.join("ember-agent").is_file() {
        return Some(format!(
            "ember-agent is not built next to {EMBER_SHIM} in {}: run `cargo build -p ember-agent`",
            dir.display()
        ));
    }
    backend.unavailable()
}

/// Removes the ember state dir when dropped (after the containerd, declared before it).
pub struct StateDir(pub PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        containerd::unmount_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private containerd that runs ember's shim, the busybox image, and an ember config.
pub struct Env {
    /// The private containerd.
    pub ctrd: Containerd,
    /// The ember config file the tests pass as `--runtime-config-path`.
    pub config: PathBuf,
    /// ember's state directory (`sandbox.state_dir`), removed on drop.
    pub state: StateDir,
    _config_dir: tempfile::TempDir,
    /// The backend under test.
    pub backend: Backend,
    /// How long one step may take (`backend.scaled(TIMEOUT)`).
    pub timeout: Duration,
}

/// Writes the ember config of `backend` ([`Backend::config`]) to `path`.
pub fn write_config(path: &Path, backend: Backend, state_dir: &Path, extra: &str) {
    std::fs::write(path, backend.config(state_dir, extra)).unwrap();
}

impl Env {
    /// Starts the environment for the test of `body` on `backend`, or reports why that
    /// test is skipped and returns `None`. `tag` tells the tests' state dirs apart.
    pub fn start(backend: Backend, body: &str, tag: &str, cri: bool) -> Option<Env> {
        let test = backend.test_name(body);
        if let Some(why) = unavailable(backend) {
            skip(&test, &why);
            return None;
        }
        if cri {
            if let Some(why) = cri::unavailable() {
                skip(&test, &why);
                return None;
            }
        }
        // Both variants of a body may run at once (on a host with hardware KVM).
        let suffix = match backend {
            Backend::Process => "",
            Backend::Microvm => "v",
        };
        let state_dir = PathBuf::from(format!("/run/ee{}{tag}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let state = StateDir(state_dir);
        let config_dir = tempfile::Builder::new()
            .prefix("ember-e2e-cfg")
            .tempdir()
            .unwrap();
        let config = config_dir.path().join("ember.toml");
        write_config(&config, backend, &state.0, "");
        let base = if cri {
            Options::with_cri()
        } else {
            Options::default()
        };
        let opts = Options {
            path_prepend: containerd::ember_shim_dir().into_iter().collect(),
            ember_config: cri.then(|| config.clone()),
            start_timeout: base.start_timeout * backend.slowness(),
            ..base
        };
        let ctrd = Containerd::start(opts).unwrap();
        // A hung step fails its test with containerd's log rather than stalling the run.
        ctrd.set_ctr_timeout(backend.scaled(TIMEOUT) * 2);
        let tar = ctrd.scratch().join("busybox.tar");
        busybox_image_tar(&tar, IMAGE).unwrap();
        let ns = if cri {
            CRI_NAMESPACE
        } else {
            DEFAULT_NAMESPACE
        };
        ctrd.import_image(&tar, ns).unwrap();
        Some(Env {
            ctrd,
            config,
            state,
            _config_dir: config_dir,
            backend,
            timeout: backend.scaled(TIMEOUT),
        })
    }

    /// A unique container id: cgroups (`/ember/<id>`) and process command lines are
    /// host-wide, and both variants of a body may run at once.
    pub fn cid(&self, base: &str) -> String {
        match self.backend {
            Backend::Process => format!("{base}-{}", std::process::id()),
            Backend::Microvm => format!("{base}-v{}", std::process::id()),
        }
    }

    /// ember's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state.0
    }

    /// The state directory of sandbox `id`.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("sandboxes").join(id)
    }

    /// `ctr run <flags> --runtime ember --runtime-config-path CFG IMAGE id cmd...`.
    pub fn run_args(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.extend([
            "--runtime".into(),
            EMBER_RUNTIME.into(),
            "--runtime-config-path".into(),
            self.config.display().to_string(),
            IMAGE.into(),
            id.into(),
        ]);
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// Runs `ctr ARGS` against the private containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctrd.ctr(args).unwrap()
    }

    /// Runs `ctr ARGS`, which must succeed, and returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctrd.ctr_ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `ctr run` ([`Env::run_args`]) to its end.
    pub fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(flags, id, cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args)
    }

    /// `ctr ARGS` with a terminal as its stdin and stdout (ctr's `-t` needs one), under
    /// util-linux's `script`, whose exit code is ctr's (`-e`).
    pub fn ctr_in_terminal(&self, args: &[String]) -> Output {
        let cmd = self.ctrd.ctr_command(DEFAULT_NAMESPACE);
        let line = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .chain(args.iter().cloned())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        // Under coreutils' `timeout` (2 steps' time), so that a hung terminal session fails
        // its test (exit 124, containerd's log in the message) instead of the whole run.
        let limit = (self.timeout * 2).as_secs().to_string();
        std::process::Command::new("timeout")
            .args([
                "--kill-after=10",
                &limit,
                "script",
                "-qec",
                &line,
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr run -d`, then waits until the task runs.
    pub fn run_detached(&self, id: &str, cmd: &[&str]) {
        let out = self.run(&["-d"], id, cmd);
        assert!(
            out.status.success(),
            "ctr run -d {id} failed: {}\n{}",
            text(&out.stderr),
            self.ctrd.log_tail(30)
        );
        self.wait_status(id, Some("RUNNING"));
    }

    /// `ctr task rm` of a stopped task, which warns "exit with non-zero exit code N".
    pub fn assert_rm_reports(&self, id: &str, code: i32) {
        let out = self.ctr(&["task", "rm", id]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "ctr task rm {id}: {err}");
        assert!(
            err.contains(&format!("exit code {code}")),
            "ctr task rm {id} does not report exit code {code}: {err:?}"
        );
    }

    /// `ctr run` (attached, no `--rm`) in the background, its output piped.
    pub fn spawn_run(&self, id: &str, cmd: &[&str]) -> Child {
        self.ctrd
            .ctr_command(DEFAULT_NAMESPACE)
            .args(self.run_args(&[], id, cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits for a background `ctr` and returns (exit code, stdout, stderr).
    pub fn finish(&self, child: Child) -> (Option<i32>, String, String) {
        finish(child, self.timeout)
    }

    /// The task's status in `ctr task ls` (`RUNNING`, `PAUSED`, `STOPPED`), `None` if absent.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        })
    }

    /// Waits until `ctr task ls` shows `id` as `want`.
    pub fn wait_status(&self, id: &str, want: Option<&str>) {
        let start = Instant::now();
        loop {
            let st = self.task_status(id);
            if st.as_deref() == want {
                return;
            }
            assert!(
                start.elapsed() < self.timeout,
                "task {id} is {st:?}, expected {want:?}\ncontainerd's log:\n{}",
                self.ctrd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pids `ctr task ps` lists.
    pub fn pids(&self, id: &str) -> Vec<u32> {
        let ps = self.ctr_ok(&["task", "ps", id]);
        ps.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The sandbox's state record (`state.json`).
    pub fn record(&self, id: &str) -> serde_json::Value {
        let path = self.sandbox_dir(id).join("state.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
    }

    /// The agent's host pid from the sandbox's state record (process backend only: the
    /// microvm backend's agent runs in the guest).
    pub fn agent_pid(&self, id: &str) -> i32 {
        self.process_pid(id, "agent")
    }

    /// The pid of sandbox `id`'s host process of `role` (`agent` on the process backend,
    /// `vmm` on the microvm backend), from its state record.
    pub fn process_pid(&self, id: &str, role: &str) -> i32 {
        let record = self.record(id);
        record["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "process" && r["role"] == role)
            .and_then(|r| r["id"]["pid"].as_i64())
            .unwrap_or_else(|| panic!("no {role} process in {record}")) as i32
    }

    /// Kills the running task `id` with SIGKILL, asserts that `ctr task rm` reports exit
    /// 137, removes the container and asserts nothing of it is left.
    pub fn kill_and_remove(&self, id: &str) {
        self.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        self.wait_status(id, Some("STOPPED"));
        self.assert_rm_reports(id, 137);
        self.ctr_ok(&["containers", "rm", id]);
        self.assert_no_leftovers(id, None);
    }

    /// Asserts that sandbox `id` left nothing on the host: no process mentioning its state
    /// dir (or `marker`, a string in the container's command line), no shim, no mount under
    /// the state dir or under containerd's directories naming it, no state dir (and so none
    /// of its sockets), no cgroup.
    pub fn assert_no_leftovers(&self, id: &str, marker: Option<&str>) {
        let sb = self.sandbox_dir(id);
        let sb_s = sb.display().to_string();
        // Cleanup after a crash is asynchronous in containerd: allow it some time.
        let start = Instant::now();
        loop {
            let mut left = Vec::new();
            let procs = containerd::processes_mentioning(&sb_s);
            if !procs.is_empty() {
                left.push(format!("processes mentioning {sb_s}: {procs:?}"));
            }
            if let Some(m) = marker {
                let procs = containerd::processes_mentioning(m);
                if !procs.is_empty() {
                    left.push(format!("container processes ({m}): {procs:?}"));
                }
            }
            let shims: Vec<u32> = self
                .ctrd
                .shim_pids()
                .into_iter()
                .filter(|p| cmdline(*p).contains(id))
                .collect();
            if !shims.is_empty() {
                left.push(format!("shims for {id}: {shims:?}"));
            }
            let mounts = containerd::mounts_under(self.state_dir());
            if !mounts.is_empty() {
                left.push(format!("mounts under the state dir: {mounts:?}"));
            }
            let mounts: Vec<_> = containerd::mounts_under(self.ctrd.scratch())
                .into_iter()
                .filter(|m| m.to_string_lossy().contains(id))
                .collect();
            if !mounts.is_empty() {
                left.push(format!("mounts under containerd's dirs: {mounts:?}"));
            }
            if sb.exists() {
                let entries: Vec<_> = std::fs::read_dir(&sb)
                    .map(|d| d.filter_map(|e| Some(e.ok()?.file_name())).collect())
                    .unwrap_or_default();
                left.push(format!("{sb_s} exists, holding {entries:?}"));
            }
            let cgroups = cgroup_dirs(id);
            if !cgroups.is_empty() {
                left.push(format!("cgroups: {cgroups:?}"));
            }
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < CLEANUP_TIMEOUT * self.backend.slowness(),
                "sandbox {id} left behind:\n{}\ncontainerd's log:\n{}",
                left.join("\n"),
                self.ctrd.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The command line of process `pid` (empty when it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// The directories of the host cgroup `/ember/<path>` that exist, in every cgroup hierarchy
/// mounted here (cgroup v1 controllers, the v2 unified tree, or both on hybrid hosts).
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mounts = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2"))
        .map(|m| m.mount_point.join("ember").join(path))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Output bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits up to `timeout` for a background `ctr` and returns (exit code, stdout, stderr).
pub fn finish(mut child: Child, timeout: Duration) -> (Option<i32>, String, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), out, err);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ctr did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
