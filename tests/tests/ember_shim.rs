//! ember's shim (`containerd-shim-ember-v2`, runtime `io.containerd.ember.v2`) end to end
//! against a private containerd, with the `process` sandbox backend (this host has no
//! hardware virtualization; see DESIGN.md).
//!
//! Each test starts its own containerd (with the built shim directory first on its `PATH`)
//! and writes its own ember config, whose `sandbox.state_dir` is a short directory under
//! `/run` (agent socket paths must stay under 107 bytes), removed when the test ends.
//! Covered: `ctr run` stdout, exit codes (0, 7, 137 after SIGKILL, 143 after SIGTERM),
//! stdin, a TTY, `ctr task exec`, pause/resume, ps, metrics, crash cleanup after the agent
//! or the shim is killed, bad input (an unknown config key, a missing rootfs), and a CRI pod
//! of two containers served by one shim.
//!
//! Needs root, containerd/ctr, busybox-static and a built shim and agent
//! (`cargo build -p ember-shim -p ember-agent`); otherwise every test says `SKIP` and why.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::containerd::{
    self, Containerd, Options, CRI_NAMESPACE, DEFAULT_NAMESPACE, EMBER_RUNTIME, EMBER_SHIM,
};
use ember_tests::cri::{self, Cri};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why ember's shim cannot be tested here, if it cannot.
fn unavailable() -> Option<String> {
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
    None
}

/// A unique container id: cgroups (`/ember/<id>`) are host-wide.
fn cid(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

/// Removes the ember state dir when dropped (after the containerd, declared before it).
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        containerd::unmount_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private containerd that runs ember's shim, the busybox image, and an ember config.
struct Env {
    ctrd: Containerd,
    config: PathBuf,
    state: StateDir,
    _config_dir: tempfile::TempDir,
}

/// The ember config of the process backend with `state_dir`, plus `extra` lines in
/// `[sandbox]`.
fn write_config(path: &Path, state_dir: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "[sandbox]\nbackend = \"process\"\nstate_dir = \"{}\"\n{extra}",
            state_dir.display()
        ),
    )
    .unwrap();
}

impl Env {
    /// Starts the environment, or reports why `test` is skipped and returns `None`.
    fn start(test: &str, tag: &str, cri: bool) -> Option<Env> {
        if let Some(why) = unavailable() {
            skip(test, &why);
            return None;
        }
        if cri {
            if let Some(why) = cri::unavailable() {
                skip(test, &why);
                return None;
            }
        }
        let state_dir = PathBuf::from(format!("/run/ee{}{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let state = StateDir(state_dir);
        let config_dir = tempfile::Builder::new()
            .prefix("ember-e2e-cfg")
            .tempdir()
            .unwrap();
        let config = config_dir.path().join("ember.toml");
        write_config(&config, &state.0, "");
        let opts = Options {
            path_prepend: containerd::ember_shim_dir().into_iter().collect(),
            ember_config: cri.then(|| config.clone()),
            ..if cri {
                Options::with_cri()
            } else {
                Options::default()
            }
        };
        let ctrd = Containerd::start(opts).unwrap();
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
        })
    }

    fn state_dir(&self) -> &Path {
        &self.state.0
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("sandboxes").join(id)
    }

    /// `ctr run <flags> --runtime ember --runtime-config-path CFG IMAGE id cmd...`.
    fn run_args(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
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

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctrd.ctr(args).unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctrd.ctr_ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(flags, id, cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args)
    }

