//! A small CRI (Kubernetes Container Runtime Interface, v1) client for tests.
//!
//! The calls go to one process per client (and its clones) running
//! `tests/cri/cri_client.py` (embedded in this crate), a request per line, with the Python of a
//! venv that holds the PyPI package `container-runtime-interface-api` (pre-generated gRPC
//! stubs of the CRI `api.proto`, plus `grpcio` and `protobuf` wheels): JSON request in,
//! JSON response out, proto field names. `scripts/install-deps.sh` creates that venv at
//! `${XDG_CACHE_HOME:-$HOME/.cache}/ember/cri-venv`; `$EMBER_CRI_PYTHON` names another
//! interpreter. When it is missing, [`unavailable`] says so and tests [`crate::skip`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ember_tests::containerd::{Containerd, Options};
//! use ember_tests::cri::{ContainerConfig, Cri, PodConfig};
//! let ctrd = Containerd::start(Options::with_cri())?;
//! let cri = Cri::connect(&ctrd.address())?;
//! let pod = PodConfig::host_network("p", "ember");
//! let pod_id = cri.run_pod_sandbox(&pod)?;
//! let c = ContainerConfig::new("c", "docker.io/library/busybox:ember", &["sleep", "60"]);
//! let id = cri.create_container(&pod_id, &pod, &c)?;
//! cri.start_container(&id)?;
//! let out = cri.exec_sync(&id, &["echo", "hi"], std::time::Duration::from_secs(10))?;
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The client script, run with `python -c`.
const SCRIPT: &str = include_str!("../cri/cri_client.py");

/// The PyPI package that provides the CRI stubs, with the version tested.
pub const PYPI_PACKAGE: &str = "container-runtime-interface-api==2.0.1";

/// Errors from the CRI client.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The Python venv with the CRI stubs is missing.
    #[error("CRI client not installed: no Python with the `cri_api` module at {0} (run scripts/install-deps.sh, which installs {PYPI_PACKAGE} into a venv there, or set EMBER_CRI_PYTHON)")]
    NotInstalled(PathBuf),
    /// Running the client failed.
    #[error("running the CRI client {python}: {source}")]
    Spawn {
        /// The interpreter.
        python: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The client crashed or printed something that is not its JSON answer.
    #[error("CRI client failed for {method} ({status}): {stderr}")]
    Client {
        /// The CRI method.
        method: String,
        /// The client's exit status.
        status: String,
        /// Its stderr (a Python traceback, usually).
        stderr: String,
    },
    /// The runtime answered with a gRPC error.
    #[error("CRI {method} failed: {code}: {details}")]
    Rpc {
        /// The CRI method.
        method: String,
        /// The gRPC status code name (`NOT_FOUND`, `UNKNOWN`, ...).
        code: String,
        /// The error message.
        details: String,
    },
    /// The response lacks a field the caller needs.
    #[error("CRI {method} response has no {field}: {response}")]
    Missing {
        /// The CRI method.
        method: String,
        /// The field.
        field: String,
        /// The whole response.
        response: Value,
    },
    /// Waiting for something timed out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The default venv of the CRI client: `${XDG_CACHE_HOME:-$HOME/.cache}/ember/cri-venv`.
pub fn default_venv() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache.join("ember").join("cri-venv")
}

/// The interpreter the client runs with: `$EMBER_CRI_PYTHON`, else the default venv's.
pub fn python() -> PathBuf {
    std::env::var_os("EMBER_CRI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_venv().join("bin").join("python"))
}

/// Why the CRI client cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import grpc, cri_api.v1.api_pb2_grpc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then(|| CriError::NotInstalled(py).to_string())
}

/// A pod sandbox's config (the parts tests vary).
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The runtime handler (`""`: containerd's default, `runc`; `ember`).
    pub runtime_handler: String,
    /// Share the host's network namespace (`NamespaceOption.network = NODE`); needed here,
    /// since there is no CNI.
    pub host_network: bool,
    /// The pod's log directory; container log paths are relative to it.
    pub log_directory: Option<PathBuf>,
    /// One process namespace for the whole pod (`NamespaceOption.pid = POD`,
    /// `shareProcessNamespace: true`): the pause process is every container's PID 1.
    pub share_process_namespace: bool,
}

