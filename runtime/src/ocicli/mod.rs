//! `ember-oci`: ember as a runc-compatible OCI runtime command line, for callers that drive
//! only such a command line: Docker 20.10 (daemon.json `runtimes: {"ember": {"path": ...}}`,
//! through containerd's `io.containerd.runc.v2` shim), Podman (`--runtime PATH`, with
//! conmon) and `ctr run --runtime io.containerd.runc.v2 --runc-binary PATH`.
//!
//! Each container gets its own sandbox (docker and podman have no pods), unless its
//! annotations make it a member of a CRI-O-style pod ([`pod`]). Because the
//! sandbox's VMM (or, on the `process` backend, the agent's parent) lives in the process
//! that calls [`crate::sandbox::Sandbox::start`], `create` forks a long-lived **holder**
//! ([`holder`]) per container: it starts the sandbox, creates the container in it, relays
//! the container's stdio between its own fds 0–2 (or a host PTY whose master went to the
//! console socket) and the agent's stdio streams, forwards the signals it receives to the
//! container, and, when the container's init exits, removes the sandbox and exits with the
//! container's status (code, or 128 + signal). The holder's pid is the one written to
//! `--pid-file`: it lives exactly as long as the container's init, so the callers (the runc
//! shim, conmon) can wait for and reap it as they would runc's container init. The other
//! commands (`start`, `kill`, `state`, `exec`, `pause`, ...) find the container's record
//! under `--root` ([`store`]) and talk to the sandbox's agent directly.
//!
//! **Pods.** A container of type `sandbox` (CRI-O's `io.kubernetes.cri-o.ContainerType`, or
//! containerd CRI's `io.kubernetes.cri.container-type`) gets its own sandbox as any other,
//! and its holder also listens on a pod socket in its directory under `--root` ([`owner`]).
//! A container of type `container` whose sandbox-id annotation
//! (`io.kubernetes.cri-o.SandboxID`, `io.kubernetes.cri.sandbox-id`) names such a container
//! joins its sandbox: it gets a holder of its own, the same as a standalone container's for
//! the caller (pid file, stdio relay, signals, exit status), which asks the sandbox
//! container's holder over that socket to create the container in the sandbox (only that
//! holder has the sandbox: its VMM or agent process and its host mounts), then opens the
//! container's stdio streams to the agent and waits for its init like any holder. Its
//! record names the sandbox's agent, so `start`, `kill`, `state`, `exec`, `ps`, `pause` and
//! `resume` (which freeze and thaw that container only) work unchanged; `delete` removes
//! it from the sandbox through the owning holder, and the sandbox stays. When the sandbox
//! container's init exits (or it is deleted with `--force`), its holder removes the
//! joined containers and the sandbox: their holders exit 137 and record it. A joined
//! container shares the sandbox container's pid, IPC and UTS namespaces (and, off a VM,
//! network) when its spec names them by path, as CRI-O's specs do, by the same path the
//! shim's pods take ([`crate::sandbox::ContainerRequest`]).

pub mod commands;
pub mod console;
pub mod error;
pub mod exec;
pub mod fork;
pub mod holder;
pub mod hooks;
pub mod log;
pub mod netns;
pub mod owner;
pub mod pod;
pub mod relay;
pub mod signal;
pub mod spec;
pub mod store;

pub use error::OciCliError;
