//! Test doubles for the task service's seams: a scripted pod ([`FakeStarter`],
//! [`FakePod`]) and an event recorder ([`RecordingPublisher`]). Nothing here starts a VM or
//! talks to containerd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::{MessageDyn, MessageFull};
use ember_agent_protocol::agent::{StatsContainerResponse, StdioStreams};
use ember_agent_protocol::ttrpc;
use ember_runtime::sandbox::{ContainerRequest, SandboxError, SandboxExit};
use tokio::sync::{mpsc, watch};

use crate::pod::{AgentResult, PodSandbox, PodStart, PodStartError, PodStarter};
use crate::publisher::EventPublisher;

/// The host pid every fake pod reports.
pub const POD_PID: u32 = 4242;
/// The pid of the first exec; each further exec gets the next one.
pub const FIRST_EXEC_PID: i32 = 100;

/// An agent error with status `code`.
pub fn rpc_status(code: ttrpc::Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// The exit status of a process, by (container id, exec id), once the script ends it.
type Exits = HashMap<(String, String), watch::Sender<Option<i32>>>;

/// What the fake pods do and what they were asked, shared by the test, the starter and
/// every pod it started.
pub struct Script {
    calls: Mutex<Vec<String>>,
    start_failure: Mutex<Option<PodStartError>>,
    create_failure: Mutex<Option<SandboxError>>,
    rpc_failures: Mutex<HashMap<&'static str, ttrpc::Error>>,
    exits: Mutex<Exits>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    ended: watch::Sender<Option<String>>,
    stopping: AtomicBool,
    next_exec_pid: AtomicI32,
}

impl Default for Script {
    fn default() -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Script {
            calls: Mutex::default(),
            start_failure: Mutex::default(),
            create_failure: Mutex::default(),
            rpc_failures: Mutex::default(),
            exits: Mutex::default(),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            ended: watch::channel(None).0,
            stopping: AtomicBool::new(false),
            next_exec_pid: AtomicI32::new(FIRST_EXEC_PID),
        }
    }
}

impl Script {
    /// Every call the pods (and the starter) received, in order, as `name args...`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The next start fails with `e`.
    pub fn fail_start(&self, e: PodStartError) {
        *self.start_failure.lock().unwrap() = Some(e);
    }

    /// The next CreateContainer fails with `e`.
    pub fn fail_create(&self, e: SandboxError) {
        *self.create_failure.lock().unwrap() = Some(e);
    }

    /// Agent RPC `rpc` (the agent's name, e.g. `SignalProcess`) fails with `e` from now on.
    pub fn fail_rpc(&self, rpc: &'static str, e: ttrpc::Error) {
        self.rpc_failures.lock().unwrap().insert(rpc, e);
    }

