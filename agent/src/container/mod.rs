//! The agent's container table and every lifecycle operation: create (through the spawn
//! helper), start, exec, signal, wait, remove, pause/resume, stats, update, terminal resize,
//! close-stdin and OOM events. The ttrpc layer (`service`) only translates messages.
//!
//! This module holds the types ([`Containers`], its entries and [`ContainerError`]) and the
//! table's construction; each concern adds its operations to [`Containers`] in a module of
//! its own: `table` (id reservation and look-ups), `process` (spawning a container's
//! processes and watching their exit), `create`, `run` (start, exec, signal, wait,
//! terminal, stdin), `resources` (the cgroup: processes, stats, update, pause), `remove`,
//! `spare` (reused bundle directories) and `oom` (OOM-kill events).

mod create;
mod oom;
mod process;
mod remove;
mod resources;
mod run;
mod spare;
mod table;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slog::Logger;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cgroup::CgroupError;
use crate::reaper::Reaper;
use crate::spawn::{self, SpawnError, Spawner};
use crate::spec::SpecError;
use crate::stdio::{ProcessStdio, StdioError, StreamRegistry};
use crate::storage::{Mounted, StorageError};
use crate::syscall::Syscall;
use crate::tty::TtyError;

use self::spare::{SpareBundles, SPARES_DIR};

/// Errors of container operations; each names the container (and exec) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// No such exec in the container.
    #[error("container {container:?} has no process with exec_id {exec:?}")]
    ExecNotFound {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The exec id is taken.
    #[error("container {container:?} already has a process with exec_id {exec:?}")]
    ExecExists {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The operation does not fit the container's state.
    #[error("container {id:?}: {message}")]
    State {
        /// Container id.
        id: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A bad request field or OCI document.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Stdio setup failed.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// The process could not be created.
    #[error("container {id:?}: {source}")]
    Spawn {
        /// Container id.
        id: String,
        /// Why.
        source: SpawnError,
    },
    /// Terminal handling failed.
    #[error("container {id:?}: {source}")]
    Tty {
        /// Container id.
        id: String,
        /// Why.
        source: TtyError,
    },
    /// A cgroup operation failed.
    #[error("container {id:?}: {source}")]
    Cgroup {
        /// Container id.
        id: String,
        /// Why.
        source: CgroupError,
    },
    /// A storage could not be mounted.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// libcontainer failed on start, kill, pause, resume or delete.
    #[error("container {id:?}: {op}: {message}")]
    Libcontainer {
        /// Container id.
        id: String,
        /// The operation.
        op: &'static str,
        /// libcontainer's error chain.
        message: String,
    },
    /// An I/O error on the agent's state directory.
    #[error("container {id:?}: {path}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One process of a container (its init or an exec).
struct Process {
    pid: i32,
    exit: watch::Receiver<Option<i32>>,
    stdio: ProcessStdio,
    pty: Option<OwnedFd>,
}

struct Container {
    cgroup: PathBuf,
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
    storages: Vec<Mounted>,
    started: bool,
    /// The spec has hooks: start and delete then run in the spawn helper.
    hooks: bool,
    oom_task: JoinHandle<()>,
}

/// Stdio stream ids of a new process.
#[derive(Debug, Clone, Default)]
pub struct StreamIds {
    /// stdin stream id (empty: /dev/null).
    pub stdin: String,
    /// stdout stream id (empty: /dev/null).
    pub stdout: String,
    /// stderr stream id (empty: /dev/null).
    pub stderr: String,
}

/// The container table.
pub struct Containers {
    log: Logger,
    /// Mounts and unmounts the containers' storages.
    sys: Arc<dyn Syscall>,
    reaper: Reaper,
    spawner: Spawner,
    streams: StreamRegistry,
    /// libcontainer's state root.
    root: PathBuf,
    /// The agent's bundle copies.
    bundles: PathBuf,
    /// Bundle directories of removed containers (each with its `config.json`), reused by
    /// the next creates: renaming a directory into place and overwriting its file is much
    /// cheaper than creating and deleting both on a disk file system (ext4 scans past
    /// every recently deleted inode when it allocates one).
    spares: Arc<Mutex<SpareBundles>>,
    /// Containers being cleaned up in the background (see [`Containers::remove`]); done
    /// when the value turns true.
    cleanups: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
    /// Console sockets.
    consoles: PathBuf,
    /// Numbers the console sockets: short names (`c<n>.sock`), because the socket path
    /// must fit in sun_path (108 bytes) and container ids may be 64 characters long.
    console_seq: std::sync::atomic::AtomicU64,
    table: Mutex<HashMap<String, Container>>,
    reserved: Mutex<HashSet<String>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Whether the agent's network namespace is the pod's own (a VM guest): then a
    /// container that joins it gets its `net.*` sysctls written there
    /// ([`Containers::with_pod_network_sysctls`]).
    pod_network_sysctls: bool,
}

fn lc_err(id: &str, op: &'static str, e: libcontainer::error::LibcontainerError) -> ContainerError {
    ContainerError::Libcontainer {
        id: id.to_string(),
        op,
        message: spawn::error_chain(&e),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking agent task panicked")
}

impl Containers {
    /// A table keeping its state under `state_dir`, making its system calls through `sys`.
    pub fn new(
        log: Logger,
        sys: Arc<dyn Syscall>,
        reaper: Reaper,
        streams: StreamRegistry,
        state_dir: &Path,
    ) -> std::io::Result<Self> {
        let root = state_dir.join("containers");
        let bundles = state_dir.join("bundles");
        let consoles = state_dir.join("consoles");
        for d in [&root, &bundles, &consoles] {
            std::fs::create_dir_all(d)?;
        }
        // Spares left by an agent that did not shut down cleanly are not reused.
        let spares = bundles.join(SPARES_DIR);
        let _ = std::fs::remove_dir_all(&spares);
        std::fs::create_dir_all(&spares)?;
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Ok(Containers {
            log,
            sys,
            spawner: Spawner::new(reaper.clone()),
            reaper,
            streams,
            root,
            bundles,
            spares: Arc::new(Mutex::new(SpareBundles::default())),
            cleanups: Arc::new(Mutex::new(HashMap::new())),
            consoles,
            console_seq: Default::default(),
            table: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            pod_network_sysctls: false,
        })
    }

    /// Writes the `net.*` sysctls of a container without a network namespace of its own
    /// into the agent's network namespace, instead of handing them to libcontainer (which
    /// refuses them for a container in its runtime's namespace). Only for an agent that is
    /// a VM guest's init: there that namespace is the pod's (the runtime drops the spec's
    /// network namespace, the guest's NIC being the pod's), so the sysctls are the pod's,
    /// as Kubernetes has them, and never the host's. Docker sets two such sysctls on every
    /// container with a network namespace (`net.ipv4.ping_group_range`,
    /// `net.ipv4.ip_unprivileged_port_start`).
    pub fn with_pod_network_sysctls(mut self, on: bool) -> Self {
        self.pod_network_sysctls = on;
        self
    }
}
