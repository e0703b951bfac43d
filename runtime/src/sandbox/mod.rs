//! The sandbox: one per pod (or per standalone container). It owns the isolation boundary
//! (a microVM, or the agent in fresh namespaces on the host), the agent connection, the
//! shared directory through which container rootfs and volumes reach the agent, and the
//! state record of every host resource it made.
//!
//! Both backends sit behind [`Backend`]; everything above it (the shim, `ember run`) is the
//! same code for both.

pub mod block;
pub mod microvm;
pub mod process;
pub mod vmm_process;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ember_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, RemoveContainerRequest, StdioStreams, Storage,
    UpdateNetworkRequest,
};
use ember_agent_protocol::AgentConnection;
use ember_config::{Backend as BackendKind, Config};
use log::{info, warn};

use crate::endpoint::{AgentEndpoint, EndpointError};
use crate::mounts::{self, MountError, MountSpec};
use crate::oci::{self, BlockVolume, BundleSpec, OciError, Translation};
use crate::state::{Resource, SandboxState, StateError};
use block::BlockVolumeError;

/// Errors of sandbox operations.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// A host mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The bundle's spec is invalid.
    #[error(transparent)]
    Spec(#[from] OciError),
    /// The agent could not be reached.
    #[error("sandbox {id}: {source}{}", log_tail(.agent_log))]
    Agent {
        /// Sandbox id.
        id: String,
        /// Why.
        source: EndpointError,
        /// The last lines of the agent's log, when there is one.
        agent_log: String,
    },
    /// The agent (or VM) ended while starting.
    #[error("sandbox {id}: the {what} exited while starting ({status}){}", log_tail(.log))]
    Died {
        /// Sandbox id.
        id: String,
        /// Agent or VM.
        what: &'static str,
        /// How it ended.
        status: String,
        /// Its log tail.
        log: String,
    },
    /// The backend cannot run on this host (found before anything was made).
    #[error("sandbox {id}: {message}")]
    Unsupported {
        /// Sandbox id.
        id: String,
        /// Why, what to use instead, and where to learn more (one line).
        message: String,
    },
    /// The backend could not start.
    #[error("sandbox {id}: {message}")]
    Backend {
        /// Sandbox id.
        id: String,
        /// What failed, naming the path or setting.
        message: String,
    },
    /// The host's random source (getrandom) failed, so no stream id could be made.
    #[error("cannot make a stdio stream id: the host's getrandom(2) failed: {0}")]
    Random(String),
    /// An agent RPC failed.
    #[error("sandbox {id}: agent {rpc}: {message}")]
    Rpc {
        /// Sandbox id.
        id: String,
        /// The RPC.
        rpc: &'static str,
        /// The agent's error.
        message: String,
    },
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; its log ends with:\n{}", log.trim_end())
    }
}

/// What the runtime tells a backend when starting it.
#[derive(Debug)]
pub struct StartContext<'a> {
    /// Sandbox id.
    pub id: &'a str,
    /// The configuration.
    pub config: &'a Config,
    /// The sandbox's state (record resources here before making them).
    pub state: &'a mut SandboxState,
    /// The host side of the shared directory.
    pub shared_dir: &'a Path,
    /// The pod's network namespace to join, if any.
    pub netns: Option<&'a Path>,
}

/// How a sandbox ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxExit {
    /// A human-readable description (`exit status 1`, `killed by signal 9`).
    pub status: String,
}