    fn rpc(&self, rpc: &'static str, call: String) -> AgentResult<()> {
        self.record(call);
        match self.rpc_failures.lock().unwrap().get(rpc) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn exit_tx(&self, cid: &str, exec_id: &str) -> watch::Sender<Option<i32>> {
        self.exits
            .lock()
            .unwrap()
            .entry((cid.to_string(), exec_id.to_string()))
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Process `exec_id` of `cid` ends with `status` (its WaitProcess returns).
    pub fn exit(&self, cid: &str, exec_id: &str, status: i32) {
        self.exit_tx(cid, exec_id).send_replace(Some(status));
    }

    /// The agent sends an OOM notice naming `cid`.
    pub fn oom(&self, cid: &str) {
        self.oom_tx.send(cid.to_string()).unwrap();
    }

    /// The sandbox ends on its own.
    pub fn end(&self, status: &str) {
        self.ended.send_replace(Some(status.to_string()));
    }
}

/// Starts [`FakePod`]s that follow one [`Script`].
#[derive(Clone, Default)]
pub struct FakeStarter {
    /// The script of every pod it starts.
    pub script: Arc<Script>,
}

#[async_trait]
impl PodStarter for FakeStarter {
    type Pod = FakePod;

    async fn start(&self, opts: PodStart) -> Result<FakePod, PodStartError> {
        self.script.record(format!("start {}", opts.id));
        if let Some(e) = self.script.start_failure.lock().unwrap().take() {
            return Err(e);
        }
        self.script.stopping.store(false, Ordering::SeqCst);
        self.script.ended.send_replace(None);
        Ok(FakePod {
            id: opts.id,
            script: self.script.clone(),
        })
    }
}

/// A pod that answers from its [`Script`] and records every call.
pub struct FakePod {
    id: String,
    script: Arc<Script>,
}

#[async_trait]
impl PodSandbox for FakePod {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> u32 {
        POD_PID
    }

    fn state_dir(&self) -> PathBuf {
        PathBuf::from("/nonexistent/ember-test-state").join(&self.id)
    }

    fn stopping(&self) -> bool {
        self.script.stopping.load(Ordering::SeqCst)
    }

    async fn wait(&self) -> SandboxExit {
        let mut rx = self.script.ended.subscribe();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map(|s| s.clone().unwrap_or_default())
            .unwrap_or_default();
        SandboxExit { status }
    }

    async fn open_stream(&self, id: &str) -> Result<tokio::net::UnixStream, SandboxError> {
        Err(SandboxError::Backend {
            id: self.id.clone(),
            message: format!("the fake pod has no stream {id}"),
        })
    }

    async fn create_container(&self, req: ContainerRequest) -> Result<i32, SandboxError> {
        self.script.record(format!("create {}", req.id));
        match self.script.create_failure.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(1),
        }
    }

    async fn remove_container(&self, cid: &str, force: bool) -> Result<(), SandboxError> {
        self.script.record(format!("remove {cid} force={force}"));
        Ok(())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.script.record(format!("destroy {}", self.id));
        self.script.stopping.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn start_container(&self, cid: &str) -> AgentResult<()> {
        self.script
            .rpc("StartContainer", format!("start_container {cid}"))
    }

    async fn exec_process(
        &self,
        cid: &str,
        exec_id: &str,
        process_json: String,
        _stdio: StdioStreams,
    ) -> AgentResult<i32> {
        self.script.rpc(
            "ExecProcess",
            format!("exec_process {cid} {exec_id} {process_json}"),
        )?;
        Ok(self.script.next_exec_pid.fetch_add(1, Ordering::SeqCst))
    }

    async fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()> {
        self.script.rpc(
            "SignalProcess",
            format!("signal {cid} exec={exec_id} signal={signal} all={all}"),
        )
    }

    async fn wait_process(&self, cid: &str, exec_id: &str) -> AgentResult<i32> {
        self.script
            .rpc("WaitProcess", format!("wait {cid} exec={exec_id}"))?;
        let mut rx = self.script.exit_tx(cid, exec_id).subscribe();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| ttrpc::Error::RemoteClosed)?;
        Ok(status.expect("waited for Some"))
    }

    async fn list_processes(&self, cid: &str) -> AgentResult<Vec<i32>> {
        self.script
            .rpc("ListProcesses", format!("list_processes {cid}"))?;
        Ok(vec![1, 7])
    }

    async fn pause_container(&self, cid: &str) -> AgentResult<()> {
        self.script.rpc("PauseContainer", format!("pause {cid}"))
    }

    async fn resume_container(&self, cid: &str) -> AgentResult<()> {
        self.script.rpc("ResumeContainer", format!("resume {cid}"))
    }

    async fn update_container(&self, cid: &str, resources_json: String) -> AgentResult<()> {
        self.script
            .rpc("UpdateContainer", format!("update {cid} {resources_json}"))
    }

    async fn close_stdin(&self, cid: &str, exec_id: &str) -> AgentResult<()> {
        self.script
            .rpc("CloseStdin", format!("close_stdin {cid} exec={exec_id}"))
    }

    async fn resize_tty(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) -> AgentResult<()> {
        self.script.rpc(
            "TtyWinResize",
            format!("resize {cid} exec={exec_id} {rows}x{cols}"),
        )
    }

    async fn stats_container(&self, cid: &str) -> AgentResult<StatsContainerResponse> {
        self.script.rpc("StatsContainer", format!("stats {cid}"))?;
        Ok(StatsContainerResponse::new())
    }

    async fn next_oom(&self) -> AgentResult<String> {
        let mut rx = self.script.oom_rx.lock().await;
        rx.recv().await.ok_or(ttrpc::Error::RemoteClosed)
    }
}

/// One published event.
#[derive(Debug)]
pub struct Published {
    /// Its topic.
    pub topic: String,
    /// Its containerd namespace.
    pub namespace: String,
    /// The event.
    pub event: Box<dyn MessageDyn>,
}

/// Keeps every event published.
#[derive(Clone, Default)]
pub struct RecordingPublisher {
    events: Arc<Mutex<Vec<Published>>>,
}

#[async_trait]
impl EventPublisher for RecordingPublisher {
    async fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()> {
        self.events.lock().unwrap().push(Published {
            topic: topic.to_string(),
            namespace: namespace.to_string(),
            event,
        });
        Ok(())
    }
}

impl RecordingPublisher {
    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events.iter().map(|p| p.topic.clone()).collect()
    }

    /// Every event of type `M` published so far, in order.
    pub fn all<M: MessageFull>(&self) -> Vec<M> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|p| p.event.downcast_ref::<M>().cloned())
            .collect()
    }

    /// The namespaces events were published in.
    pub fn namespaces(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events.iter().map(|p| p.namespace.clone()).collect()
    }

    /// Waits (up to 5 s) until an event of type `M` satisfying `pred` was published, and
    /// returns it.
    pub async fn wait_for<M: MessageFull>(&self, pred: impl Fn(&M) -> bool) -> M {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(m) = self.all::<M>().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such {} event; published: {:?}",
                std::any::type_name::<M>(),
                self.topics()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