impl PodConfig {
    /// A host-network pod `name` (uid `<name>-uid`, namespace `default`) for
    /// `runtime_handler`, without a log directory.
    pub fn host_network(name: &str, runtime_handler: &str) -> Self {
        PodConfig {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            runtime_handler: runtime_handler.into(),
            host_network: true,
            log_directory: None,
            share_process_namespace: false,
        }
    }

    /// The `PodSandboxConfig` message.
    pub fn to_json(&self) -> Value {
        let mut c = json!({
            "metadata": {
                "name": self.name, "uid": self.uid, "namespace": self.namespace, "attempt": 0
            },
            "linux": {"security_context": {"namespace_options": {
                "network": if self.host_network { "NODE" } else { "POD" },
                "pid": if self.share_process_namespace { "POD" } else { "CONTAINER" },
            }}},
        });
        // A host-network pod shares the host's UTS namespace, where runc refuses to set a
        // hostname ("unable to set hostname without a private UTS namespace"); kubelet
        // leaves it empty for such pods too.
        if !self.host_network {
            c["hostname"] = json!(self.name);
        }
        if let Some(d) = &self.log_directory {
            c["log_directory"] = json!(d.to_string_lossy());
        }
        c
    }
}

/// A container's config (the parts tests vary).
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// `metadata.name`.
    pub name: String,
    /// The image reference (already in containerd's `k8s.io` namespace).
    pub image: String,
    /// The command (replaces the image's entrypoint; empty: the image's).
    pub command: Vec<String>,
    /// The arguments (replace the image's cmd).
    pub args: Vec<String>,
    /// The log file, relative to the pod's log directory.
    pub log_path: Option<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

impl ContainerConfig {
    /// A container `name` running `command` from `image`.
    pub fn new(name: &str, image: &str, command: &[&str]) -> Self {
        ContainerConfig {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            log_path: None,
            env: Vec::new(),
        }
    }

    /// The `ContainerConfig` message.
    pub fn to_json(&self) -> Value {
        let mut c = json!({
            "metadata": {"name": self.name, "attempt": 0},
            "image": {"image": self.image},
            "command": self.command,
            "args": self.args,
            "envs": self.env.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "linux": {},
        });
        if let Some(p) = &self.log_path {
            c["log_path"] = json!(p);
        }
        c
    }
}

/// What `ExecSync` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's stdout.
    pub stdout: Vec<u8>,
    /// The command's stderr.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

impl ExecOutput {
    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// The running client script: requests on its stdin, answers on its stdout, a line each.
#[derive(Debug)]
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Its stderr (a traceback when it dies), in an unlinked file: a pipe nobody reads
    /// could fill up over many calls.
    stderr: std::fs::File,
}

impl Client {
    fn spawn(python: &Path) -> std::io::Result<Client> {
        let stderr = tempfile::tempfile()?;
        let mut child = Command::new(python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone()?)
            .spawn()?;
        Ok(Client {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
            child,
            stderr,
        })
    }