/// An isolation backend: where the agent runs.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Whether this host can run the backend at all, asked before anything is made for a
    /// sandbox; the error is one line saying why not and what to do. The default accepts.
    fn check_host(&self) -> Result<(), String> {
        Ok(())
    }
    /// Starts the agent's environment, records what it made in the state, and returns where
    /// the agent listens.
    async fn start(&mut self, ctx: StartContext<'_>) -> Result<AgentEndpoint, SandboxError>;
    /// Where the agent sees the shared directory.
    fn agent_shared_dir(&self) -> PathBuf;
    /// Storages the agent mounts at CreateSandbox (the microVM's virtio-fs share).
    fn sandbox_storages(&self) -> Vec<Storage>;
    /// Where the agent mounts block volumes, when this backend turns filesystem mounts of
    /// host block devices and image files into them (the microVM's virtio-blk slots);
    /// `None` leaves such mounts to the agent as they are.
    fn block_volume_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Attaches the block volumes of container `container_id` and returns the agent's
    /// storages for them. Volumes attached before a failure stay attached until
    /// [`Backend::release_block_volumes`].
    fn attach_block_volumes(
        &self,
        _container_id: &str,
        volumes: &[BlockVolume],
    ) -> Result<Vec<Storage>, BlockVolumeError> {
        match volumes.first() {
            None => Ok(Vec::new()),
            Some(v) => Err(BlockVolumeError::Unsupported {
                volume: v.describe(),
                backend: self.kind().as_str(),
            }),
        }
    }
    /// Detaches every block volume of container `container_id` (after the agent unmounted
    /// them).
    fn release_block_volumes(&self, _container_id: &str) {}
    /// The agent's UpdateNetwork for the pod network, when the agent must configure the
    /// guest's NICs itself (a microVM in a pod network namespace).
    fn network_request(&self) -> Option<UpdateNetworkRequest> {
        None
    }
    /// The host pid that stands for the sandbox (reported to containerd as the task pid).
    fn pid(&self) -> u32;
    /// The agent's (or VM's) log file, for error messages.
    fn log_path(&self) -> Option<PathBuf>;
    /// Resolves when the agent or VM ends on its own.
    async fn wait(&self) -> SandboxExit;
    /// Stops the agent or VM: politely, then by force after `grace`.
    async fn stop(&self, grace: Duration);
}

/// What to create a sandbox with.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Sandbox id (the pod's id, or the container's for a standalone container).
    pub id: String,
    /// The configuration (its `sandbox.backend` picks the backend).
    pub config: Config,
    /// The pod's network namespace, if any (from the sandbox container's spec).
    pub netns: Option<PathBuf>,
    /// Hostname for the sandbox's UTS namespace.
    pub hostname: Option<String>,
    /// containerd namespace, recorded in the state for `ember list`.
    pub namespace: String,
}

/// A container to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    /// Container id.
    pub id: String,
    /// Its validated bundle spec.
    pub spec: BundleSpec,
    /// containerd's rootfs mounts; empty means `root.path` of the bundle is used as is.
    pub rootfs_mounts: Vec<MountSpec>,
    /// Stream ids for its stdio.
    pub stdio: StdioStreams,
}

/// A running sandbox.
pub struct Sandbox {
    id: String,
    backend: Box<dyn Backend>,
    endpoint: AgentEndpoint,
    agent: AgentConnection,
    shared_dir: PathBuf,
    /// `agent.dial_timeout_ms`: the bound on opening a stdio stream as on reaching the agent.
    dial_timeout: Duration,
    state: Mutex<Option<SandboxState>>,
    stopping: std::sync::atomic::AtomicBool,
    /// The pod's sandbox ("pause") container and its pid in the agent, once created: the
    /// pod's other containers join its pid, IPC and UTS namespaces.
    pod_sandbox: std::sync::Mutex<Option<(String, i32)>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A program a backend starts beside the runtime (the agent, the VMM): the path in
/// environment variable `env` if set, else `name` next to the running executable (how
/// `make install` and `cargo build` lay them out), else `name` on `PATH`.
pub fn companion_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name(name);
        if sibling.is_file() {
            return Some(sibling);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The default timeout of agent RPCs that do not wait for a process.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A ttrpc context with [`RPC_TIMEOUT`].
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

/// A ttrpc context without a timeout (for Wait and the OOM long poll).
pub fn ctx_no_timeout() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

fn new_backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Process => Box::new(process::ProcessBackend::default()),
        BackendKind::Microvm => Box::new(microvm::MicrovmBackend::default()),
    }
}

