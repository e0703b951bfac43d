//! `ember run`, `ember list` and `ember cleanup` on the `process` backend (as root, with
//! Debian's busybox-static): exit status and stdio of a bundle run without containerd,
//! clear errors for broken bundles with nothing left behind, and cleanup of the sandbox a
//! killed `ember run` leaves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_tests::containerd::{mounts_under, process_alive, processes_mentioning};
use ember_tests::fixtures::{busybox_available, busybox_bundle, default_spec, write_spec};
use ember_tests::skip;

const EMBER: &str = env!("CARGO_BIN_EXE_ember");

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !ember_tests::is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !busybox_available() {
        return Some("needs Debian's busybox-static".into());
    }
    if !Path::new(EMBER).with_file_name("ember-agent").is_file() {
        return Some("ember-agent is not built next to ember (cargo build -p ember-agent)".into());
    }
    None
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

fn env(name: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    // A short state dir: agent socket paths must fit in sun_path.
    let state = PathBuf::from(format!("/run/ember-cli-{}-{name}", std::process::id()));
    let config = tmp.path().join("ember.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox]\nbackend = \"process\"\nstate_dir = \"{}\"\n",
            state.display()
        ),
    )
    .unwrap();
    Env {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        state,
        config,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new(EMBER)
            .args(["--config"])
            .arg(&self.config)
            .args(["cleanup", "--force"])
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn ember(env: &Env) -> Command {
    let mut c = Command::new(EMBER);
    c.arg("--config")
        .arg(&env.config)
        .env_remove("EMBER_CONFIG");
    c
}

fn bundle(env: &Env, args: &[&str]) -> PathBuf {
    let b = busybox_bundle(&env.dir.join("bundle")).unwrap();
    write_spec(&b, &default_spec(args)).unwrap();
    b
}

fn assert_nothing_left(env: &Env, id: &str) {
    let sandboxes = env.state.join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox state left: {left:?}");
    assert!(
        mounts_under(&env.state).is_empty(),
        "mounts left under {}",
        env.state.display()
    );
    assert!(
        processes_mentioning(&env.state.display().to_string()).is_empty(),
        "processes of the sandbox left"
    );
    for h in ember_runtime::cgroups::hierarchies() {
        let d = h.join("ember").join(id);
        assert!(!d.exists(), "cgroup left: {}", d.display());
    }
}

#[test]
fn run_passes_stdio_and_exit_status() {
    if let Some(why) = missing() {
        return skip("run_passes_stdio_and_exit_status", &why);
    }
    let env = env("stdio");
    let b = bundle(
        &env,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; read x; echo got $x; exit 5",
        ],
    );
    let mut child = ember(&env)
        .args(["run", "--id", "stdio1", "--bundle"])
        .arg(&b)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "stderr: {stderr}");
    assert_eq!(stdout, "out\ngot hello\n");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(
        stderr.contains("NO VM isolation"),
        "the process backend must warn: {stderr}"
    );
    assert_nothing_left(&env, "stdio1");
}

#[test]
fn broken_bundles_fail_with_the_field_named_and_leave_nothing() {
    if let Some(why) = missing() {
        return skip(
            "broken_bundles_fail_with_the_field_named_and_leave_nothing",
            &why,
        );
    }
    let env = env("bad");
    let b = bundle(&env, &["true"]);
    // `ember run` of bundle `b` as `id`: exit status and stderr.
    let run = |id: &str| {
        let out = ember(&env)
            .args(["run", "--id", id, "--bundle"])
            .arg(&b)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    std::fs::write(b.join("config.json"), "{\"ociVersion\": ").unwrap();
    let (code, e) = run("bad1");
    assert_eq!(code, Some(125), "{e}");
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );

    let mut spec = default_spec(&["true"]);
    spec["root"]["path"] = "no-such-rootfs".into();
    write_spec(&b, &spec).unwrap();
    let (code, e) = run("bad2");
    assert_eq!(code, Some(125), "{e}");
    assert!(
        e.contains("root.path") && e.contains("no-such-rootfs"),
        "{e}"
    );

    let mut spec = default_spec(&["true"]);
    spec["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
    write_spec(&b, &spec).unwrap();
    let (code, e) = run("bad3");
    assert_eq!(code, Some(125), "{e}");
    assert!(e.contains("linux.namespaces[0].type"), "{e}");

    std::fs::write(
        &env.config,
        "[sandbox]\nbackend = \"process\"\nstat_dir = \"/x\"\n",
    )
    .unwrap();
    let (code, e) = run("bad4");
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("stat_dir") && e.contains("state_dir"),
        "unknown key and suggestion: {e}"
    );
    for id in ["bad1", "bad2", "bad3"] {
        assert_nothing_left(&env, id);
    }
}

#[test]
fn cleanup_removes_what_a_killed_run_left() {
    if let Some(why) = missing() {
        return skip("cleanup_removes_what_a_killed_run_left", &why);
    }
    let env = env("crash");
    let b = bundle(&env, &["sleep", "600"]);
    let mut child = ember(&env)
        .args(["run", "--id", "crash1", "--bundle"])
        .arg(&b)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the container runs.
    let record = env.state.join("sandboxes/crash1/state.json");
    let start = Instant::now();
    let agent_pid = loop {
        let pid = std::fs::read_to_string(&record).ok().and_then(|t| {
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            v["containers"].as_array().filter(|c| !c.is_empty())?;
            v["resources"]
                .as_array()?
                .iter()
                .find_map(|r| (r["kind"] == "process").then(|| r["id"]["pid"].as_u64())?)
        });
        if let Some(p) = pid {
            break p as u32;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "container never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        process_alive(agent_pid),
        "the agent outlives its killed owner"
    );

    let list = ember(&env).args(["list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("crash1") && text.contains("dead"), "{text}");

    let out = ember(&env).args(["cleanup"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("removed"), "{text}");
    assert!(!process_alive(agent_pid), "cleanup kills the agent");
    assert_nothing_left(&env, "crash1");
}

#[test]
fn run_gives_a_terminal_its_window_size() {
    const TEST: &str = "run_gives_a_terminal_its_window_size";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    if Command::new("script").arg("-V").output().is_err() {
        return skip(TEST, "needs util-linux's `script` for a terminal");
    }
    let env = env("tty");
    let b = bundle(&env, &["sh", "-c", "tty; stty size; exit 3"]);
    let mut spec = default_spec(&["sh", "-c", "tty; stty size; exit 3"]);
    spec["process"]["terminal"] = true.into();
    write_spec(&b, &spec).unwrap();
    let line = format!(
        "stty rows 33 cols 91; {EMBER} --config {} run --id tty1 --bundle {}",
        env.config.display(),
        b.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("/dev/pts/"), "a terminal: {text}");
    assert!(
        text.contains("33 91"),
        "the window size reaches the container: {text}"
    );
    assert_nothing_left(&env, "tty1");
}
