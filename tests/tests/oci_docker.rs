//! `ember-oci` under Docker 20.10 (Debian's `docker.io`): a private dockerd (its own data
//! root, exec root, pid file, socket and managed containerd, no iptables, and no bridge
//! but for `docker_bridge_network`'s, which gets a bridge of its own: [`Bridge`])
//! whose `daemon.json` registers ember as `runtimes: {"ember": {"path": ..., "runtimeArgs":
//! ["--config", ...]}}`, the route
//! by which Docker 20.10 drives a runc-compatible command line through containerd's
//! `io.containerd.runc.v2` shim. The offline busybox image is loaded with `docker load`;
//! `docker run --rm --runtime ember` must print, pass exit codes and leave nothing behind.
//!
//! The bodies in `body` run as `name` on the `process` backend and as `hw_kvm::name` on the
//! `microvm` one (each container in its own microVM), which runs in the nested KVM test host
//! on hosts without hardware virtualization ([`ember_tests::hw_kvm_runs_here`]). What only
//! the process backend has (the container's cgroup on the host: `--memory` there, OOM kills
//! reported to Docker) is tested on it alone; on the microvm backend `docker stats` shows
//! the VMM's cgroup, which the holder joins.
//!
//! Docker's default bridge network (`docker_bridge_network`) also needs iproute2's `ip` and
//! the bridge and veth kernel modules.
//!
//! Needs root, dockerd and its docker CLI (`apt-get install docker.io`), containerd and the
//! runc shim, busybox-static, and `ember-oci` and `ember-agent` built, and for the microvm
//! variants the guest assets (`make guest`); otherwise each test says `SKIP` and why.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_tests::backend::Backend;
use ember_tests::containerd::{self, mounts_under, processes_mentioning, unmount_under};
use ember_tests::image::busybox_docker_archive;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "busybox:ember";
/// How long one step may take on the process backend ([`Backend::scaled`] scales it).
const STEP: Duration = Duration::from_secs(60);

/// dockerd and the docker CLI that comes with it (the CLI next to it: a newer CLI elsewhere
/// on PATH may not speak Docker 20.10's API).
fn docker_binaries() -> Option<(PathBuf, PathBuf)> {
    let dockerd = containerd::which("dockerd")?;
    let cli = dockerd.with_file_name("docker");
    let cli = if cli.is_file() {
        cli
    } else {
        containerd::which("docker")?
    };
    Some((dockerd, cli))
}

fn unavailable(backend: Backend) -> Option<String> {
    if let Some(why) = containerd::unavailable() {
        return Some(why);
    }
    if docker_binaries().is_none() {
        return Some("dockerd is not installed (apt-get install docker.io)".into());
    }
    if containerd::which("containerd-shim-runc-v2").is_none() {
        return Some("containerd-shim-runc-v2 is not on PATH".into());
    }
    if !fixtures::busybox_available() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    if containerd::which("timeout").is_none() {
        return Some("coreutils' timeout is not on PATH".into());
    }
    ember_tests::oci::unavailable().or_else(|| backend.unavailable())
}

/// A private dockerd with ember registered and the busybox image loaded.
struct Docker {
    child: Option<Child>,
    cli: PathBuf,
    /// Socket and exec root (short paths: unix sockets).
    run_dir: PathBuf,
    /// ember's sandbox.state_dir.
    state: PathBuf,
    backend: Backend,
    /// The bridge of its default network, if it has one (deleted after dockerd stopped).
    bridge: Option<Bridge>,
    tmp: tempfile::TempDir,
}

impl Docker {
    /// dockerd for `body`'s test on `backend` (`tag` keeps its paths apart from the other
    /// tests'), or `None` after a `SKIP` line when it cannot run here. Its default network
    /// is `none` (`--bridge=none`).
    fn start(backend: Backend, body: &str, tag: &str) -> Option<Docker> {
        Docker::start_with(backend, body, tag, false)
    }