impl Sandbox {
    /// Creates and starts a sandbox: state directory, shared directory, the backend, the
    /// agent connection (retried until `agent.dial_timeout_ms`, version-checked) and
    /// CreateSandbox. A host the backend cannot run on is refused first
    /// ([`SandboxError::Unsupported`]), with nothing made. On any later failure everything
    /// made so far is removed again.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let kind = opts.config.sandbox.backend;
        let mut backend = new_backend(kind);
        backend
            .check_host()
            .map_err(|message| SandboxError::Unsupported {
                id: opts.id.clone(),
                message,
            })?;
        let state_dir = &opts.config.sandbox.state_dir;
        let mut state = match SandboxState::create(state_dir, &opts.id, kind.as_str()) {
            Err(StateError::Exists { path, .. }) => {
                // Left behind by an owner that died (a killed shim whose containerd never
                // ran `delete`): remove it and start afresh. A live owner's state is kept.
                let old = SandboxState::open(&path)?;
                if old.owner_alive() {
                    return Err(StateError::Exists {
                        id: opts.id.clone(),
                        path,
                    }
                    .into());
                }
                warn!("sandbox={}: removing state left by a dead owner", opts.id);
                old.cleanup()?;
                SandboxState::create(state_dir, &opts.id, kind.as_str())?
            }
            r => r?,
        };
        if !opts.namespace.is_empty() {
            state.set_namespace(&opts.namespace)?;
        }
        match Self::start_with(&opts, &mut state, backend.as_mut()).await {
            Ok((endpoint, agent, shared_dir)) => Ok(Sandbox {
                id: opts.id,
                backend,
                endpoint,
                agent,
                shared_dir,
                dial_timeout: Duration::from_millis(opts.config.agent.dial_timeout_ms),
                state: Mutex::new(Some(state)),
                stopping: Default::default(),
                pod_sandbox: Default::default(),
            }),
            Err(e) => {
                backend.stop(Duration::from_millis(200)).await;
                if let Err(c) = state.cleanup() {
                    warn!("sandbox={}: cleanup after failed start: {c}", opts.id);
                }
                Err(e)
            }
        }
    }

    async fn start_with(
        opts: &SandboxOptions,
        state: &mut SandboxState,
        backend: &mut dyn Backend,
    ) -> Result<(AgentEndpoint, AgentConnection, PathBuf), SandboxError> {
        let id = opts.id.as_str();
        let shared_dir = state.dir().join("shared");
        std::fs::create_dir_all(&shared_dir).map_err(|source| StateError::Io {
            path: shared_dir.clone(),
            source,
        })?;
        state.add(Resource::Mount {
            path: shared_dir.clone(),
        })?;
        mounts::make_shared_mount_point(&shared_dir)?;
        state.add(Resource::Cgroup {
            path: crate::cgroups::sandbox_parent(id),
        })?;
        let endpoint = backend
            .start(StartContext {
                id,
                config: &opts.config,
                state,
                shared_dir: &shared_dir,
                netns: opts.netns.as_deref(),
            })
            .await?;
        let timeout = Duration::from_millis(opts.config.agent.dial_timeout_ms);
        let log = || {
            backend
                .log_path()
                .map(|p| ember_sys::tail::file(&p, 20))
                .unwrap_or_default()
        };
        let agent = tokio::select! {
            r = endpoint.connect(timeout) => r.map_err(|source| SandboxError::Agent {
                id: id.to_string(),
                source,
                agent_log: log(),
            })?,
            exit = backend.wait() => {
                return Err(SandboxError::Died {
                    id: id.to_string(),
                    what: if backend.kind() == BackendKind::Process { "agent" } else { "VM" },
                    status: exit.status,
                    log: log(),
                })
            }
        };
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.to_string();
        req.hostname = opts.hostname.clone().unwrap_or_default();
        req.storages = backend.sandbox_storages();
        agent
            .agent
            .create_sandbox(ctx(), &req)
            .await
            .map_err(|e| SandboxError::Rpc {
                id: id.to_string(),
                rpc: "CreateSandbox",
                message: rpc_message(&e),
            })?;
        if let Some(net) = backend.network_request() {
            agent
                .agent
                .update_network(ctx(), &net)
                .await
                .map_err(|e| SandboxError::Rpc {
                    id: id.to_string(),
                    rpc: "UpdateNetwork",
                    message: rpc_message(&e),
                })?;
        }
        info!(
            "sandbox={id}: started ({} backend, agent at {endpoint:?})",
            backend.kind().as_str()
        );
        Ok((endpoint, agent, shared_dir))
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent connection, for RPCs the runtime passes through unchanged.
    pub fn agent(&self) -> &AgentConnection {
        &self.agent
    }

    /// Where the agent listens: other processes (the OCI command line's `start`, `kill`,
    /// `exec`) dial it here while this process owns the sandbox.
    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    /// The host pid that stands for the sandbox.
    pub fn pid(&self) -> u32 {
        self.backend.pid()
    }

    /// Resolves when the agent or VM ends on its own.
    pub async fn wait(&self) -> SandboxExit {
        self.backend.wait().await
    }

    /// Whether [`Sandbox::destroy`] was called (so an exit of the agent or VM is expected).
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The sandbox's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.with_state(|s| s.dir().to_path_buf())
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut SandboxState) -> T) -> T {
        let mut g = self.state.lock().expect("state lock");
        f(g.as_mut().expect("sandbox not destroyed"))
    }

    /// `agent.dial_timeout_ms` of the config the sandbox started with: how long reaching
    /// the agent, or opening a stdio stream, may take.
    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout
    }

    /// Opens the stdio stream `id` of a process, within [`Sandbox::dial_timeout`].
    pub async fn open_stream(&self, id: &str) -> Result<tokio::net::UnixStream, SandboxError> {
        self.endpoint
            .open_stream(id, self.dial_timeout)
            .await
            .map_err(|source| SandboxError::Agent {
                id: self.id.clone(),
                source,
                agent_log: String::new(),
            })
    }

    /// Shares the container's rootfs (and, in a microVM, its bind-mount sources) through the
    /// shared directory, translates its spec and creates it in the agent. Returns the
    /// agent's pid of its init process. On failure the shared mounts are removed again.
    pub async fn create_container(&self, req: ContainerRequest) -> Result<i32, SandboxError> {
        let cid = req.id.clone();
        crate::state::check_container_id(&cid)?;
        let container_dir = self.shared_dir.join(&cid);
        self.with_state(|s| {
            s.add_container(&cid)?;
            s.add(Resource::Mount {
                path: container_dir.clone(),
            })
        })?;
        let pod_sandbox = req.spec.is_pod_sandbox();
        match self.create_inner(req).await {
            Ok(pid) => {
                if pod_sandbox {
                    *self.pod_sandbox.lock().expect("pod sandbox lock") = Some((cid, pid));
                }
                Ok(pid)
            }
            Err(e) => {
                if let Err(c) = self.unshare_container(&cid) {
                    warn!("sandbox={} container={cid}: cleanup: {c}", self.id);
                }
                Err(e)
            }
        }
    }

    async fn create_inner(&self, req: ContainerRequest) -> Result<i32, SandboxError> {
        let cid = req.id.as_str();
        // The shared directory is guest-writable: every target in it is resolved beneath it
        // with no symlinks, and mounted on through the resolved fd.
        let shared = mounts::Beneath::open(&self.shared_dir)?;
        let rootfs = oci::rootfs_rel(cid);
        if req.rootfs_mounts.is_empty() {
            req.spec.check_rootfs()?;
            mounts::bind_beneath(&shared, &rootfs, &req.spec.rootfs(), false)?;
        } else {
            mounts::mount_all_beneath(&shared, &req.rootfs_mounts, &rootfs)?;
        }
        let agent_shared = self.backend.agent_shared_dir();
        let volume_dir = self.backend.block_volume_dir();
        let t = oci::translate(
            &req.spec,
            &Translation {
                sandbox_id: &self.id,
                container_id: cid,
                agent_shared_dir: &agent_shared,
                vm: self.backend.kind() == BackendKind::Microvm,
                pod_sandbox_pid: self
                    .pod_sandbox
                    .lock()
                    .expect("pod sandbox lock")
                    .as_ref()
                    .map(|(_, pid)| *pid),
                block_volume_dir: volume_dir.as_deref(),
            },
        );
        for note in &t.notes {
            info!("sandbox={} container={cid}: {note}", self.id);
        }
        for b in &t.binds {
            mounts::bind_beneath(&shared, &b.shared_rel, &b.host, b.read_only)?;
        }
        let storages = self
            .backend
            .attach_block_volumes(cid, &t.block_volumes)
            .map_err(|e| SandboxError::Backend {
                id: self.id.clone(),
                message: format!("container {cid}: {e}"),
            })?;
        let mut r = CreateContainerRequest::new();
        r.container_id = cid.to_string();
        r.spec_json = t.spec.to_string();
        r.storages = storages;
        r.stdio = Some(req.stdio).into();
        let resp = self
            .agent
            .agent
            .create_container(ctx(), &r)
            .await
            .map_err(|e| SandboxError::Rpc {
                id: self.id.clone(),
                rpc: "CreateContainer",
                message: rpc_message(&e),
            })?;
        Ok(resp.pid)
    }

    /// Removes a container from the agent (killing it when `force`) and unshares its
    /// rootfs and mounts.
    pub async fn remove_container(&self, cid: &str, force: bool) -> Result<(), SandboxError> {
        let mut r = RemoveContainerRequest::new();
        r.container_id = cid.to_string();
        r.force = force;
        let rpc = self.agent.agent.remove_container(ctx(), &r).await;
        {
            let mut pod_sandbox = self.pod_sandbox.lock().expect("pod sandbox lock");
            if pod_sandbox.as_ref().is_some_and(|(id, _)| id == cid) {
                *pod_sandbox = None;
            }
        }
        self.unshare_container(cid)?;
        match rpc {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => Ok(()),
            Err(e) => Err(SandboxError::Rpc {
                id: self.id.clone(),
                rpc: "RemoveContainer",
                message: rpc_message(&e),
            }),
        }
    }

    /// Removes a container's part of the shared directory (its rootfs and shared binds),
    /// detaches its block volumes, and drops its entries in the state record.
    fn unshare_container(&self, cid: &str) -> Result<(), SandboxError> {
        self.backend.release_block_volumes(cid);
        let container_dir = self.shared_dir.join(cid);
        // The guest may still be running: unmount and delete by fd beneath the shared
        // directory, never through a path it could have swapped.
        let shared = mounts::Beneath::open(&self.shared_dir)?;
        mounts::remove_beneath(&shared, Path::new(cid))?;
        self.with_state(|s| -> Result<(), StateError> {
            s.remove_container(cid)?;
            s.release(&Resource::Mount {
                path: container_dir,
            })
        })?;
        Ok(())
    }

    /// Stops the agent or VM and removes every host resource of the sandbox (state
    /// directory included).
    pub async fn destroy(&self) -> Result<(), SandboxError> {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut r = ember_agent_protocol::agent::DestroySandboxRequest::new();
        r.sandbox_id = self.id.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.agent.agent.destroy_sandbox(ctx(), &r),
        )
        .await;
        // Every container is gone by now and DestroySandbox unmounted the sandbox storages,
        // so the agent has nothing left to tidy: it is stopped at once (its mount and PID
        // namespaces go with it).
        self.backend.stop(Duration::ZERO).await;
        let state = self.state.lock().expect("state lock").take();
        if let Some(state) = state {
            state.cleanup()?;
        }
        info!("sandbox={}: destroyed", self.id);
        Ok(())
    }
}

