//! `ember-oci`: ember as a runc-compatible OCI runtime command line, for callers that drive
//! only such a command line: Docker 20.10 (daemon.json `runtimes: {"ember": {"path": ...}}`,
//! through containerd's `io.containerd.runc.v2` shim), Podman (`--runtime PATH`, with
//! conmon) and `ctr run --runtime io.containerd.runc.v2 --runc-binary PATH`.
//!
//! Each container gets its own sandbox (docker and podman have no pods). Because the
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

pub mod commands;
pub mod console;
pub mod error;
pub mod exec;
pub mod fork;
pub mod holder;
pub mod hooks;
pub mod log;
pub mod owner;
pub mod pod;
pub mod relay;
pub mod signal;
pub mod spec;
pub mod store;

pub use error::OciCliError;