    /// [`Docker::start`], with `bridged`: Docker's default bridge network on a bridge of
    /// the test's own ([`Bridge`]).
    fn start_with(backend: Backend, body: &str, tag: &str, bridged: bool) -> Option<Docker> {
        if let Some(why) = unavailable(backend) {
            skip(&backend.test_name(body), &why);
            return None;
        }
        let bridge = if bridged {
            match Bridge::create(backend, tag) {
                Ok(b) => Some(b),
                Err(why) => {
                    skip(&backend.test_name(body), &why);
                    return None;
                }
            }
        } else {
            None
        };
        let (dockerd, cli) = docker_binaries().expect("checked");
        let tmp = tempfile::Builder::new()
            .prefix("ember-docker")
            .tempdir()
            .unwrap();
        // Both variants of a body may run at once (on a host with hardware KVM).
        let suffix = if backend == Backend::Microvm { "v" } else { "" };
        let run_dir = PathBuf::from(format!("/run/edk{}{tag}{suffix}", std::process::id()));
        let state = PathBuf::from(format!("/run/eds{}{tag}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).unwrap();
        // The README's form: the path of ember-oci, and `--config` (a global option) in
        // runtimeArgs, which dockerd puts in a wrapper script of its own.
        ember_tests::oci::wrapper(tmp.path(), &state, backend).unwrap();
        let oci = ember_tests::oci::binary().expect("checked");
        let config = tmp.path().join("ember.toml");
        let daemon_json = tmp.path().join("daemon.json");
        std::fs::write(
            &daemon_json,
            serde_json::json!({"runtimes": {"ember": {
                "path": oci,
                "runtimeArgs": ["--config", config],
            }}})
            .to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(tmp.path().join("dockerd.log")).unwrap();
        let child = Command::new(&dockerd)
            .arg("--config-file")
            .arg(&daemon_json)
            .arg("--data-root")
            .arg(tmp.path().join("data"))
            .arg("--exec-root")
            .arg(run_dir.join("x"))
            .arg("--pidfile")
            .arg(tmp.path().join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", run_dir.join("d.sock").display()))
            .arg(match &bridge {
                Some(b) => format!("--bridge={}", b.name),
                None => "--bridge=none".into(),
            })
            // No iptables rules and no host sysctl changed: the tests reach the bridge's
            // own address only, which needs neither NAT nor forwarding.
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--storage-driver=overlay2",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Docker {
            child: Some(child),
            cli,
            run_dir,
            state,
            backend,
            bridge,
            tmp,
        };
        let start = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                start.elapsed() < backend.scaled(STEP),
                "dockerd did not answer within {} s:\n{}",
                backend.scaled(STEP).as_secs(),
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let tar = d.tmp.path().join("busybox.tar");
        busybox_docker_archive(&tar, IMAGE).unwrap();
        let out = d.docker(&["load", "-i", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "docker load: {}\n{}",
            text(&out.stderr),
            d.log_tail()
        );
        Some(d)
    }

    /// `docker ARGS` against this dockerd. A step that hangs is ended after twice
    /// [`STEP`] on this backend (`timeout`'s status 124) and fails its test with dockerd's
    /// log rather than stalling the run.
    fn docker(&self, args: &[&str]) -> Output {
        let limit = (self.backend.scaled(STEP) * 2).as_secs().to_string();
        Command::new("timeout")
            .args(["-k", "10", &limit])
            .arg(&self.cli)
            .arg("--host")
            .arg(format!("unix://{}", self.run_dir.join("d.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.tmp.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn assert_nothing_left(&self) {
        // ember-oci's records: dockerd gives it a --root under its exec root.
        let mut records = Vec::new();
        find_records(&self.run_dir.join("x"), &mut records);
        assert!(records.is_empty(), "ember-oci records left: {records:?}");
        // The network namespaces ember-oci held for microVMs (under its --root; dockerd's
        // own live in its exec root's netns/).
        let docker_netns = self.run_dir.join("x").join("netns");
        let held: Vec<_> = mounts_under(&self.run_dir.join("x"))
            .into_iter()
            .filter(|m| !m.starts_with(&docker_netns) && m.ends_with("netns"))
            .collect();
        assert!(held.is_empty(), "network namespaces left: {held:?}");
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

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for dir in [&self.state, &self.run_dir, &self.tmp.path().to_path_buf()] {
            unmount_under(dir);
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        // After dockerd, which used it.
        self.bridge.take();
    }
}

/// A Linux bridge of the test's own for dockerd's `--bridge`, with a /24 of its own: the
/// host's `docker0` may be another dockerd's, and dockerd's `--bridge` takes an existing
/// bridge whose address makes the default network's subnet (and its gateway). Deleted
/// when dropped.
struct Bridge {
    name: String,
    /// Its address, the containers' gateway.
    gateway: String,
}

impl Bridge {
    /// Creates and brings up the bridge (`tag` and the backend keep it apart from other
    /// tests'), after checking that veth pairs can be made (Docker connects containers
    /// with them); the error says what is missing.
    fn create(backend: Backend, tag: &str) -> Result<Bridge, String> {
        if containerd::which("ip").is_none() {
            return Err("iproute2's ip is not on PATH".into());
        }
        let pid = std::process::id();
        let v = u32::from(backend == Backend::Microvm);
        let name = format!("edb{}{tag}{v}", pid % 100_000);
        // 10.213.0.0/16, one /24 per test process and backend.
        let gateway = format!("10.213.{}.1", (pid % 127) * 2 + v);
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    text(&out.stderr).trim()
                ))
            }
        };
        let veth = format!("edv{}{tag}{v}", pid % 100_000);
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{veth}p"),
        ])
        .map_err(|e| format!("cannot make a veth pair (the veth kernel module): {e}"))?;
        let _ = ip(&["link", "del", &veth]);
        ip(&["link", "add", &name, "type", "bridge"])
            .map_err(|e| format!("cannot make a bridge (the bridge kernel module): {e}"))?;
        let b = Bridge { name, gateway };
        ip(&["addr", "add", &format!("{}/24", b.gateway), "dev", &b.name])
            .and_then(|()| ip(&["link", "set", &b.name, "up"]))
            .map_err(|e| format!("cannot configure bridge {}: {e}", b.name))?;
        Ok(b)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Every ember-oci record (`container.json`) under `dir`.
fn find_records(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            find_records(&p, out);
        } else if p.file_name().is_some_and(|n| n == "container.json") {
            out.push(p);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_runs(d: &Docker, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}\ndockerd:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        d.log_tail()
    );
}

// Each body as `name` (process backend) and `hw_kvm::name` (microvm backend).
ember_tests::on_both_backends!(
    docker_run_with_the_ember_runtime,
    docker_detached_logs_exec_top_stop,
    docker_run_it_with_a_terminal,
    docker_bridge_network,
);

/// The test bodies that run on both backends ([`ember_tests::on_both_backends`]).
mod body {
    use super::*;

    pub fn docker_run_with_the_ember_runtime(backend: Backend) {
        let Some(d) = Docker::start(backend, "docker_run_with_the_ember_runtime", "r") else {
            return;
        };
        let run = [
            "run",
            "--rm",
            "--runtime",
            "ember",
            "--network",
            "none",
            IMAGE,
        ];
        let out = d.docker(&[&run[..], &["echo", "hi"]].concat());
        assert_runs(&d, &out, 0);
        assert_eq!(text(&out.stdout), "hi\n");

        let out = d.docker(&[&run[..], &["sh", "-c", "echo oops >&2; exit 3"]].concat());
        assert_runs(&d, &out, 3);
        assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));

        // `--network host`: Docker names the host's own network namespace. The process
        // backend's container joins it; a microVM cannot, and must refuse before it touches
        // the host's interfaces (joining it would redirect them into the VM).
        let host = [
            "run",
            "--rm",
            "--runtime",
            "ember",
            "--network",
            "host",
            IMAGE,
        ];
        let out = d.docker(&[&host[..], &["echo", "hi"]].concat());
        match backend {
            Backend::Process => {
                assert_runs(&d, &out, 0);
                assert_eq!(text(&out.stdout), "hi\n");
            }
            Backend::Microvm => {
                let err = text(&out.stderr);
                assert!(
                    !out.status.success()
                        && err.contains("is the host's own")
                        && err.contains("--network none"),
                    "--network host on a microVM: {:?}\nstdout: {}\nstderr: {err}\ndockerd:\n{}",
                    out.status,
                    text(&out.stdout),
                    d.log_tail()
                );
            }
        }
        d.assert_nothing_left();
    }

    pub fn docker_detached_logs_exec_top_stop(backend: Backend) {
        let Some(d) = Docker::start(backend, "docker_detached_logs_exec_top_stop", "d") else {
            return;
        };
        let name = match backend {
            Backend::Process => format!("det-{}", std::process::id()),
            Backend::Microvm => format!("det-v{}", std::process::id()),
        };
        let mut run = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            "ember",
            "--network",
            "none",
        ];
        // The limit is checked in the container's host cgroup (process backend) or in its
        // cgroup in the guest (microvm backend) below.
        run.extend(["--memory", "64m"]);
        run.extend([
            IMAGE,
            "sh",
            "-c",
            "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 1; done",
        ]);
        let out = d.docker(&run);
        assert_runs(&d, &out, 0);
        let start = Instant::now();
        while !text(&d.docker(&["logs", &name]).stdout).contains("started") {
            assert!(
                start.elapsed() < backend.scaled(Duration::from_secs(30)),
                "no output\n{}",
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // On the microvm backend the container's cgroup is the guest's: the limit is read
        // where it applies, in the guest, and `docker stats` shows the VMM's cgroup, which
        // the holder joins (what the VM costs the host).
        match backend {
            Backend::Process => assert_memory_limit_and_stats(&d, &name),
            Backend::Microvm => {
                assert_guest_memory_limit(&d, &name);
                assert_stats_are_the_vmms(&d, &name);
            }
        }
        let out = d.docker(&["exec", &name, "sh", "-c", "echo exec-hi; exit 4"]);
        assert_runs(&d, &out, 4);
        assert_eq!(text(&out.stdout), "exec-hi\n");
        // docker top: `ember-oci ps --format json`, then the host's ps.
        let out = d.docker(&["top", &name]);
        assert_runs(&d, &out, 0);
        let top = text(&out.stdout);
        match backend {
            // The container's own processes, on the host.
            Backend::Process => {
                assert!(top.contains("sleep") || top.contains("sh -c"), "{top}");
                assert!(
                    !top.contains("ember-oci"),
                    "the holder is not one of the container's processes: {top}"
                );
            }
            // The container's processes live in the guest: the holder (whose process runs
            // the VMM) stands for them, the pid Docker knows the container by.
            Backend::Microvm => {
                let out = d.docker(&["inspect", "-f", "{{.State.Pid}}", &name]);
                assert_runs(&d, &out, 0);
                let pid = text(&out.stdout).trim().to_string();
                let rows: Vec<&str> = top.lines().skip(1).collect();
                assert_eq!(rows.len(), 1, "docker top: {top}");
                assert_eq!(
                    rows[0].split_whitespace().nth(1),
                    Some(pid.as_str()),
                    "docker top: {top}"
                );
                assert!(rows[0].contains("ember-oci"), "docker top: {top}");
            }
        }
        // docker stop: SIGTERM through `ember-oci kill`, which the trap answers.
        let grace = backend
            .scaled(Duration::from_secs(20))
            .as_secs()
            .to_string();
        let out = d.docker(&["stop", "-t", &grace, &name]);
        assert_runs(&d, &out, 0);
        let out = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
        assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
        assert!(text(&d.docker(&["logs", &name]).stdout).contains("got-term"));
        let out = d.docker(&["rm", &name]);
        assert_runs(&d, &out, 0);
        d.assert_nothing_left();
    }

    /// Docker's default bridge network (a dockerd with a bridge of its own): the container
    /// has an `eth0` with the address Docker gave it, and reaches the bridge, its gateway.
    /// On the microvm backend Docker's `libnetwork-setkey` hook configures a network
    /// namespace the holder made on the host, whose veth is connected to the VM's NIC.
    pub fn docker_bridge_network(backend: Backend) {
        let Some(d) = Docker::start_with(backend, "docker_bridge_network", "n", true) else {
            return;
        };
        let gateway = d.bridge.as_ref().expect("bridged").gateway.clone();
        let name = match backend {
            Backend::Process => format!("net-{}", std::process::id()),
            Backend::Microvm => format!("net-v{}", std::process::id()),
        };
        let out = d.docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            "ember",
            IMAGE,
            "sh",
            "-c",
            "while :; do sleep 1; done",
        ]);
        assert_runs(&d, &out, 0);
        let out = d.docker(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.Gateway}}",
            &name,
        ]);
        assert_runs(&d, &out, 0);
        let inspect = text(&out.stdout);
        let fields: Vec<&str> = inspect.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "docker inspect: {inspect:?}");
        let (ip, prefix) = (fields[0], fields[1]);
        assert_eq!(
            fields[2], gateway,
            "Docker's gateway is the bridge's address"
        );
        let script = format!(
            "ip -o -4 addr show dev eth0; ping -c 1 -W 5 {gateway} >/dev/null && echo reached-gateway"
        );
        let out = d.docker(&["exec", &name, "sh", "-c", &script]);
        assert_runs(&d, &out, 0);
        let seen = text(&out.stdout);
        assert!(
            seen.contains(&format!("inet {ip}/{prefix}")),
            "eth0 has the address Docker reports ({ip}/{prefix}): {seen}"
        );
        assert!(
            seen.trim_end().ends_with("reached-gateway"),
            "the container reaches the bridge at {gateway}: {seen}"
        );
        let out = d.docker(&["rm", "-f", &name]);
        assert_runs(&d, &out, 0);
        d.assert_nothing_left();
    }

    pub fn docker_run_it_with_a_terminal(backend: Backend) {
        let Some(d) = Docker::start(backend, "docker_run_it_with_a_terminal", "t") else {
            return;
        };
        if containerd::which("script").is_none() {
            return skip(
                &backend.test_name("docker_run_it_with_a_terminal"),
                "util-linux's script is not installed",
            );
        }
        // docker -t needs a terminal: run it under script(1), whose exit code is docker's
        // (-e).
        let line = format!(
            "'{}' --host 'unix://{}' run --rm -it --runtime ember --network none {IMAGE} sh -c 'test -t 0 && test -t 1 && echo is-a-tty; exit 6'",
            d.cli.display(),
            d.run_dir.join("d.sock").display()
        );
        let limit = (backend.scaled(STEP) * 2).as_secs().to_string();
        let out = Command::new("timeout")
            .args([limit.as_str(), "script", "-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_runs(&d, &out, 6);
        assert!(
            text(&out.stdout).contains("is-a-tty"),
            "{}",
            text(&out.stdout)
        );
        d.assert_nothing_left();
    }
}

/// `--memory 64m` reaches the container's cgroup on the host (ember's: process backend),
/// and `docker stats` shows that limit and some usage.
fn assert_memory_limit_and_stats(d: &Docker, name: &str) {
    let id = text(&d.docker(&["inspect", "-f", "{{.Id}}", name]).stdout)
        .trim()
        .to_string();
    // The cgroup is /ember/<sandbox>/<container>; a 64-character id gets a shorter sandbox
    // id, so look for the container's directory under any sandbox.
    let mut limits = Vec::new();
    for (root, file) in [
        ("/sys/fs/cgroup/memory/ember", "memory.limit_in_bytes"),
        ("/sys/fs/cgroup/ember", "memory.max"),
    ] {
        for sb in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if let Ok(l) = std::fs::read_to_string(sb.path().join(&id).join(file)) {
                limits.push(l);
            }
        }
    }
    assert_eq!(
        limits.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        vec![(64 * 1024 * 1024).to_string()],
        "the container's memory limit"
    );
    // docker stats: the runc shim reads the cgroup of the pid file's process (the holder),
    // which sits in the container's cgroup, so the limit shown is the container's.
    let out = d.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name]);
    assert_runs(d, &out, 0);
    let usage = text(&out.stdout);
    assert!(usage.trim().ends_with("/ 64MiB"), "docker stats: {usage:?}");
    assert!(!usage.starts_with("0B"), "docker stats: {usage:?}");
}