/// Which stdio streams a process wants, for [`stream_ids`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WantedStreams {
    /// A stdin stream.
    pub stdin: bool,
    /// A stdout stream (the terminal's output with `terminal`).
    pub stdout: bool,
    /// A stderr stream (never with `terminal`: the terminal carries it).
    pub stderr: bool,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// How long a process's exit may wait for its output to reach the caller (the output
/// still in flight in the guest's pipe, the vsock stream and the host's buffers), before the
/// exit is told anyway and the rest dropped: a caller that sees the exit deletes the process
/// and stops reading. An init's children die with its PID namespace, so its output ends soon
/// after it; an exec's background children may hold its output open, so an exec waits less.
/// The shim and the OCI command line's relays both use it.
pub fn exit_output_drain(exec_id: &str) -> std::time::Duration {
    if exec_id.is_empty() {
        std::time::Duration::from_secs(60)
    } else {
        std::time::Duration::from_secs(10)
    }
}

/// Random bits in every stream id: a stream is attached by the first connection that
/// names its id, so the id must not be guessable by anything else that can reach the
/// agent's stdio listener.
pub const STREAM_NONCE_BITS: usize = 128;

/// The agent's stream ids for a process: `<container>.<exec or "init">.<nonce>.<stream>`,
/// only for the streams wanted (an empty id means "not connected"). The nonce is
/// [`STREAM_NONCE_BITS`] fresh random bits (hex) per process, so that no other peer of the
/// agent can guess an id and attach a stream first. The shim and the OCI command line name
/// streams the same way.
pub fn stream_ids(
    container_id: &str,
    exec_id: &str,
    wanted: WantedStreams,
) -> Result<StdioStreams, SandboxError> {
    let mut bytes = [0u8; STREAM_NONCE_BITS / 8];
    ember_sys::random::fill(&mut bytes).map_err(|e| SandboxError::Random(e.0.to_string()))?;
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let proc = if exec_id.is_empty() { "init" } else { exec_id };
    let id = |name: &str, want: bool| {
        if want {
            format!("{container_id}.{proc}.{nonce}.{name}")
        } else {
            String::new()
        }
    };
    let mut s = StdioStreams::new();
    s.stdin = id("stdin", wanted.stdin);
    s.stdout = id("stdout", wanted.stdout);
    s.stderr = id("stderr", wanted.stderr && !wanted.terminal);
    Ok(s)
}

/// The message of a ttrpc error (the agent's status message, without ttrpc's wrapping).
pub fn rpc_message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}
