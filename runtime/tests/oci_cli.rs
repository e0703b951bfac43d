//! `ember-oci`, the runc-compatible command line, on the `process` backend: runc's error
//! paths with its wordings (unknown id, create twice, start before create, delete of a
//! running container, a malformed `--process` file, a bundle with a bad field), the JSON
//! error line in `--log`, and the lifecycle the runc shim and conmon drive: create (the
//! pid file names the holder), start, state, exec, ps, pause/resume, kill, the holder's exit
//! status, delete, and `delete --force` after the holder was killed, with nothing left.
//! CRI-O-style pods: a container whose annotations name a sandbox container joins that
//! container's sandbox (`pod_containers_share_one_sandbox` on both backends, the microVM
//! variant as `hw_kvm::...`; the rest of a pod's lifecycle and its errors on the process
//! backend). A `prestart` hook that networks the container as Docker's does, and `delete
//! --force` of its killed holder leaving no network namespace, on both backends.
//!
//! The lifecycle tests need root, Debian's busybox-static and `ember-agent` built next to
//! `ember-oci` (`cargo build -p ember-agent`); they make this test process a child
//! subreaper, so that the holder (orphaned when `create` exits, as under the runc shim or
//! conmon) is reaped here and its exit status can be checked.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::backend::Backend;
use ember_tests::containerd::{mounts_under, process_alive, processes_mentioning};
use ember_tests::fixtures::{busybox_available, busybox_bundle, default_spec, write_spec};
use ember_tests::skip;
use serde_json::{json, Value};

const OCI: &str = env!("CARGO_BIN_EXE_ember-oci");

/// Why the lifecycle tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !ember_tests::is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !busybox_available() {
        return Some("needs Debian's busybox-static".into());
    }
    if !Path::new(OCI).with_file_name("ember-agent").is_file() {
        return Some(
            "ember-agent is not built next to ember-oci (cargo build -p ember-agent)".into(),
        );
    }
    None
}

/// A test's root, ember config, sandbox state dir and scratch dir.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

fn env(name: &str) -> Env {
    env_on(Backend::Process, name)
}