/// `--memory 64m` reaches the container's cgroup inside the guest (microvm backend): the
/// container reads its own cgroup's `memory.max` (cgroup v2, the guest's only layout).
fn assert_guest_memory_limit(d: &Docker, name: &str) {
    let script = "p=$(sed -n 's/^0:://p' /proc/self/cgroup); \
                  cat /sys/fs/cgroup${p%/}/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    let out = d.docker(&["exec", name, "sh", "-c", script]);
    assert_runs(d, &out, 0);
    assert_eq!(
        text(&out.stdout).trim(),
        (64 * 1024 * 1024).to_string(),
        "the container's memory limit in the guest"
    );
}

/// Microvm backend: the holder (the pid Docker knows) sits in its VMM's host cgroup, so
/// `docker stats` shows the VM's usage: the guest memory it touched, some MiB at least.
fn assert_stats_are_the_vmms(d: &Docker, name: &str) {
    let out = d.docker(&["inspect", "-f", "{{.State.Pid}}", name]);
    assert_runs(d, &out, 0);
    let holder: u32 = text(&out.stdout).trim().parse().expect("a pid");
    // The VMM: the holder's child running ember-vmm.
    let vmm = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            stat.contains("(ember-vmm)")
                && after.split_whitespace().nth(1) == Some(holder.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("no ember-vmm child of the holder {holder}"));
    let cgroup = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        cgroup(holder),
        cgroup(vmm),
        "the holder is not in its VMM's cgroup"
    );
    assert!(cgroup(vmm).contains("/vmm"), "{}", cgroup(vmm));
    let out = d.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name]);
    assert_runs(d, &out, 0);
    let usage = text(&out.stdout);
    let used = usage.split('/').next().unwrap_or("").trim();
    let mib = used
        .strip_suffix("GiB")
        .and_then(|n| n.parse::<f64>().ok().map(|g| g * 1024.0))
        .or_else(|| used.strip_suffix("MiB").and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    assert!(mib >= 8.0, "docker stats shows {usage:?}, not a VM's usage");
}

