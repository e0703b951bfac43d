//! The seam between the task service and a pod's sandbox: what [`crate::task::EmberTask`]
//! needs of a sandbox ([`PodSandbox`]) and of starting one ([`PodStarter`]), implemented
//! here for the runtime's [`Sandbox`]. The task service's unit tests put a fake behind it
//! (`crate::testing`), so the mapping of containerd's calls is tested with no VM and no
//! containerd.
//!
//! Agent calls keep the agent's ttrpc error ([`AgentResult`]), so the task service maps the
//! agent's codes to containerd's in one place whichever sandbox is behind the seam.

use std::path::PathBuf;

use async_trait::async_trait;
use ember_agent_protocol::agent::{
    CloseStdinRequest, ExecProcessRequest, GetOOMEventRequest, ListProcessesRequest,
    PauseContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, StdioStreams, TtyWinResizeRequest,
    UpdateContainerRequest, WaitProcessRequest,
};
use ember_config::{AssetCheck, ConfigError, LoadOptions};
use ember_runtime::sandbox::{
    ctx, ctx_no_timeout, ContainerRequest, Sandbox, SandboxError, SandboxExit, SandboxOptions,
};
use log::info;

/// The result of an agent RPC, with the agent's ttrpc error.
pub type AgentResult<T> = Result<T, ember_agent_protocol::ttrpc::Error>;

/// What a pod's sandbox is started with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStart {
    /// The sandbox id (the pod's id, or the container's for a standalone container).
    pub id: String,
    /// ember's config file from containerd's runtime options (`None`: the default search).
    pub config_path: Option<PathBuf>,
    /// The pod's network namespace, from the first container's spec.
    pub netns: Option<PathBuf>,
    /// The sandbox's hostname, from the first container's spec.
    pub hostname: Option<String>,
    /// The containerd namespace.
    pub namespace: String,
}

/// Why a pod's sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum PodStartError {
    /// ember's config could not be loaded.
    #[error("ember config: {0}")]
    Config(#[from] ConfigError),
    /// The sandbox could not start.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Starts pods' sandboxes (one per shim).
#[async_trait]
pub trait PodStarter: Send + Sync + 'static {
    /// The sandbox it starts.
    type Pod: PodSandbox;

    /// Starts a sandbox.
    async fn start(&self, opts: PodStart) -> Result<Self::Pod, PodStartError>;
}

/// What the task service asks of a pod's sandbox and of the agent in it.
#[async_trait]
pub trait PodSandbox: Send + Sync + 'static {
    /// The sandbox id.
    fn id(&self) -> &str;
    /// The host pid that stands for the sandbox (containerd's task pid).
    fn pid(&self) -> u32;
    /// The sandbox's state directory (recorded in the bundle for `delete` after a crash).
    fn state_dir(&self) -> PathBuf;
    /// Whether [`PodSandbox::destroy`] was called (so an exit of the sandbox is expected).
    fn stopping(&self) -> bool;
    /// Resolves when the sandbox ends on its own.
    async fn wait(&self) -> SandboxExit;
    /// Opens the stdio stream `id` of a process.
    async fn open_stream(&self, id: &str) -> Result<tokio::net::UnixStream, SandboxError>;
    /// Creates a container; returns the agent's pid of its init process.
    async fn create_container(&self, req: ContainerRequest) -> Result<i32, SandboxError>;
    /// Removes a container (killing it when `force`) and unshares its files.
    async fn remove_container(&self, cid: &str, force: bool) -> Result<(), SandboxError>;
    /// Stops the sandbox and removes every host resource it made.
    async fn destroy(&self) -> Result<(), SandboxError>;

    /// Starts a created container's init process.
    async fn start_container(&self, cid: &str) -> AgentResult<()>;
    /// Starts exec `exec_id` in container `cid` from its OCI process JSON; returns its pid.
    async fn exec_process(
        &self,
        cid: &str,
        exec_id: &str,
        process_json: String,
        stdio: StdioStreams,
    ) -> AgentResult<i32>;
    /// Sends `signal` to a process (`all`: to every process of the container).
    async fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()>;
    /// Waits, without a timeout, for a process to end; returns its exit status.
    async fn wait_process(&self, cid: &str, exec_id: &str) -> AgentResult<i32>;
    /// The pids of a container's processes.
    async fn list_processes(&self, cid: &str) -> AgentResult<Vec<i32>>;
    /// Freezes a container.
    async fn pause_container(&self, cid: &str) -> AgentResult<()>;
    /// Thaws a container.
    async fn resume_container(&self, cid: &str) -> AgentResult<()>;
    /// Applies new resources (OCI `LinuxResources` JSON) to a container.
    async fn update_container(&self, cid: &str, resources_json: String) -> AgentResult<()>;
    /// Closes a process's stdin (one the agent holds, not a stream).
    async fn close_stdin(&self, cid: &str, exec_id: &str) -> AgentResult<()>;
    /// Resizes a process's terminal.
    async fn resize_tty(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) -> AgentResult<()>;
    /// A container's cgroup numbers.
    async fn stats_container(&self, cid: &str) -> AgentResult<StatsContainerResponse>;
    /// Waits, without a timeout, for the agent's next OOM notice; returns the container id
    /// it names (a claim of the guest's, not a fact).
    async fn next_oom(&self) -> AgentResult<String>;
}