/// [`env`] on `backend` (the microvm backend needs the guest assets of `make guest`).
fn env_on(backend: Backend, name: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    // A short state dir: agent socket paths must fit in sun_path.
    let state = PathBuf::from(format!("/run/eoci-{}-{name}", std::process::id()));
    let config = tmp.path().join("ember.toml");
    std::fs::write(&config, backend.config(&state, "")).unwrap();
    Env {
        dir: tmp.path().to_path_buf(),
        root: tmp.path().join("root"),
        log: tmp.path().join("log.json"),
        _tmp: tmp,
        state,
        config,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left: every container force-deleted.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let _ = self
                    .oci()
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Env {
    /// `ember-oci --root R --log L --log-format json` with this test's config.
    fn oci(&self) -> Command {
        let mut c = Command::new(OCI);
        c.env("EMBER_CONFIG", &self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.oci().args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ember-oci {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must fail, and returns its stderr, after checking that the same
    /// message was appended to the --log file as a JSON error line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "ember-oci {args:?} succeeded");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last: Value = serde_json::from_str(log.lines().last().unwrap_or("{}"))
            .unwrap_or_else(|e| panic!("--log line is not JSON ({e}): {log}"));
        assert_eq!(last["level"], "error", "{log}");
        let msg = last["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty() && err.contains(msg), "{msg:?} vs {err:?}");
        assert!(last["time"].as_str().is_some(), "{log}");
        err
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        self.bundle_with(name, &default_spec(args))
    }

    fn bundle_with(&self, name: &str, spec: &Value) -> PathBuf {
        let b = busybox_bundle(&self.dir.join(name)).unwrap();
        write_spec(&b, spec).unwrap();
        b
    }

    /// A bundle running `args` as a pod's container: `annotations`, and, for a container
    /// that joins a sandbox, the pid, IPC, UTS and network namespaces of the sandbox
    /// container named by path, as CRI-O writes them (the runtime points them at the sandbox
    /// container's, whatever the path).
    fn pod_bundle(&self, name: &str, args: &[&str], annotations: Value) -> PathBuf {
        let mut spec = default_spec(args);
        let joins = annotations
            .as_object()
            .unwrap()
            .values()
            .any(|v| v == "container");
        if joins {
            spec["linux"]["namespaces"] = json!([
                {"type": "pid", "path": "/proc/1/ns/pid"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "ipc", "path": "/proc/1/ns/ipc"},
                {"type": "uts", "path": "/proc/1/ns/uts"},
                {"type": "mount"}
            ]);
        }
        spec["annotations"] = annotations;
        self.bundle_with(name, &spec)
    }

    /// `exec ID ARGS...` (not detached): its stdout.
    fn exec_out(&self, id: &str, args: &[&str]) -> String {
        let mut a = vec!["exec", id];
        a.extend_from_slice(args);
        self.ok(&a)
    }

    /// `create` with stdout and stderr to files and stdin from a pipe; returns the holder's
    /// pid (from the pid file) and the pipe.
    fn create(&self, id: &str, bundle: &Path) -> (i32, std::process::ChildStdin) {
        let pid_file = self.dir.join(format!("{id}.pid"));
        let out = std::fs::File::create(self.dir.join(format!("{id}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.join(format!("{id}.err"))).unwrap();
        let mut child = self
            .oci()
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "create {id}: {status}: {}",
            std::fs::read_to_string(self.dir.join(format!("{id}.err"))).unwrap_or_default()
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (pid, stdin)
    }

    fn output_of(&self, id: &str, stream: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.{stream}"))).unwrap_or_default()
    }

    fn assert_nothing_left(&self, id: &str) {
        assert!(!self.root.join(id).exists(), "record left under --root");
        let sb = self.state.join("sandboxes").join(id);
        assert!(!sb.exists(), "sandbox state left: {}", sb.display());
        assert!(
            mounts_under(&self.state).is_empty(),
            "mounts left under {}",
            self.state.display()
        );
        assert!(
            processes_mentioning(&self.state.display().to_string()).is_empty(),
            "processes of the sandbox left"
        );
        for h in ember_runtime::cgroups::hierarchies() {
            let d = h.join("ember").join(id);
            assert!(!d.exists(), "cgroup left: {}", d.display());
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Makes this process the subreaper of orphaned descendants (the holders).
fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Waits for the (reparented) process `pid` and returns its exit code, or 128 + signal.
fn reap(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let start = Instant::now();
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(e) => panic!("waitpid {pid}: {e} (not reparented to this subreaper?)"),
        }
        assert!(
            start.elapsed() < timeout,
            "process {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unknown_ids_are_reported_in_runc_words() {
    let env = env("unknown");
    for cmd in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["delete", "--force", "nope"],
        vec!["pause", "nope"],
        vec!["ps", "--format", "json", "nope"],
        vec!["exec", "--process", "/dev/null", "nope"],
    ] {
        let err = env.fails(&cmd);
        assert!(err.contains("does not exist"), "{cmd:?}: {err}");
    }
    let err = env.fails(&["state", "../etc"]);
    assert!(err.contains("invalid container id"), "{err}");
    let err = env.fails(&["kill", "nope", "SIGNOPE"]);
    assert!(err.contains("unknown signal"), "{err}");
}

#[test]
fn bundle_with_a_bad_field_is_named_and_leaves_nothing() {
    let env = env("badfield");
    let b = busybox_bundle(&env.dir.join("bundle")).unwrap();
    let mut spec = default_spec(&["true"]);
    spec["process"]["user"]["uid"] = Value::String("root".into());
    write_spec(&b, &spec).unwrap();
    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(
        err.contains("process.user.uid") && err.contains("config.json"),
        "{err}"
    );
    // A missing rootfs is named too.
    let b2 = env.dir.join("empty");
    std::fs::create_dir_all(&b2).unwrap();
    write_spec(&b2, &default_spec(&["true"])).unwrap();
    let err = env.fails(&["create", "--bundle", b2.to_str().unwrap(), "c1"]);
    assert!(err.contains("root.path"), "{err}");
    assert!(!env.root.join("c1").exists(), "a record was left");
    let err = env.fails(&["state", "c1"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn preserved_fds_are_refused_not_dropped() {
    let env = env("preservefds");
    let b = busybox_bundle(&env.dir.join("bundle")).unwrap();
    write_spec(&b, &default_spec(&["true"])).unwrap();
    let bundle = b.to_str().unwrap();
    let err = env.fails(&["create", "--preserve-fds", "2", "--bundle", bundle, "c1"]);
    assert!(
        err.contains("--preserve-fds 2") && err.contains("file descriptors"),
        "{err}"
    );
    let err = env.fails(&["state", "c1"]);
    assert!(err.contains("does not exist"), "nothing was created: {err}");
    let err = env.fails(&[
        "exec",
        "--preserve-fds",
        "1",
        "--process",
        "/dev/null",
        "c1",
    ]);
    assert!(err.contains("--preserve-fds 1"), "{err}");
}

#[test]
fn features_and_spec() {
    let env = env("features");
    let f: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert!(f["ociVersionMax"].as_str().is_some(), "{f}");
    let dir = env.dir.join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    env.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    ember_runtime::oci::BundleSpec::parse(&text, &dir).unwrap();
    let err = env.fails(&["spec", "--bundle", dir.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn lifecycle_create_start_exec_exit_delete() {
    if let Some(why) = missing() {
        return skip("lifecycle_create_start_exec_exit_delete", &why);
    }
    become_subreaper();
    let env = env("life");
    let id = format!("life-{}", std::process::id());
    let b = env.bundle(
        "bundle",
        &[
            "sh",
            "-c",
            "read line; echo got:$line; echo err-line >&2; exit 7",
        ],
    );
    let err = env.fails(&["start", &id]);
    assert!(err.contains("does not exist"), "start before create: {err}");

    let (holder, mut stdin) = env.create(&id, &b);
    assert!(process_alive(holder as u32));
    let st = env.state(&id);
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], holder, "{st}");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(
        st["bundle"].as_str().map(PathBuf::from),
        Some(std::fs::canonicalize(&b).unwrap())
    );
    assert!(st["ociVersion"].as_str().is_some());

    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert!(err.contains("already exists"), "create twice: {err}");

    env.ok(&["start", &id]);
    assert_eq!(env.state(&id)["status"], "running");
    let err = env.fails(&["start", &id]);
    assert!(err.contains("cannot start"), "{err}");
    let err = env.fails(&["delete", &id]);
    assert!(err.contains("not stopped"), "delete while running: {err}");

    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(!pids.is_empty(), "ps found no processes");
    assert!(pids
        .iter()
        .all(|p| Path::new(&format!("/proc/{p}")).exists()));

    // A malformed --process file is refused, naming the field.
    let bad = env.dir.join("bad-process.json");
    std::fs::write(
        &bad,
        r#"{"cwd": "/", "args": ["true"], "user": {"uid": -1}}"#,
    )
    .unwrap();
    let err = env.fails(&["exec", "--process", bad.to_str().unwrap(), &id]);
    assert!(
        err.contains("user.uid") && err.contains("bad-process.json"),
        "{err}"
    );
    std::fs::write(&bad, "{not json").unwrap();
    let err = env.fails(&["exec", "--process", bad.to_str().unwrap(), &id]);
    assert!(err.contains("invalid JSON"), "{err}");

    // exec --detach: the pid file names a relay that exits with the process's status.
    let proc_file = env.dir.join("process.json");
    let mut p = default_spec(&["sh", "-c", "echo exec-out; exit 5"])["process"].clone();
    p["terminal"] = Value::Bool(false);
    std::fs::write(&proc_file, p.to_string()).unwrap();
    let exec_pid_file = env.dir.join("exec.pid");
    let exec_out = env.dir.join("exec.out");
    let status = env
        .oci()
        .args(["exec", "--detach", "--process"])
        .arg(&proc_file)
        .arg("--pid-file")
        .arg(&exec_pid_file)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&exec_out).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let exec_pid: i32 = std::fs::read_to_string(&exec_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(reap(exec_pid, Duration::from_secs(30)), 5);
    assert_eq!(std::fs::read_to_string(&exec_out).unwrap(), "exec-out\n");

    env.ok(&["pause", &id]);
    assert_eq!(env.state(&id)["status"], "paused");
    env.ok(&["resume", &id]);
    assert_eq!(env.state(&id)["status"], "running");

    // The init reads a line, writes to both streams and exits 7: the holder exits with 7.
    stdin.write_all(b"ping\n").unwrap();
    drop(stdin);
    assert_eq!(reap(holder, Duration::from_secs(30)), 7);
    assert_eq!(env.output_of(&id, "out"), "got:ping\n");
    assert_eq!(env.output_of(&id, "err"), "err-line\n");
    let st = env.state(&id);
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["pid"], 0, "{st}");
    let err = env.fails(&["kill", &id, "KILL"]);
    assert!(err.contains("container not running"), "{err}");
    env.ok(&["delete", &id]);
    let err = env.fails(&["state", &id]);
    assert!(err.contains("does not exist"), "{err}");
    env.assert_nothing_left(&id);
}

#[test]
fn kill_ends_the_holder_with_the_signal_status() {
    if let Some(why) = missing() {
        return skip("kill_ends_the_holder_with_the_signal_status", &why);
    }
    become_subreaper();
    let env = env("kill");
    let id = format!("kill-{}", std::process::id());
    let b = env.bundle("bundle", &["sleep", "1000"]);
    let (holder, _stdin) = env.create(&id, &b);
    env.ok(&["start", &id]);
    env.ok(&["kill", &id, "9"]);
    assert_eq!(reap(holder, Duration::from_secs(30)), 128 + 9);
    assert_eq!(env.state(&id)["status"], "stopped");
    env.ok(&["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn delete_force_after_the_holder_was_killed_leaves_nothing() {
    if let Some(why) = missing() {
        return skip(
            "delete_force_after_the_holder_was_killed_leaves_nothing",
            &why,
        );
    }
    become_subreaper();
    let env = env("killed");
    let id = format!("killed-{}", std::process::id());
    let b = env.bundle("bundle", &["sleep", "1000"]);
    let (holder, _stdin) = env.create(&id, &b);
    env.ok(&["start", &id]);
    assert!(env.state.join("sandboxes").join(&id).exists());
    // SAFETY: kill(2) of the holder we just created.
    unsafe { libc::kill(holder, libc::SIGKILL) };
    assert_eq!(reap(holder, Duration::from_secs(10)), 128 + 9);
    assert_eq!(env.state(&id)["status"], "stopped");
    // The agent and the container outlived their holder until now.
    assert!(
        !processes_mentioning(&env.state.display().to_string()).is_empty(),
        "the agent died with the holder: nothing to test"
    );
    env.ok(&["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn delete_force_of_a_running_container() {
    if let Some(why) = missing() {
        return skip("delete_force_of_a_running_container", &why);
    }
    become_subreaper();
    let env = env("force");
    let id = format!("force-{}", std::process::id());
    let b = env.bundle("bundle", &["sleep", "1000"]);
    let (holder, _stdin) = env.create(&id, &b);
    env.ok(&["start", &id]);
    let started = Instant::now();
    env.ok(&["delete", "--force", &id]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(reap(holder, Duration::from_secs(10)), 128 + 9);
    env.assert_nothing_left(&id);
}

#[test]
fn delete_of_a_created_container_ends_its_holder() {
    if let Some(why) = missing() {
        return skip("delete_of_a_created_container_ends_its_holder", &why);
    }
    become_subreaper();
    let env = env("created");
    let id = format!("created-{}", std::process::id());
    let b = env.bundle("bundle", &["true"]);
    let (holder, _stdin) = env.create(&id, &b);
    // runc deletes a created (never started) container without --force, killing its init.
    env.ok(&["delete", &id]);
    assert_eq!(reap(holder, Duration::from_secs(10)), 128 + 9);
    env.assert_nothing_left(&id);
}

#[test]
fn start_of_an_init_that_exits_at_once_succeeds() {
    if let Some(why) = missing() {
        return skip("start_of_an_init_that_exits_at_once_succeeds", &why);
    }
    become_subreaper();
    let env = env("quick");
    let b = env.bundle("bundle", &["true"]);
    // The holder removes the sandbox as soon as the init exits; `start` must still get its
    // answer (it did not, now and then, before the container's lock).
    for i in 0..10 {
        let id = format!("quick{i}-{}", std::process::id());
        let (holder, _stdin) = env.create(&id, &b);
        env.ok(&["start", &id]);
        assert_eq!(reap(holder, Duration::from_secs(10)), 0);
        env.ok(&["delete", &id]);
        env.assert_nothing_left(&id);
    }
}

// ------------------------------------------------------------------ CRI-O-style pods

const CRIO_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX: &str = "io.kubernetes.cri-o.SandboxID";
const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX: &str = "io.kubernetes.cri.sandbox-id";

/// What a container prints to say which sandbox it is in: its network namespace (off a VM
/// every container shares the host's boot id) and the boot id of its kernel (in a VM every
/// container of the pod shares the guest's network namespace, whose inode number may well
/// repeat in another VM booted the same way).
const WHERE_AM_I: &str = "readlink /proc/self/ns/net; cat /proc/sys/kernel/random/boot_id";

/// The line of [`WHERE_AM_I`]'s output that tells sandboxes apart on `backend`.
fn sandbox_line(backend: Backend, out: &str) -> String {
    let i = match backend {
        Backend::Process => 0,
        Backend::Microvm => 1,
    };
    out.lines().nth(i).unwrap_or_default().to_string()
}

ember_tests::on_both_backends!(
    pod_containers_share_one_sandbox,
    prestart_hook_network_and_delete_force_of_a_killed_holder,
    a_failing_prestart_hook_is_named_and_leaves_nothing,
);

/// The test bodies that run on both backends ([`ember_tests::on_both_backends`]).
mod body {
    use super::*;

    /// A sandbox container and a container that joins it (CRI-O's annotations) see the
    /// same sandbox (network namespace off a VM, boot id in one); a standalone container
    /// another. The joined container's output and exit status reach its holder.
    pub fn pod_containers_share_one_sandbox(backend: Backend) {
        let name = backend.test_name("pod_containers_share_one_sandbox");
        if let Some(why) = missing().or_else(|| backend.unavailable()) {
            return skip(&name, &why);
        }
        become_subreaper();
        let env = env_on(backend, "podboth");
        let wait = backend.scaled(Duration::from_secs(30));
        let pid = std::process::id();
        let (sb, c1, solo) = (
            format!("podsb-{pid}"),
            format!("podc1-{pid}"),
            format!("podsolo-{pid}"),
        );
        let b = env.pod_bundle("sb", &["sleep", "1000"], json!({CRIO_TYPE: "sandbox"}));
        let (sb_holder, _sb_in) = env.create(&sb, &b);
        env.ok(&["start", &sb]);
        let in_sandbox = env.exec_out(&sb, &["sh", "-c", WHERE_AM_I]);

        let script = format!("{WHERE_AM_I}; exit 7");
        let b = env.pod_bundle(
            "c1",
            &["sh", "-c", &script],
            json!({CRIO_TYPE: "container", CRIO_SANDBOX: sb}),
        );
        let (c1_holder, _c1_in) = env.create(&c1, &b);
        assert!(
            !env.state.join("sandboxes").join(&c1).exists(),
            "the joined container got a sandbox of its own"
        );
        env.ok(&["start", &c1]);
        assert_eq!(reap(c1_holder, wait), 7, "{}", env.output_of(&c1, "err"));
        let joined = env.output_of(&c1, "out");
        assert_eq!(joined.lines().count(), 2, "{joined:?}");
        assert_eq!(joined, in_sandbox, "the joined container is elsewhere");
        assert_eq!(env.state(&c1)["status"], "stopped");
        env.ok(&["delete", &c1]);
        assert_eq!(env.state(&sb)["status"], "running");

        let b = env.bundle("solo", &["sh", "-c", WHERE_AM_I]);
        let (solo_holder, _solo_in) = env.create(&solo, &b);
        env.ok(&["start", &solo]);
        assert_eq!(reap(solo_holder, wait), 0);
        let alone = env.output_of(&solo, "out");
        assert_ne!(
            sandbox_line(backend, &alone),
            sandbox_line(backend, &in_sandbox),
            "a standalone container shares the pod's sandbox: {alone:?} vs {in_sandbox:?}"
        );
        env.ok(&["delete", &solo]);

        env.ok(&["delete", "--force", &sb]);
        assert_eq!(reap(sb_holder, wait), 128 + 9);
        for id in [&sb, &c1, &solo] {
            env.assert_nothing_left(id);
        }
    }

    /// `create` of a container whose `prestart` hook fails names the hook and its message,
    /// and leaves nothing: on the microvm backend the hook ran in a network namespace made
    /// for it before any VM, and that namespace is gone too.
    pub fn a_failing_prestart_hook_is_named_and_leaves_nothing(backend: Backend) {
        let name = backend.test_name("a_failing_prestart_hook_is_named_and_leaves_nothing");
        if let Some(why) = missing().or_else(|| backend.unavailable()) {
            return skip(&name, &why);
        }
        let env = env_on(backend, "hookfail");
        let id = format!("hookfail-{}", std::process::id());
        let mut spec = default_spec(&["true"]);
        spec["hooks"] = json!({"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo no-network-for-you >&2; exit 3"]}
        ]});
        let b = env.bundle_with("bundle", &spec);
        let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), &id]);
        assert!(
            err.contains("hook prestart[0] failed") && err.contains("no-network-for-you"),
            "{err}"
        );
        env.assert_nothing_left(&id);
        assert!(
            mounts_under(&env.root).is_empty(),
            "mounts left under --root: {:?}",
            mounts_under(&env.root)
        );
    }

    /// A container whose spec asks for a new network namespace gets what a `prestart`
    /// hook put there ([`veth_hook`]): on the process backend the namespace is its init's;
    /// on the microvm backend one its holder made on the host (a bind mount under
    /// `--root`), whose veth end the VM's NIC takes over. After the holder was killed,
    /// `delete --force` leaves nothing: no record, no mount of that namespace, and the
    /// namespace itself is gone (the veth's host end with it).
    pub fn prestart_hook_network_and_delete_force_of_a_killed_holder(backend: Backend) {
        let name = backend.test_name("prestart_hook_network_and_delete_force_of_a_killed_holder");
        if let Some(why) = missing().or_else(|| backend.unavailable()) {
            return skip(&name, &why);
        }
        for tool in ["ip", "nsenter"] {
            if ember_tests::containerd::which(tool).is_none() {
                return skip(
                    &name,
                    &format!("{tool} is not on PATH (iproute2, util-linux)"),
                );
            }
        }
        become_subreaper();
        let env = env_on(backend, "hooknet");
        let wait = backend.scaled(Duration::from_secs(30));
        let pid = std::process::id();
        let v = u32::from(backend == Backend::Microvm);
        let id = format!("hooknet-{pid}");
        let host = format!("ehk{}{v}", pid % 1_000_000);
        let net = format!("10.214.{}", (pid % 127) * 2 + v);
        let mut spec = default_spec(&[
            "sh",
            "-c",
            &format!(
                "ip -o -4 addr show dev eth0; ping -c 1 -W 5 {net}.1 >/dev/null && echo pong; sleep 1000"
            ),
        ]);
        spec["hooks"] = json!({"prestart": [veth_hook(&host, &net)]});
        let b = env.bundle_with("bundle", &spec);
        let (holder, _stdin) = env.create(&id, &b);
        let held = env.root.join(&id).join("netns");
        match backend {
            Backend::Process => assert!(!held.exists(), "the process backend holds no netns"),
            Backend::Microvm => assert!(
                mounts_under(&env.root).contains(&held),
                "the holder holds the container's network namespace on {}",
                held.display()
            ),
        }
        env.ok(&["start", &id]);
        let start = Instant::now();
        while !env.output_of(&id, "out").contains("pong") {
            assert!(
                start.elapsed() < wait,
                "no answer from {net}.1 through the hook's veth: stdout {:?}, stderr {:?}",
                env.output_of(&id, "out"),
                env.output_of(&id, "err")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = env.output_of(&id, "out");
        assert!(
            out.contains(&format!("inet {net}.2/24")),
            "eth0 has the hook's address: {out}"
        );
        // SAFETY: kill(2) of the holder we just created.
        unsafe { libc::kill(holder, libc::SIGKILL) };
        assert_eq!(reap(holder, Duration::from_secs(10)), 128 + 9);
        env.ok(&["delete", "--force", &id]);
        env.assert_nothing_left(&id);
        assert!(
            mounts_under(&env.root).is_empty(),
            "mounts left under --root: {:?}",
            mounts_under(&env.root)
        );
        // The namespace ends with its last user, and the veth pair with it.
        let gone = Path::new("/sys/class/net").join(&host);
        let start = Instant::now();
        while gone.exists() {
            assert!(
                start.elapsed() < wait,
                "{} is left: the container's network namespace outlived delete --force",
                gone.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `prestart` hook as Docker's `libnetwork-setkey` works: it reads the state's `pid`
/// and puts one end of a veth pair, configured, into `/proc/<pid>/ns/net` as `eth0`,
/// keeping the other (`host`, with `.1` of `net`) on the host. Needs iproute2's `ip` and
/// util-linux's `nsenter` on the host.
fn veth_hook(host: &str, net: &str) -> Value {
    let script = format!(
        "set -e; pid=$(sed -n 's/.*\"pid\":\\([0-9][0-9]*\\).*/\\1/p'); test -n \"$pid\"; \
         ip link add {host} type veth peer name eth0 netns \"$pid\"; \
         ip addr add {net}.1/24 dev {host}; ip link set {host} up; \
         nsenter --net=/proc/$pid/ns/net sh -c 'ip addr add {net}.2/24 dev eth0 && ip link set eth0 up'"
    );
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", script],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    })
}

/// The rest of a pod's lifecycle (process backend): exec, ps, pause/resume and delete of a
/// joined container leave the sandbox container running; containerd CRI's annotations
/// work as CRI-O's; ending the sandbox container ends the joined ones (their holders exit
/// 137 and they are stopped); `delete --force` of all leaves nothing.
#[test]
fn pod_lifecycle_joined_containers_end_with_the_sandbox() {
    if let Some(why) = missing() {
        return skip("pod_lifecycle_joined_containers_end_with_the_sandbox", &why);
    }
    become_subreaper();
    let env = env("podlife");
    let wait = Duration::from_secs(30);
    let pid = std::process::id();
    let [sb, c1, c2, c3] = ["sb", "c1", "c2", "c3"].map(|n| format!("pl{n}-{pid}"));
    let b = env.pod_bundle("sb", &["sleep", "1000"], json!({CRI_TYPE: "sandbox"}));
    let (sb_holder, _sb_in) = env.create(&sb, &b);
    env.ok(&["start", &sb]);
    let sb_net = env.exec_out(&sb, &["readlink", "/proc/self/ns/net"]);

    // c1 (containerd CRI's annotations): exec, ps, pause/resume, its stdin, delete.
    let b = env.pod_bundle(
        "c1",
        &["sh", "-c", "read line; echo got:$line; exit 3"],
        json!({CRI_TYPE: "container", CRI_SANDBOX: sb}),
    );
    let (c1_holder, mut c1_in) = env.create(&c1, &b);
    assert_eq!(env.state(&c1)["status"], "created");
    env.ok(&["start", &c1]);
    assert_eq!(env.state(&c1)["status"], "running");
    assert_eq!(
        env.exec_out(&c1, &["readlink", "/proc/self/ns/net"]),
        sb_net
    );
    // The pod's pid namespace is the sandbox container's: c1 sees its `sleep`.
    let ps = env.exec_out(&c1, &["ps", "-o", "comm"]);
    assert!(ps.lines().any(|l| l.trim() == "sleep"), "{ps}");
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &c1])).unwrap();
    assert!(
        !pids.is_empty(),
        "ps found no processes of the joined container"
    );
    env.ok(&["pause", &c1]);
    assert_eq!(env.state(&c1)["status"], "paused");
    // Only the joined container is frozen.
    assert_eq!(env.exec_out(&sb, &["echo", "alive"]), "alive\n");
    env.ok(&["resume", &c1]);
    c1_in.write_all(b"ping\n").unwrap();
    drop(c1_in);
    assert_eq!(reap(c1_holder, wait), 3);
    assert_eq!(env.output_of(&c1, "out"), "got:ping\n");
    env.ok(&["delete", &c1]);
    assert_eq!(env.state(&sb)["status"], "running");
    assert!(!env.root.join(&c1).exists());

    // c2: delete --force of a running joined container leaves the sandbox running.
    let b = env.pod_bundle(
        "c2",
        &["sleep", "1000"],
        json!({CRIO_TYPE: "container", CRIO_SANDBOX: sb}),
    );
    let (c2_holder, _c2_in) = env.create(&c2, &b);
    env.ok(&["start", &c2]);
    env.ok(&["delete", "--force", &c2]);
    assert_eq!(reap(c2_holder, wait), 128 + 9);
    assert_eq!(env.state(&sb)["status"], "running");
    assert_eq!(env.exec_out(&sb, &["echo", "alive"]), "alive\n");

    // c3: ends with the sandbox container.
    let (c3_holder, _c3_in) = env.create(&c3, &b);
    env.ok(&["start", &c3]);
    env.ok(&["kill", &sb, "KILL"]);
    assert_eq!(reap(sb_holder, wait), 128 + 9);
    assert_eq!(reap(c3_holder, wait), 128 + 9);
    assert_eq!(env.state(&c3)["status"], "stopped");
    assert!(!env.state.join("sandboxes").join(&sb).exists());

    // Joining a sandbox whose holder is gone is refused, leaving nothing.
    let err = env.fails(&["create", "--bundle", b.to_str().unwrap(), &c2]);
    assert!(
        err.contains(&format!(
            "annotation {CRIO_SANDBOX} names sandbox {sb}, whose holder is gone"
        )),
        "{err}"
    );
    assert!(!env.root.join(&c2).exists());

    for id in [&sb, &c3] {
        env.ok(&["delete", "--force", id]);
    }
    for id in [&sb, &c1, &c2, &c3] {
        env.assert_nothing_left(id);
    }
}

/// A pod whose sandbox container's holder (the sandbox's owner) is SIGKILLed (process
/// backend): the sandbox outlives it, a joined container's `delete --force` before the
/// sandbox's and another's after it both succeed, and nothing is left.
#[test]
fn pod_owner_killed_then_delete_force_leaves_nothing() {
    if let Some(why) = missing() {
        return skip("pod_owner_killed_then_delete_force_leaves_nothing", &why);
    }
    become_subreaper();
    let env = env("podkill");
    let wait = Duration::from_secs(30);
    let pid = std::process::id();
    let [sb, c1, c2] = ["sb", "c1", "c2"].map(|n| format!("pk{n}-{pid}"));
    let b = env.pod_bundle("sb", &["sleep", "1000"], json!({CRI_TYPE: "sandbox"}));
    let (sb_holder, _sb_in) = env.create(&sb, &b);
    env.ok(&["start", &sb]);
    let mut members = Vec::new();
    for c in [&c1, &c2] {
        let b = env.pod_bundle(
            c,
            &["sleep", "1000"],
            json!({CRI_TYPE: "container", CRI_SANDBOX: sb}),
        );
        let (holder, stdin) = env.create(c, &b);
        env.ok(&["start", c]);
        members.push((holder, stdin));
    }
    // SAFETY: kill(2) of the holder we just created.
    unsafe { libc::kill(sb_holder, libc::SIGKILL) };
    assert_eq!(reap(sb_holder, wait), 128 + 9);
    assert_eq!(env.state(&sb)["status"], "stopped");
    assert!(
        !processes_mentioning(&env.state.display().to_string()).is_empty(),
        "the sandbox died with its owner: nothing to test"
    );
    // A member first (its owner gone, its holder is killed), then the sandbox (whatever
    // it left: the agent and every container in it), then the other member.
    env.ok(&["delete", "--force", &c1]);
    assert!(!env.root.join(&c1).exists());
    env.ok(&["delete", "--force", &sb]);
    env.ok(&["delete", "--force", &c2]);
    // c1's holder was killed by its delete; c2's saw its container killed with the sandbox.
    for (holder, _) in members {
        assert_eq!(reap(holder, wait), 128 + 9);
    }
    for id in [&sb, &c1, &c2] {
        env.assert_nothing_left(id);
    }
}

/// The pod annotations' errors name the annotation and leave nothing behind.
#[test]
fn pod_annotation_errors_are_named_and_leave_nothing() {
    if let Some(why) = missing() {
        return skip("pod_annotation_errors_are_named_and_leave_nothing", &why);
    }
    become_subreaper();
    let env = env("poderr");
    let pid = std::process::id();
    let [solo, c1] = ["solo", "c1"].map(|n| format!("pe{n}-{pid}"));
    let create_fails = |bundle: &Path| {
        let err = env.fails(&["create", "--bundle", bundle.to_str().unwrap(), &c1]);
        assert!(!env.root.join(&c1).exists(), "a record was left: {err}");
        err
    };

    let b = env.pod_bundle(
        "nosuch",
        &["true"],
        json!({CRIO_TYPE: "container", CRIO_SANDBOX: "nope"}),
    );
    let err = create_fails(&b);
    assert!(
        err.contains(
            "annotation io.kubernetes.cri-o.SandboxID names sandbox nope, which does not exist"
        ),
        "{err}"
    );

    let b = env.pod_bundle("badtype", &["true"], json!({CRI_TYPE: "pause"}));
    let err = create_fails(&b);
    assert!(
        err.contains(&format!("annotation {CRI_TYPE} is \"pause\"")),
        "{err}"
    );

    let b = env.pod_bundle("noid", &["true"], json!({CRIO_TYPE: "container"}));
    let err = create_fails(&b);
    assert!(err.contains(CRIO_SANDBOX), "{err}");

    // A standalone container is no pod's sandbox.
    let b = env.bundle("solo", &["sleep", "1000"]);
    let (solo_holder, _solo_in) = env.create(&solo, &b);
    let b = env.pod_bundle(
        "notsb",
        &["true"],
        json!({CRI_TYPE: "container", CRI_SANDBOX: solo}),
    );
    let err = create_fails(&b);
    assert!(
        err.contains(&format!(
            "annotation {CRI_SANDBOX} names container {solo}, which is not a sandbox"
        )),
        "{err}"
    );
    env.ok(&["delete", "--force", &solo]);
    assert_eq!(reap(solo_holder, Duration::from_secs(10)), 128 + 9);
    env.assert_nothing_left(&solo);
    env.assert_nothing_left(&c1);
}
