//! Test harness: runs `ember-agent` as a host process on a Unix socket in a temporary
//! directory and talks to it through the real ttrpc API and stdio streams.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ember_agent_protocol::agent::{self as pb};
use ember_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use ember_agent_protocol::stream;
use ember_agent_protocol::ttrpc::context;
use ember_agent_protocol::ttrpc::r#async::Client;
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// A running agent.
pub struct TestAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub agent: AgentClient,
    pub health: HealthClient,
    pub stdio: PathBuf,
    pub bundle: PathBuf,
}

/// Returns why the agent tests cannot run here, if so.
pub fn skip_reason() -> Option<String> {
    if !ember_tests::is_root() {
        return Some("needs root (containers need namespaces, mounts and cgroups)".into());
    }
    if !ember_tests::fixtures::busybox_available() {
        return Some("needs Debian's busybox-static for the test bundle".into());
    }
    None
}

/// Reports `SKIP <test>: <why>` (through [`ember_tests::skip`]) and returns true when the
/// test must be skipped.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            report_skip(test, &why);
            true
        }
        None => false,
    }
}

pub use ember_tests::skip as report_skip;

pub fn ctx() -> context::Context {
    context::with_timeout(0)
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        Self::start_in(None).await
    }

    /// Starts the agent inside network namespace `netns` (a bind-mounted nsfs path).
    pub async fn start_in(netns: Option<&Path>) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("ember-agent-test")
            .tempdir()
            .unwrap();
        let bundle = ember_tests::fixtures::busybox_bundle(&dir.path().join("bundle")).unwrap();
        let sock = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember-agent"));
        let ns = netns.map(|p| std::fs::File::open(p).unwrap());
        let ns_fd = ns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: prctl and setns are async-signal-safe. The agent dies with the test
        // process, so an aborted test leaves no agent behind. `ns` outlives the spawn, so
        // its fd is open in the child.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some(fd) = ns_fd {
                    ember_sys::netns::enter(std::os::fd::BorrowedFd::borrow_raw(fd))?;
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stdio = PathBuf::from(format!("{}.stdio", sock.display()));
        for _ in 0..1500 {
            if sock.exists() && stdio.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = connect(&sock).await;
        TestAgent {
            child,
            dir,
            agent: AgentClient::new(client.clone()),
            health: HealthClient::new(client),
            stdio,
            bundle,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CreateContainer with the spec, the bundle as bundle_path, and the given stream ids.
    pub async fn create(
        &self,
        id: &str,
        spec: &Value,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<i32, String> {
        self.create_with(id, spec, stdin, stdout, stderr, vec![])
            .await
    }

    pub async fn create_with(
        &self,
        id: &str,
        spec: &Value,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        storages: Vec<pb::Storage>,
    ) -> Result<i32, String> {
        let mut req = pb::CreateContainerRequest::new();
        req.container_id = id.into();
        req.spec_json = spec.to_string();
        req.bundle_path = self.bundle.display().to_string();
        req.storages = storages;
        let mut s = pb::StdioStreams::new();
        s.stdin = stdin.into();
        s.stdout = stdout.into();
        s.stderr = stderr.into();
        req.stdio = Some(s).into();
        self.agent
            .create_container(ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| e.to_string())
    }

    pub async fn start_c(&self, id: &str) -> Result<i32, String> {
        let mut req = pb::StartContainerRequest::new();
        req.container_id = id.into();
        self.agent
            .start_container(ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| e.to_string())
    }

    pub async fn wait(&self, id: &str, exec: &str) -> Result<i32, String> {
        let mut req = pb::WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        self.agent
            .wait_process(ctx(), &req)
            .await
            .map(|r| r.exit_status)
            .map_err(|e| e.to_string())
    }

    pub async fn remove(&self, id: &str, force: bool) -> Result<(), String> {
        let mut req = pb::RemoveContainerRequest::new();
        req.container_id = id.into();
        req.force = force;
        self.agent
            .remove_container(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn signal(&self, id: &str, exec: &str, sig: i32, all: bool) -> Result<(), String> {
        let mut req = pb::SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        req.signal = sig as u32;
        req.all = all;
        self.agent
            .signal_process(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn exec(
        &self,
        id: &str,
        exec: &str,
        process: &Value,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<i32, String> {
        let mut req = pb::ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        req.process_json = process.to_string();
        let mut s = pb::StdioStreams::new();
        s.stdin = stdin.into();
        s.stdout = stdout.into();
        s.stderr = stderr.into();
        req.stdio = Some(s).into();
        self.agent
            .exec_process(ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| e.to_string())
    }

    pub async fn stats(&self, id: &str) -> pb::StatsContainerResponse {
        let mut req = pb::StatsContainerRequest::new();
        req.container_id = id.into();
        self.agent.stats_container(ctx(), &req).await.unwrap()
    }

    /// Opens a stream and reads it to EOF.
    pub async fn read_stream(&self, id: &str) -> String {
        let mut conn = stream::connect_unix(&self.stdio, id).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Creates, starts and waits for a container; returns exit status, stdout and stderr,
    /// then removes it.
    pub async fn run(&self, id: &str, spec: &Value) -> (i32, String, String) {
        let (o, e) = (format!("{id}-out"), format!("{id}-err"));
        self.create(id, spec, "", &o, &e).await.unwrap();
        let out = self.read_stream(&o);
        let err = self.read_stream(&e);
        self.start_c(id).await.unwrap();
        let (out, err) = tokio::join!(out, err);
        let status = self.wait(id, "").await.unwrap();
        self.remove(id, false).await.unwrap();
        (status, out, err)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busybox default spec running `sh -c script`.
pub fn sh(script: &str) -> Value {
    ember_tests::fixtures::default_spec(&["/bin/sh", "-c", script])
}

/// An OCI process running `sh -c script`.
pub fn sh_process(script: &str) -> Value {
    serde_json::json!({
        "args": ["/bin/sh", "-c", script],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0}
    })
}

/// Drops the pid namespace so that the container's init can be killed by any signal.
pub fn without_pid_ns(mut spec: Value) -> Value {
    let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "pid");
    spec
}

/// Cgroup directories of a container on this host (v1 controllers and v2).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join("ember").join(id);
            if p.exists() {
                found.push(p);
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/ember").join(id);
    if v2.exists() {
        found.push(v2);
    }
    found
}

/// Mount points of this (the host's) mount namespace under `dir`, sorted. Only these can be
/// leaked by an agent whose state and bundles live in `dir`; other mounts on a shared
/// machine come and go on their own.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    mount_points(|m| m.starts_with(dir))
}

/// Mount points of the host mount namespace equal to one of `targets`, with repeats.
pub fn mounts_at(targets: &[&str]) -> Vec<String> {
    mount_points(|m| targets.iter().any(|t| m == Path::new(t)))
}

/// This mount namespace's mount points (decoded by ember-sys) that `keep` picks, sorted.
fn mount_points(keep: impl Fn(&Path) -> bool) -> Vec<String> {
    let mounts = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")).unwrap();
    let mut v: Vec<String> = mounts
        .iter()
        .filter(|m| keep(&m.mount_point))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    v.sort();
    v
}

/// The command names of the agent's child processes (its warm spawn helper is
/// `ember-agent`; container processes are re-parented to the agent).
pub fn agent_children(agent_pid: u32) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest.split(' ').nth(1) == Some(agent_pid.to_string().as_str()) {
            v.push(head.split_once(" (").map(|x| x.1).unwrap_or("").to_string());
        }
    }
    v.sort();
    v
}

/// Connects to the agent's ttrpc socket, retrying while it appears (the socket file exists
/// between bind and listen).
pub async fn connect(sock: &Path) -> Client {
    let addr = format!("unix://{}", sock.display());
    let mut last = None;
    for _ in 0..500 {
        match Client::connect(&addr).await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent socket {addr} never accepted a connection: {last:?}");
}
