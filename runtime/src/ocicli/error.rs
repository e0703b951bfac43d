//! Errors of the OCI command line. Messages keep runc's wordings where callers match them:
//! "does not exist", "already exists", "container not running".

use std::path::PathBuf;

use crate::endpoint::EndpointError;
use crate::oci::OciError;
use crate::sandbox::SandboxError;
use crate::state::StateError;

/// An error of an `ember-oci` command; printed as one line (and logged to `--log`).
#[derive(Debug, thiserror::Error)]
pub enum OciCliError {
    /// No container with this id under `--root`.
    #[error("container {id} does not exist (no state under {root})")]
    NotExist {
        /// The id.
        id: String,
        /// The `--root` directory.
        root: PathBuf,
    },
    /// A container with this id exists already.
    #[error("container with id {id} already exists (state in {dir}); delete it first")]
    Exists {
        /// The id.
        id: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// The container's init is not running (stopped, or never created).
    #[error("container {id}: container not running")]
    NotRunning {
        /// The id.
        id: String,
    },
    /// The command needs another status.
    #[error("container {id}: cannot {action} a container that is {status}")]
    WrongStatus {
        /// The id.
        id: String,
        /// What was asked (`start`, `pause`, ...).
        action: &'static str,
        /// The container's status.
        status: String,
    },
    /// `delete` without `--force` of a container that still runs.
    #[error("cannot delete container {id} that is not stopped: {status} (kill it first, or use delete --force)")]
    NotStopped {
        /// The id.
        id: String,
        /// Its status.
        status: String,
    },
    /// A container id that cannot be used.
    #[error("invalid container id {id:?}: {reason}")]
    BadId {
        /// The id.
        id: String,
        /// Which part of the rule it breaks.
        reason: ember_sys::id::IdError,
    },
    /// The bundle is unusable; the message names the file and the field.
    #[error("bundle {bundle}: {source}")]
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// What is wrong.
        source: OciError,
    },
    /// A JSON input file (`--process`, `--resources`) is unusable.
    #[error("{what} {path}: {field}: {message}")]
    BadInput {
        /// Which option (`--process`, `--resources`).
        what: &'static str,
        /// The file (`-` for stdin).
        path: PathBuf,
        /// The JSON path of the bad field (`.` for the document).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Options that do not fit together, or a bad value.
    #[error("{0}")]
    Usage(String),
    /// A signal that is neither a known name nor a number from 1 to 64.
    #[error("unknown signal {0:?}: use a name (TERM, SIGKILL) or a number (1 to 64)")]
    BadSignal(String),
    /// ember's config could not be loaded.
    #[error("ember config: {0}")]
    Config(String),
    /// A file under `--root` or a given path could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record under `--root` is unreadable.
    #[error("{path}: not a valid ember-oci container record ({message}); remove it with `delete --force`")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// The sandbox or container could not be made.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A container's pod annotations cannot be followed.
    #[error(transparent)]
    Pod(#[from] super::pod::PodError),
    /// Sandbox state trouble (cleanup after a dead holder).
    #[error(transparent)]
    State(#[from] StateError),
    /// The sandbox's agent cannot be reached although the holder runs.
    #[error("container {id}: cannot reach its sandbox's agent: {source}")]
    Unreachable {
        /// The id.
        id: String,
        /// Why.
        source: EndpointError,
    },
    /// An agent call failed.
    #[error("container {id}: {rpc}: {message}")]
    Agent {
        /// The id.
        id: String,
        /// The RPC.
        rpc: &'static str,
        /// The agent's message.
        message: String,
    },
    /// The holder (or exec relay) process failed before the container was ready.
    #[error("{0}")]
    Holder(String),
    /// A host hook failed.
    #[error("hook {kind}[{index}] failed: {message}")]
    Hook {
        /// `prestart`, `createRuntime`, `poststart` or `poststop`.
        kind: String,
        /// Its index in the spec's list.
        index: usize,
        /// What happened.
        message: String,
    },
    /// The container's network namespace on the host (microvm backend) could not be made
    /// or removed.
    #[error(transparent)]
    Netns(#[from] super::netns::HeldNetnsError),
    /// The console socket could not be used.
    #[error("console socket {path}: {message}")]
    Console {
        /// The socket path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl OciCliError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciCliError {
        let path = path.into();
        move |source| OciCliError::Io { path, source }
    }
}