    /// `ctr ARGS` with a terminal as its stdin and stdout (ctr's `-t` needs one), under
    /// util-linux's `script`, whose exit code is ctr's (`-e`).
    fn ctr_in_terminal(&self, args: &[String]) -> Output {
        let cmd = self.ctrd.ctr_command(DEFAULT_NAMESPACE);
        let line = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .chain(args.iter().cloned())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr run -d`, then waits until the task runs.
    fn run_detached(&self, id: &str, cmd: &[&str]) {
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
    fn assert_rm_reports(&self, id: &str, code: i32) {
        let out = self.ctr(&["task", "rm", id]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "ctr task rm {id}: {err}");
        assert!(
            err.contains(&format!("exit code {code}")),
            "ctr task rm {id} does not report exit code {code}: {err:?}"
        );
    }

    /// `ctr run` (attached, no `--rm`) in the background, its output piped.
    fn spawn_run(&self, id: &str, cmd: &[&str]) -> Child {
        self.ctrd
            .ctr_command(DEFAULT_NAMESPACE)
            .args(self.run_args(&[], id, cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The task's status in `ctr task ls` (`RUNNING`, `PAUSED`, `STOPPED`), `None` if absent.
    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        })
    }

    /// Waits until `ctr task ls` shows `id` as `want`.
    fn wait_status(&self, id: &str, want: Option<&str>) {
        let start = Instant::now();
        loop {
            let st = self.task_status(id);
            if st.as_deref() == want {
                return;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "task {id} is {st:?}, expected {want:?}\ncontainerd's log:\n{}",
                self.ctrd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pids `ctr task ps` lists.
    fn pids(&self, id: &str) -> Vec<u32> {
        let ps = self.ctr_ok(&["task", "ps", id]);
        ps.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The agent's host pid from the sandbox's state record.
    fn agent_pid(&self, id: &str) -> i32 {
        let path = self.sandbox_dir(id).join("state.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "process" && r["role"] == "agent")
            .and_then(|r| r["id"]["pid"].as_i64())
            .unwrap_or_else(|| panic!("no agent process in {text}")) as i32
    }

    /// Asserts that sandbox `id` left nothing on the host: no process mentioning its state
    /// dir (or `marker`, a string in the container's command line), no mount under the
    /// state dir or under containerd's directories naming it, no state dir, no cgroup.
    /// Kills the running task `id` with SIGKILL, asserts that `ctr task rm` reports exit
    /// 137, removes the container and asserts nothing of it is left.
    fn kill_and_remove(&self, id: &str) {
        self.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        self.wait_status(id, Some("STOPPED"));
        self.assert_rm_reports(id, 137);
        self.ctr_ok(&["containers", "rm", id]);
        self.assert_no_leftovers(id, None);
    }

    fn assert_no_leftovers(&self, id: &str, marker: Option<&str>) {
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
                left.push(format!("{sb_s} exists"));
            }
            let cgroups = cgroup_dirs(id);
            if !cgroups.is_empty() {
                left.push(format!("cgroups: {cgroups:?}"));
            }
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sandbox {id} left behind:\n{}\ncontainerd's log:\n{}",
                left.join("\n"),
                self.ctrd.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// `/sys/fs/cgroup/*/ember/<id>` directories that exist.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path().join("ember").join(id))
        .filter(|p| p.is_dir())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for a background `ctr run` and returns (exit code, stdout, stderr).
fn finish(mut child: Child) -> (Option<i32>, String, String) {
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
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ctr run did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_passes_stdout_and_exit_codes() {
    let Some(env) = Env::start("run_passes_stdout_and_exit_codes", "r", false) else {
        return;
    };
    let out = env.run(&["--rm"], &cid("echo"), &["echo", "hello ember"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello ember\n"),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.ctrd.log_tail(30)
    );
    let out = env.run(&["--rm"], &cid("seven"), &["sh", "-c", "echo out; exit 7"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(7), "out\n"),
        "stderr: {}",
        text(&out.stderr)
    );
    // stdout and stderr stay apart.
    let out = env.run(
        &["--rm"],
        &cid("streams"),
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).contains("to-err"),
        "{}",
        text(&out.stderr)
    );
    // 8 MiB of output arrive whole.
    let out = env.run(
        &["--rm"],
        &cid("bulk"),
        &["head", "-c", "8388608", "/dev/urandom"],
    );
    assert_eq!(
        (out.status.code(), out.stdout.len()),
        (Some(0), 8 << 20),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&["--rm"], &cid("true"), &["/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        env.ctr_ok(&["containers", "ls", "-q"]).trim().is_empty(),
        "--rm left containers"
    );
    assert!(std::fs::read_dir(env.state_dir().join("sandboxes"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

#[test]
fn kill_passes_signal_exit_codes() {
    let Some(env) = Env::start("kill_passes_signal_exit_codes", "k", false) else {
        return;
    };
    // SIGKILL → 137: a detached task stays STOPPED until deleted; `ctr task rm` reports
    // its exit code.
    let id = cid("killed");
    env.run_detached(&id, &["sleep", "1000"]);
    env.kill_and_remove(&id);

    // Default SIGTERM → 143. A container's PID 1 ignores signals it has no handler for
    // (the kernel's rule for a PID namespace's init, with runc too), so the SIGTERM goes to
    // an exec'd `sleep`, which is not PID 1; an attached `ctr task exec` sees its code.
    let id = cid("termed");
    env.run_detached(&id, &["sleep", "1000"]);
    let exec = env
        .ctrd
        .ctr_command(DEFAULT_NAMESPACE)
        .args(["task", "exec", "--exec-id", "sleeper", &id, "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while env.pids(&id).len() < 2 {
        assert!(start.elapsed() < TIMEOUT, "the exec never showed up in ps");
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ctr_ok(&["task", "kill", "--exec-id", "sleeper", &id]);
    let (code, _, err) = finish(exec);
    assert_eq!(code, Some(143), "ctr task exec stderr: {err}");
    // SIGTERM to PID 1 without a handler: ignored, the task keeps running.
    env.ctr_ok(&["task", "kill", &id]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.task_status(&id).as_deref(), Some("RUNNING"));
    env.kill_and_remove(&id);
}

#[test]
fn stdin_reaches_the_container() {
    let Some(env) = Env::start("stdin_reaches_the_container", "i", false) else {
        return;
    };
    let id = cid("cat");
    let mut child = env
        .ctrd
        .ctr_command(DEFAULT_NAMESPACE)
        .args(env.run_args(&["--rm"], &id, &["cat"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"x from the host\nsecond line\n").unwrap();
    drop(stdin);
    let (code, out, err) = finish(child);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "x from the host\nsecond line\n"),
        "stderr: {err}"
    );
}

#[test]
fn tty_gives_the_container_a_pty() {
    let test = "tty_gives_the_container_a_pty";
    if containerd::which("script").is_none() {
        skip(test, "script (util-linux) not on PATH");
        return;
    }
    let Some(env) = Env::start(test, "t", false) else {
        return;
    };
    let id = cid("tty");
    let out =
        env.ctr_in_terminal(&env.run_args(&["--rm", "-t"], &id, &["sh", "-c", "tty; exit 5"]));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("/dev/pts/"),
        "no pty in {stdout:?} (stderr {:?})\n{}",
        text(&out.stderr),
        env.ctrd.log_tail(30)
    );
    assert_eq!(out.status.code(), Some(5), "{stdout:?}");

    // An exec with a TTY in a container without one.
    let id = cid("tty-exec");
    env.run_detached(&id, &["sleep", "1000"]);
    let args: Vec<String> = ["task", "exec", "-t", "--exec-id", "t1", &id, "sh", "-c"]
        .iter()
        .map(|s| s.to_string())
        .chain(["tty; exit 4".to_string()])
        .collect();
    let out = env.ctr_in_terminal(&args);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "no pty in exec: {stdout:?}");
    assert_eq!(out.status.code(), Some(4), "{stdout:?}");
    // The container's own stdio is no terminal.
    let out = env.ctr(&["task", "exec", "--exec-id", "t2", &id, "sh", "-c", "tty"]);
    assert!(
        text(&out.stdout).contains("not a tty"),
        "{}",
        text(&out.stdout)
    );
    env.kill_and_remove(&id);
}

#[test]
fn exec_pause_resume_ps_and_metrics() {
    let Some(env) = Env::start("exec_pause_resume_ps_and_metrics", "x", false) else {
        return;
    };
    let id = cid("busy");
    env.run_detached(&id, &["sleep", "1000"]);

    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo exec-out; exit 3",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(3), "exec-out\n"),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.ctrd.log_tail(30)
    );
    // The exec id is free again once the exec is done.
    let out = env.ctr(&["task", "exec", "--exec-id", "e1", &id, "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let pids = env.pids(&id);
    assert_eq!(pids.len(), 1, "ctr task ps: {pids:?}");
    assert!(pids[0] > 0);

    let metrics = env.ctr_ok(&["task", "metrics", &id]);
    let value = |key: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(key)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {key} in ctr task metrics: {metrics}"))
    };
    assert!(value("memory.usage_in_bytes") > 0, "{metrics}");
    assert!(value("pids.current") >= 1, "{metrics}");

    env.ctr_ok(&["task", "pause", &id]);
    env.wait_status(&id, Some("PAUSED"));
    env.ctr_ok(&["task", "resume", &id]);
    env.wait_status(&id, Some("RUNNING"));
    // Still alive and answering after the resume.
    let out = env.ctr(&["task", "exec", "--exec-id", "e2", &id, "echo", "back"]);
    assert_eq!(text(&out.stdout), "back\n", "{}", text(&out.stderr));

    env.kill_and_remove(&id);
}

#[test]
fn killed_agent_is_cleaned_up() {
    let Some(env) = Env::start("killed_agent_is_cleaned_up", "a", false) else {
        return;
    };
    let id = cid("agentkill");
    let marker = format!("marker-{id}");
    let script = format!("sleep 1000; echo {marker}");
    env.run_detached(&id, &["sh", "-c", &script]);
    let agent = env.agent_pid(&id);
    assert!(containerd::process_alive(agent as u32));
    assert!(
        !containerd::processes_mentioning(&marker).is_empty(),
        "the container's shell is not visible on the host"
    );
    // SAFETY: kill on the agent pid from the sandbox's record, alive just above.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    // The container died with its agent (its PID namespace is gone): SIGKILL's 137.
    env.wait_status(&id, Some("STOPPED"));
    env.assert_rm_reports(&id, 137);
    env.ctr_ok(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, Some(&marker));
}

#[test]
fn killed_shim_is_cleaned_up() {
    let Some(env) = Env::start("killed_shim_is_cleaned_up", "s", false) else {
        return;
    };
    let id = cid("shimkill");
    let marker = format!("marker-{id}");
    let script = format!("sleep 1000; echo {marker}");
    // Attached: containerd must tell this `ctr run` that the task ended.
    let child = env.spawn_run(&id, &["sh", "-c", &script]);
    env.wait_status(&id, Some("RUNNING"));
    let shims: Vec<u32> = env
        .ctrd
        .shim_pids()
        .into_iter()
        .filter(|p| {
            let c = cmdline(*p);
            c.contains(EMBER_SHIM) && c.contains(&id)
        })
        .collect();
    assert_eq!(shims.len(), 1, "one shim expected for {id}: {shims:?}");
    assert!(env.sandbox_dir(&id).join("state.json").is_file());
    // SAFETY: kill on the shim serving our private containerd.
    assert_eq!(unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) }, 0);
    // The attached `ctr run` ends: containerd 1.6 proxies its Wait to the shim, so it fails
    // with "ttrpc: closed" (the runc shim does the same) rather than with an exit code.
    let (code, _, err) = finish(child);
    assert_ne!(
        code,
        Some(0),
        "ctr run succeeded after its shim died: {err}"
    );
    // containerd runs `containerd-shim-ember-v2 delete` and forgets the task.
    env.wait_status(&id, None);
    env.ctr_ok(&["containers", "rm", &id]);
    assert!(!env
        .ctr_ok(&["containers", "ls", "-q"])
        .lines()
        .any(|l| l == id));
    env.assert_no_leftovers(&id, Some(&marker));
}

#[test]
fn unknown_config_key_is_named() {
    let Some(env) = Env::start("unknown_config_key_is_named", "c", false) else {
        return;
    };
    let bad = env.ctrd.scratch().join("bad-ember.toml");
    write_config(&bad, env.state_dir(), "no_such_knob = 1\n");
    let id = cid("badcfg");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        EMBER_RUNTIME,
        "--runtime-config-path",
        &bad.to_string_lossy(),
        IMAGE,
        &id,
        "true",
    ]);
    let err = text(&out.stderr);
    eprintln!("ctr run with a bad config: {err}");
    assert!(!out.status.success(), "ran with a bad config");
    assert!(err.contains("sandbox.no_such_knob"), "key not named: {err}");
    assert!(
        err.contains(&*bad.to_string_lossy()),
        "file not named: {err}"
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);

    // A state_dir so long that the agent's socket path cannot fit: refused up front with
    // a message that says what to change, and nothing left.
    let long_dir = env.state_dir().join("x".repeat(80));
    let long = env.ctrd.scratch().join("long-ember.toml");
    write_config(&long, &long_dir, "");
    let id = cid("longdir");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        EMBER_RUNTIME,
        "--runtime-config-path",
        &long.to_string_lossy(),
        IMAGE,
        &id,
        "true",
    ]);
    let err = text(&out.stderr);
    eprintln!("ctr run with a long state_dir: {err}");
    assert!(
        !out.status.success(),
        "ran with a socket path over the limit"
    );
    assert!(
        err.contains("shorter sandbox.state_dir"),
        "no hint to shorten state_dir: {err}"
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);
    let sb = long_dir.join("sandboxes").join(&id);
    assert!(!sb.exists(), "{} left behind", sb.display());
}

#[test]
fn missing_rootfs_is_reported_and_leaves_nothing() {
    let Some(env) = Env::start("missing_rootfs_is_reported_and_leaves_nothing", "n", false) else {
        return;
    };
    let missing = env.ctrd.scratch().join("no-such-rootfs");
    let id = cid("nofs");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        EMBER_RUNTIME,
        "--runtime-config-path",
        &env.config.to_string_lossy(),
        "--rootfs",
        &missing.to_string_lossy(),
        &id,
        "true",
    ]);
    let err = text(&out.stderr);
    eprintln!("ctr run without a rootfs: {err}");
    assert!(!out.status.success(), "ran without a rootfs");
    assert!(
        err.contains(&*missing.to_string_lossy()) && err.contains("does not exist"),
        "the missing rootfs is not named: {err}\n{}",
        env.ctrd.log_tail(30)
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);
}

#[test]
fn cri_pod_runs_in_one_shim() {
    let Some(env) = Env::start("cri_pod_runs_in_one_shim", "p", true) else {
        return;
    };
    let cri = Cri::for_containerd(&env.ctrd).unwrap();
    cri.wait_for_image(IMAGE, Duration::from_secs(30)).unwrap();

    let p = cri::start_two_container_pod(
        &cri,
        &cid("pod"),
        "ember",
        IMAGE,
        &env.ctrd.scratch().join("pod-logs"),
    )
    .unwrap();
    let (pod_id, ids) = (&p.pod_id, &p.ids);
    assert!(
        env.sandbox_dir(pod_id).join("state.json").is_file(),
        "no ember sandbox for the pod under {}",
        env.state_dir().display()
    );
    let shims = env.ctrd.shim_pids();
    assert_eq!(
        shims.len(),
        1,
        "one ember shim should serve the pod: {:?}",
        shims.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    assert!(cmdline(shims[0]).contains(EMBER_SHIM));
    // Both containers live in the pod's one sandbox.
    let record = std::fs::read_to_string(env.sandbox_dir(pod_id).join("state.json")).unwrap();
    for id in ids {
        assert!(record.contains(id.as_str()), "{id} not in {record}");
        assert!(
            !env.sandbox_dir(id).exists(),
            "container {id} got its own sandbox"
        );
    }

    p.assert_exec_and_logs(&cri);
    p.tear_down(&cri);
    env.assert_no_leftovers(pod_id, None);
    let start = Instant::now();
    while !env.ctrd.shim_pids().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the shim outlived its pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn missing_executable_is_named_and_leaves_nothing() {
    let Some(env) = Env::start("missing_executable_is_named_and_leaves_nothing", "m", false) else {
        return;
    };
    let id = cid("noexe");
    let out = env.run(&["--rm"], &id, &["/no/such/program", "arg"]);
    let err = text(&out.stderr);
    eprintln!("ctr run of a missing program: {err}");
    assert!(!out.status.success(), "ran a missing program");
    assert!(
        err.contains("/no/such/program"),
        "the program is not named: {err}\n{}",
        env.ctrd.log_tail(30)
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);

    // The same in an exec: the exec fails, the container keeps running.
    let id = cid("noexe-exec");
    env.run_detached(&id, &["sleep", "1000"]);
    let out = env.ctr(&["task", "exec", "--exec-id", "bad", &id, "/no/such/program"]);
    let err = text(&out.stderr);
    eprintln!("ctr task exec of a missing program: {err}");
    assert!(!out.status.success(), "exec'd a missing program");
    assert!(err.contains("/no/such/program"), "not named: {err}");
    assert_eq!(env.task_status(&id).as_deref(), Some("RUNNING"));
    let out = env.ctr(&["task", "exec", "--exec-id", "good", &id, "echo", "ok"]);
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
    env.kill_and_remove(&id);
}

/// Why the `microvm` backend cannot run a container here, if it cannot: it needs hardware
/// virtualization (guest user space, and so the agent, does not run under KVM's emulator,
/// see DESIGN.md) and the guest assets of `make guest`.
fn microvm_unavailable() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Some(
            "no hardware virtualization (no vmx/svm in /proc/cpuinfo): the agent cannot run in a microVM here"
                .into(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is missing".into());
    }
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest");
    for f in ["vmlinux", "initramfs.cpio"] {
        if !guest.join(f).is_file() {
            return Some(format!(
                "{} is missing: run `make guest`",
                guest.join(f).display()
            ));
        }
    }
    None
}

#[test]
fn microvm_backend_runs_a_container_with_hardware_kvm() {
    const TEST: &str = "microvm_backend_runs_a_container_with_hardware_kvm";
    if let Some(why) = microvm_unavailable() {
        return skip(TEST, &why);
    }
    let Some(env) = Env::start(TEST, "v", false) else {
        return;
    };
    let guest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../build/guest")
        .canonicalize()
        .unwrap();
    std::fs::write(
        &env.config,
        format!(
            "[sandbox]\nbackend = \"microvm\"\nstate_dir = \"{}\"\n[hypervisor]\nkernel = \"{}\"\ninitrd = \"{}\"\n",
            env.state_dir().display(),
            guest.join("vmlinux").display(),
            guest.join("initramfs.cpio").display()
        ),
    )
    .unwrap();
    let id = cid("vm");
    let out = env.run(&["--rm"], &id, &["sh", "-c", "echo from-the-vm; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.ctrd.log_tail(40)
    );
    assert_eq!(text(&out.stdout), "from-the-vm\n");
    assert!(
        !env.sandbox_dir(&id).exists(),
        "the microVM sandbox's state is removed with the container"
    );
}