/// Starts the runtime's [`Sandbox`] with the config containerd's options select.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeStarter;

#[async_trait]
impl PodStarter for RuntimeStarter {
    type Pod = Sandbox;

    async fn start(&self, opts: PodStart) -> Result<Sandbox, PodStartError> {
        let loaded = ember_config::load(
            &LoadOptions::from_env(opts.config_path).assets(AssetCheck::Require),
        )?;
        info!(
            sandbox = opts.id.as_str();
            "starting with config from {}",
            loaded.source.describe()
        );
        Ok(Sandbox::start(SandboxOptions {
            id: opts.id,
            config: loaded.config,
            netns: opts.netns,
            hostname: opts.hostname,
            namespace: opts.namespace,
        })
        .await?)
    }
}

#[async_trait]
impl PodSandbox for Sandbox {
    fn id(&self) -> &str {
        Sandbox::id(self)
    }

    fn pid(&self) -> u32 {
        Sandbox::pid(self)
    }

    fn state_dir(&self) -> PathBuf {
        Sandbox::state_dir(self)
    }

    fn stopping(&self) -> bool {
        Sandbox::stopping(self)
    }

    async fn wait(&self) -> SandboxExit {
        Sandbox::wait(self).await
    }

    async fn open_stream(&self, id: &str) -> Result<tokio::net::UnixStream, SandboxError> {
        Sandbox::open_stream(self, id).await
    }

    async fn create_container(&self, req: ContainerRequest) -> Result<i32, SandboxError> {
        Sandbox::create_container(self, req).await
    }

    async fn remove_container(&self, cid: &str, force: bool) -> Result<(), SandboxError> {
        Sandbox::remove_container(self, cid, force).await
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        Sandbox::destroy(self).await
    }

    async fn start_container(&self, cid: &str) -> AgentResult<()> {
        let mut r = StartContainerRequest::new();
        r.container_id = cid.to_string();
        self.agent().agent.start_container(ctx(), &r).await?;
        Ok(())
    }

    async fn exec_process(
        &self,
        cid: &str,
        exec_id: &str,
        process_json: String,
        stdio: StdioStreams,
    ) -> AgentResult<i32> {
        let mut r = ExecProcessRequest::new();
        r.container_id = cid.to_string();
        r.exec_id = exec_id.to_string();
        r.process_json = process_json;
        r.stdio = Some(stdio).into();
        Ok(self.agent().agent.exec_process(ctx(), &r).await?.pid)
    }

    async fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()> {
        let mut r = SignalProcessRequest::new();
        r.container_id = cid.to_string();
        r.exec_id = exec_id.to_string();
        r.signal = signal;
        r.all = all;
        self.agent().agent.signal_process(ctx(), &r).await?;
        Ok(())
    }

    async fn wait_process(&self, cid: &str, exec_id: &str) -> AgentResult<i32> {
        let mut r = WaitProcessRequest::new();
        r.container_id = cid.to_string();
        r.exec_id = exec_id.to_string();
        let resp = self
            .agent()
            .agent
            .wait_process(ctx_no_timeout(), &r)
            .await?;
        Ok(resp.exit_status)
    }

    async fn list_processes(&self, cid: &str) -> AgentResult<Vec<i32>> {
        let mut r = ListProcessesRequest::new();
        r.container_id = cid.to_string();
        Ok(self.agent().agent.list_processes(ctx(), &r).await?.pids)
    }

    async fn pause_container(&self, cid: &str) -> AgentResult<()> {
        let mut r = PauseContainerRequest::new();
        r.container_id = cid.to_string();
        self.agent().agent.pause_container(ctx(), &r).await?;
        Ok(())
    }

    async fn resume_container(&self, cid: &str) -> AgentResult<()> {
        let mut r = ResumeContainerRequest::new();
        r.container_id = cid.to_string();
        self.agent().agent.resume_container(ctx(), &r).await?;
        Ok(())
    }

    async fn update_container(&self, cid: &str, resources_json: String) -> AgentResult<()> {
        let mut r = UpdateContainerRequest::new();
        r.container_id = cid.to_string();
        r.resources_json = resources_json;
        self.agent().agent.update_container(ctx(), &r).await?;
        Ok(())
    }

    async fn close_stdin(&self, cid: &str, exec_id: &str) -> AgentResult<()> {
        let mut r = CloseStdinRequest::new();
        r.container_id = cid.to_string();
        r.exec_id = exec_id.to_string();
        self.agent().agent.close_stdin(ctx(), &r).await?;
        Ok(())
    }

    async fn resize_tty(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) -> AgentResult<()> {
        let mut r = TtyWinResizeRequest::new();
        r.container_id = cid.to_string();
        r.exec_id = exec_id.to_string();
        r.rows = rows;
        r.cols = cols;
        self.agent().agent.tty_win_resize(ctx(), &r).await?;
        Ok(())
    }

    async fn stats_container(&self, cid: &str) -> AgentResult<StatsContainerResponse> {
        let mut r = StatsContainerRequest::new();
        r.container_id = cid.to_string();
        self.agent().agent.stats_container(ctx(), &r).await
    }

    async fn next_oom(&self) -> AgentResult<String> {
        let ev = self
            .agent()
            .agent
            .get_oom_event(ctx_no_timeout(), &GetOOMEventRequest::new())
            .await?;
        Ok(ev.container_id)
    }
}