/// Process backend only: the OOM kill happens in the container's host cgroup, whose events
/// containerd's runc shim watches through the holder. On the microvm backend the guest's
/// kernel kills the process and the host sees no OOM event of the container.
#[test]
fn docker_reports_an_oom_kill() {
    let Some(d) = Docker::start(Backend::Process, "docker_reports_an_oom_kill", "o") else {
        return;
    };
    let name = format!("oom-{}", std::process::id());
    // The shell keeps the whole substitution in memory: far past the 32 MiB limit.
    let out = d.docker(&[
        "run",
        "--name",
        &name,
        "--runtime",
        "ember",
        "--network",
        "none",
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        IMAGE,
        "sh",
        "-c",
        "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert!(
        !text(&out.stdout).contains("survived"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    // containerd's runc shim watches the OOM events of the holder's cgroup: the
    // container's, so Docker learns of the OOM kill.
    let out = d.docker(&["inspect", "-f", "{{.State.OOMKilled}}", &name]);
    assert_eq!(text(&out.stdout).trim(), "true", "{}", text(&out.stderr));
    let out = d.docker(&["rm", &name]);
    assert_runs(&d, &out, 0);
    d.assert_nothing_left();
}

/// `docker run --rm --runtime ember busybox true` against `--runtime runc`: the median of
/// 10 runs each, printed with their ratio (the README's Performance numbers). Ignored by
/// default (timings, not a check): `EMBER_OCI=target/release/ember-oci cargo test -p
/// ember-tests --test oci_docker -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_docker_run_true_ember_vs_runc() {
    let Some(d) = Docker::start(Backend::Process, "bench_docker_run_true_ember_vs_runc", "b")
    else {
        return;
    };
    let median = |runtime: &str| {
        let mut times: Vec<Duration> = (0..10)
            .map(|_| {
                let start = Instant::now();
                let out = d.docker(&[
                    "run",
                    "--rm",
                    "--runtime",
                    runtime,
                    "--network",
                    "none",
                    IMAGE,
                    "true",
                ]);
                assert_runs(&d, &out, 0);
                start.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    // One of each first: the image's layers and the daemons' caches are warm after.
    median("runc");
    median("ember");
    let runc = median("runc");
    let ember = median("ember");
    println!(
        "docker run --rm IMAGE true: runc {:.0} ms, ember (process backend) {:.0} ms, ratio {:.2}",
        runc.as_secs_f64() * 1000.0,
        ember.as_secs_f64() * 1000.0,
        ember.as_secs_f64() / runc.as_secs_f64()
    );
    d.assert_nothing_left();
}