    /// Sends one request line and reads the answer line (`None`: the client died).
    fn ask(&mut self, line: &str) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        stdin.write_all(line.as_bytes()).ok()?;
        stdin.write_all(b"\n").ok()?;
        stdin.flush().ok()?;
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(n) if n > 0 => Some(answer),
            _ => None,
        }
    }

    /// Ends the client; returns its exit status and stderr.
    fn end(mut self) -> (Option<std::process::ExitStatus>, String) {
        drop(self.stdin.take());
        let status = self.child.wait().ok();
        let mut err = String::new();
        let _ = self.stderr.rewind();
        let _ = self.stderr.read_to_string(&mut err);
        (status, err.trim().to_string())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Its stdin closed, it ends after the call in progress.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A CRI client bound to one runtime socket. Its clones share one client process.
#[derive(Debug, Clone)]
pub struct Cri {
    address: PathBuf,
    python: PathBuf,
    client: Arc<Mutex<Option<Client>>>,
    /// The gRPC deadline of each call.
    pub timeout: Duration,
    /// How long the [`TwoContainerPod`] helpers wait for a container to run, an ExecSync
    /// and a log line (30 s by default; more where everything runs emulated).
    pub wait: Duration,
}

impl Cri {
    /// A client for the CRI server at `address` (containerd's gRPC socket); fails with
    /// [`CriError::NotInstalled`] when the Python client is missing. Does not connect yet.
    pub fn connect(address: &Path) -> Result<Cri, CriError> {
        if unavailable().is_some() {
            return Err(CriError::NotInstalled(python()));
        }
        Ok(Cri {
            address: address.to_path_buf(),
            python: python(),
            client: Arc::new(Mutex::new(None)),
            timeout: Duration::from_secs(120),
            wait: Duration::from_secs(30),
        })
    }

    /// A client for `ctrd`'s CRI plugin (started with [`crate::containerd::Options::cri`]),
    /// once the plugin sees the sandbox image [`crate::containerd::SANDBOX_IMAGE`].
    pub fn for_containerd(ctrd: &crate::containerd::Containerd) -> Result<Cri, CriError> {
        let cri = Cri::connect(&ctrd.address())?;
        cri.wait_for_image(crate::containerd::SANDBOX_IMAGE, Duration::from_secs(30))?;
        Ok(cri)
    }

    /// Calls `method` (e.g. `RunPodSandbox`) with `request` (the `<method>Request` message as
    /// JSON, proto field names) and returns the response message.
    pub fn call(&self, method: &str, request: Value) -> Result<Value, CriError> {
        let input = json!({
            "address": self.address.to_string_lossy(),
            "method": method,
            "request": request,
            "timeout": self.timeout.as_secs_f64(),
        });
        let spawn = |source| CriError::Spawn {
            python: self.python.clone(),
            source,
        };
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Client::spawn(&self.python).map_err(spawn)?);
        }
        let line = slot
            .as_mut()
            .expect("spawned above")
            .ask(&input.to_string());
        let answer: Option<Value> = line.as_deref().and_then(|l| serde_json::from_str(l).ok());
        let Some(answer) = answer else {
            // Dead, or it printed something else: the next call starts a fresh one.
            let (status, stderr) = slot.take().expect("spawned above").end();
            return Err(CriError::Client {
                method: method.into(),
                status: status.map_or("not known".into(), |s| s.to_string()),
                stderr: format!("{}{stderr}", line.unwrap_or_default()),
            });
        };
        if answer["ok"] == json!(true) {
            Ok(answer["response"].clone())
        } else {
            Err(CriError::Rpc {
                method: method.into(),
                code: answer["code"].as_str().unwrap_or("?").into(),
                details: answer["details"].as_str().unwrap_or("").into(),
            })
        }
    }

    fn field(&self, method: &str, resp: &Value, field: &str) -> Result<String, CriError> {
        resp[field]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CriError::Missing {
                method: method.into(),
                field: field.into(),
                response: resp.clone(),
            })
    }

    /// `Version`: the response (`runtime_name`, `runtime_version`, `runtime_api_version`).
    pub fn version(&self) -> Result<Value, CriError> {
        self.call("Version", json!({}))
    }

    /// `RunPodSandbox`; returns the pod sandbox id.
    pub fn run_pod_sandbox(&self, pod: &PodConfig) -> Result<String, CriError> {
        let resp = self.call(
            "RunPodSandbox",
            json!({"config": pod.to_json(), "runtime_handler": pod.runtime_handler}),
        )?;
        self.field("RunPodSandbox", &resp, "pod_sandbox_id")
    }

    /// `CreateContainer` in pod `pod_id` (created from `pod`); returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &PodConfig,
        container: &ContainerConfig,
    ) -> Result<String, CriError> {
        let resp = self.call(
            "CreateContainer",
            json!({
                "pod_sandbox_id": pod_id,
                "config": container.to_json(),
                "sandbox_config": pod.to_json(),
            }),
        )?;
        self.field("CreateContainer", &resp, "container_id")
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.call("StartContainer", json!({"container_id": id}))
            .map(drop)
    }

    /// `ExecSync`: runs `cmd` in container `id`, waits up to `timeout`.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, CriError> {
        let resp = self.call(
            "ExecSync",
            json!({"container_id": id, "cmd": cmd, "timeout": timeout.as_secs().max(1)}),
        )?;
        let bytes = |f: &str| base64_decode(resp[f].as_str().unwrap_or(""));
        Ok(ExecOutput {
            stdout: bytes("stdout"),
            stderr: bytes("stderr"),
            exit_code: resp["exit_code"].as_i64().unwrap_or(0) as i32,
        })
    }

    /// `ContainerStatus`: the `status` message (`state` is e.g. `CONTAINER_RUNNING`,
    /// `CONTAINER_EXITED`; `exit_code`, `log_path`, ...).
    pub fn container_status(&self, id: &str) -> Result<Value, CriError> {
        let resp = self.call("ContainerStatus", json!({"container_id": id}))?;
        Ok(resp["status"].clone())
    }

    /// Polls `ContainerStatus` until the container's state is `state` (e.g.
    /// `CONTAINER_EXITED`); returns that status.
    pub fn wait_container_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Value, CriError> {
        let start = Instant::now();
        loop {
            let status = self.container_status(id)?;
            if status["state"] == state {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(CriError::Timeout(
                    timeout,
                    format!("container {id} to be {state}, last status {status}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `StopContainer`, with `timeout` for the graceful stop.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), CriError> {
        self.call(
            "StopContainer",
            json!({"container_id": id, "timeout": timeout.as_secs()}),
        )
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.call("RemoveContainer", json!({"container_id": id}))
            .map(drop)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, pod_id: &str) -> Result<(), CriError> {
        self.call("StopPodSandbox", json!({"pod_sandbox_id": pod_id}))
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, pod_id: &str) -> Result<(), CriError> {
        self.call("RemovePodSandbox", json!({"pod_sandbox_id": pod_id}))
            .map(drop)
    }

    /// `ListPodSandbox` (no filter): the `PodSandbox` messages.
    pub fn list_pod_sandbox(&self) -> Result<Vec<Value>, CriError> {
        let resp = self.call("ListPodSandbox", json!({}))?;
        Ok(resp["items"].as_array().cloned().unwrap_or_default())
    }

    /// `ListContainers` (no filter): the `Container` messages.
    pub fn list_containers(&self) -> Result<Vec<Value>, CriError> {
        let resp = self.call("ListContainers", json!({}))?;
        Ok(resp["containers"].as_array().cloned().unwrap_or_default())
    }

    /// `ImageStatus`: the `Image` message, or `None` when the CRI plugin does not know it.
    pub fn image_status(&self, image: &str) -> Result<Option<Value>, CriError> {
        let resp = self.call("ImageStatus", json!({"image": {"image": image}}))?;
        Ok(resp.get("image").cloned())
    }

    /// Waits until the CRI plugin sees `image` (imported with `ctr -n k8s.io image import`;
    /// the CRI plugin learns of it from containerd's events, asynchronously), so that using
    /// it never triggers a pull.
    pub fn wait_for_image(&self, image: &str, timeout: Duration) -> Result<(), CriError> {
        let start = Instant::now();
        while self.image_status(image)?.is_none() {
            if start.elapsed() > timeout {
                return Err(CriError::Timeout(
                    timeout,
                    format!("the CRI plugin to see image {image}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Decodes standard base64 (how protobuf's JSON mapping writes `bytes`); invalid input
/// characters are skipped.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("aGk="), b"hi");
        assert_eq!(base64_decode("aGVsbG8K"), b"hello\n");
        assert_eq!(base64_decode(""), b"");
        assert_eq!(base64_decode("/w=="), [0xff]);
    }

    #[test]
    fn pod_config_asks_for_host_network() {
        let mut p = PodConfig::host_network("p", "");
        p.log_directory = Some("/logs".into());
        let j = p.to_json();
        assert_eq!(
            j["linux"]["security_context"]["namespace_options"]["network"],
            "NODE"
        );
        assert_eq!(j["log_directory"], "/logs");
        assert_eq!(j["metadata"]["uid"], "p-uid");
    }
}

/// The pod both CRI end-to-end tests run: containers `one` and `two` in a host-network pod
/// that shares one process namespace, each printing `hello from <name>` to its log and then
/// sleeping.
#[derive(Debug, Clone)]
pub struct TwoContainerPod {
    /// The pod's config (with its log directory).
    pub pod: PodConfig,
    /// The pod sandbox id.
    pub pod_id: String,
    /// The container ids, `one` then `two`.
    pub ids: Vec<String>,
    /// The pod's log directory on the host.
    pub logs: PathBuf,
}

/// Runs the pod `name` with `runtime_handler` and starts both containers from `image`;
/// returns once both run.
pub fn start_two_container_pod(
    cri: &Cri,
    name: &str,
    runtime_handler: &str,
    image: &str,
    logs: &Path,
) -> Result<TwoContainerPod, CriError> {
    let mut pod = PodConfig::host_network(name, runtime_handler);
    pod.log_directory = Some(logs.to_path_buf());
    pod.share_process_namespace = true;
    let pod_id = cri.run_pod_sandbox(&pod)?;
    let mut ids = Vec::new();
    for c in ["one", "two"] {
        let script = format!("echo hello from {c}; exec sleep 1000");
        let mut config = ContainerConfig::new(c, image, &["sh", "-c", &script]);
        config.log_path = Some(format!("{c}.log"));
        let id = cri.create_container(&pod_id, &pod, &config)?;
        cri.start_container(&id)?;
        ids.push(id);
    }
    for id in &ids {
        cri.wait_container_state(id, "CONTAINER_RUNNING", cri.wait)?;
    }
    Ok(TwoContainerPod {
        pod,
        pod_id,
        ids,
        logs: logs.to_path_buf(),
    })
}

impl TwoContainerPod {
    /// Asserts ExecSync (stdout with exit 0 in `one`, stderr with exit 3 in `two`) and that
    /// each container's log file holds its line in CRI's format (`<time> stdout F <line>`).
    pub fn assert_exec_and_logs(&self, cri: &Cri) {
        let out = cri
            .exec_sync(&self.ids[0], &["echo", "exec works"], cri.wait)
            .unwrap();
        assert_eq!(
            (out.stdout_str().as_str(), out.exit_code),
            ("exec works\n", 0)
        );
        let out = cri
            .exec_sync(
                &self.ids[1],
                &["sh", "-c", "echo oops >&2; exit 3"],
                cri.wait,
            )
            .unwrap();
        assert_eq!((out.stderr.as_slice(), out.exit_code), (&b"oops\n"[..], 3));
        // The pod shares one process namespace: both containers see the pause process as
        // PID 1, and each other's processes.
        for id in &self.ids {
            let out = cri
                .exec_sync(
                    id,
                    &[
                        "sh",
                        "-c",
                        "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o args",
                    ],
                    cri.wait,
                )
                .unwrap();
            let text = out.stdout_str();
            let pid1 = text.lines().next().unwrap_or_default();
            assert!(
                pid1.contains(crate::image::PAUSE_SCRIPT),
                "PID 1 of {id} is not the pause process: {text:?}"
            );
            assert!(
                text.matches("sleep 1000").count() >= 2,
                "{id} does not see both containers' processes: {text:?}"
            );
        }
        for name in ["one", "two"] {
            let path = self.logs.join(format!("{name}.log"));
            let want = format!("stdout F hello from {name}");
            let start = Instant::now();
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(&want) {
                    break;
                }
                assert!(
                    start.elapsed() < cri.wait,
                    "{} lacks {want:?}: {text:?}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Stops and removes both containers (asserting they exited) and the pod, and asserts
    /// that CRI lists no pod any more. A failing CRI call panics with its error and what
    /// `diagnose` returns (containerd's log and the sandbox's console, for example: a stop
    /// that times out inside the VM is only explained there).
    pub fn tear_down(&self, cri: &Cri, diagnose: &dyn Fn() -> String) {
        let check = |what: &str, r: Result<(), CriError>| {
            if let Err(e) = r {
                panic!("{what}: {e}\n{}", diagnose());
            }
        };
        for id in &self.ids {
            check(
                &format!("StopContainer {id}"),
                cri.stop_container(id, Duration::from_secs(1)),
            );
            let status = cri.container_status(id).unwrap();
            assert_eq!(
                status["state"],
                "CONTAINER_EXITED",
                "{status}\n{}",
                diagnose()
            );
            check(&format!("RemoveContainer {id}"), cri.remove_container(id));
        }
        check("StopPodSandbox", cri.stop_pod_sandbox(&self.pod_id));
        check("RemovePodSandbox", cri.remove_pod_sandbox(&self.pod_id));
        assert!(cri.list_pod_sandbox().unwrap().is_empty());
    }
}
