//! The task v2 service: containerd's calls mapped onto the pod's sandbox and its agent.
//!
//! One shim serves one pod. The first Create starts the sandbox (for CRI that is the pod's
//! sandbox container); later containers of the pod are created in the same sandbox. When
//! the last container is deleted the sandbox is destroyed, and Shutdown ends the shim.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api::{self, ProcessInfo, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self as shim_ttrpc, Code};
use ember_agent_protocol::agent::{
    CloseStdinRequest, ExecProcessRequest, GetOOMEventRequest, ListProcessesRequest,
    PauseContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StdioStreams, TtyWinResizeRequest, UpdateContainerRequest,
    WaitProcessRequest,
};
use ember_config::{AssetCheck, LoadOptions};
use ember_runtime::mounts::MountSpec;
use ember_runtime::oci::BundleSpec;
use ember_runtime::sandbox::{
    ctx, ctx_no_timeout, rpc_message, ContainerRequest, Sandbox, SandboxError, SandboxOptions,
};
use log::{error, info, warn};

use crate::oom::{OomGate, OomVerdict};
use crate::process::{now, Exit, Proc};
use crate::stdio::{self, StdioPaths};

pub use ember_runtime::oci::{CRI_CONTAINER_TYPE as CONTAINER_TYPE, CRI_SANDBOX_ID as SANDBOX_ID};

/// Name of the file in a bundle that tells `containerd-shim-ember-v2 delete` where the
/// container's sandbox state is.
pub const BUNDLE_RECORD: &str = "ember-sandbox.json";

/// How long the OOM watcher pauses after dropping a notice from the agent.
const OOM_DROP_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// A container of the pod.
#[derive(Debug)]
struct Container {
    bundle: String,
    init: Proc,
    execs: HashMap<String, Proc>,
}

/// The task service.
#[derive(Clone)]
pub struct EmberTask {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
}

fn status(code: Code, msg: impl ToString) -> shim_ttrpc::Error {
    shim_ttrpc::Error::RpcStatus(shim_ttrpc::get_status(code, msg))
}

fn not_found(what: &str) -> shim_ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

/// Maps an agent RPC error to a status for containerd, keeping the agent's code.
fn agent_err(rpc: &str, e: ember_agent_protocol::ttrpc::Error) -> shim_ttrpc::Error {
    let code = match &e {
        ember_agent_protocol::ttrpc::Error::RpcStatus(s) => match s.code() {
            ember_agent_protocol::ttrpc::Code::NOT_FOUND => Code::NOT_FOUND,
            ember_agent_protocol::ttrpc::Code::INVALID_ARGUMENT => Code::INVALID_ARGUMENT,
            ember_agent_protocol::ttrpc::Code::ALREADY_EXISTS => Code::ALREADY_EXISTS,
            ember_agent_protocol::ttrpc::Code::FAILED_PRECONDITION => Code::FAILED_PRECONDITION,
            _ => Code::UNKNOWN,
        },
        _ => Code::UNAVAILABLE,
    };
    status(code, format!("ember agent {rpc}: {}", rpc_message(&e)))
}

impl EmberTask {
    /// A service publishing events for containerd namespace `namespace`.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> EmberTask {
        EmberTask {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                exit,
                sandbox: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(Default::default(), topic, &self.inner.namespace, event)
            .await
        {
            warn!("publishing {topic}: {e}");
        }
    }

    async fn sandbox(&self) -> TtrpcResult<Arc<Sandbox>> {
        self.inner.sandbox.lock().await.clone().ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                "the pod's sandbox is not running",
            )
        })
    }

    fn with_proc<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc, &str) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut cs = self.inner.containers.lock().expect("containers lock");
        let c = cs
            .get_mut(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?;
        let bundle = c.bundle.clone();
        let p = if exec_id.is_empty() {
            &mut c.init
        } else {
            c.execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id} of container {id}")))?
        };
        f(p, &bundle)
    }

    /// Gets the pod's sandbox, starting it for the first container.
    async fn sandbox_for(
        &self,
        id: &str,
        spec: &BundleSpec,
        options: Option<&protobuf::well_known_types::any::Any>,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut guard = self.inner.sandbox.lock().await;
        let wanted = match spec.annotation(CONTAINER_TYPE) {
            Some("container") => spec.annotation(SANDBOX_ID).unwrap_or(id).to_string(),
            _ => id.to_string(),
        };
        if let Some(sb) = guard.as_ref() {
            if sb.id() != wanted {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {id} belongs to sandbox {wanted}, but this shim runs sandbox {}",
                        sb.id()
                    ),
                ));
            }
            return Ok(sb.clone());
        }
        let opts =
            crate::options::decode(options).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let loaded = ember_config::load(
            &LoadOptions::from_env(opts.config_path).assets(AssetCheck::Require),
        )
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("ember config: {e}")))?;
        info!(
            "sandbox={wanted}: starting with config from {}",
            loaded.source.describe()
        );
        let sb = Sandbox::start(SandboxOptions {
            id: wanted.clone(),
            config: loaded.config,
            netns: spec.network_namespace_path(),
            hostname: spec.hostname().map(str::to_string),
            namespace: self.inner.namespace.clone(),
        })
        .await
        .map_err(|e| {
            // A host the backend cannot run on is refused in one line, before anything
            // is made; containerd prints it as the reason the task was not created.
            let code = match e {
                SandboxError::Unsupported { .. } => Code::FAILED_PRECONDITION,
                _ => Code::UNKNOWN,
            };
            status(code, e)
        })?;
        let sb = Arc::new(sb);
        *guard = Some(sb.clone());
        drop(guard);
        self.watch_sandbox(sb.clone());
        self.watch_oom(sb.clone());
        Ok(sb)
    }

    /// When the agent or VM dies, every process still running has exited (killed).
    fn watch_sandbox(&self, sb: Arc<Sandbox>) {
        let this = self.clone();
        tokio::spawn(async move {
            let exit = sb.wait().await;
            if sb.stopping() {
                return;
            }
            error!("sandbox={}: ended unexpectedly ({})", sb.id(), exit.status);
            let mut exited = Vec::new();
            {
                let mut cs = this.inner.containers.lock().expect("containers lock");
                for (cid, c) in cs.iter_mut() {
                    for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                        if p.exit().is_none() && p.status != Status::CREATED {
                            let e = p.set_exit(128 + libc::SIGKILL as u32);
                            exited.push((cid.clone(), p.exec_id.clone(), p.pid, e));
                        }
                    }
                }
            }
            for (cid, exec_id, pid, e) in exited {
                this.publish_exit(&cid, &exec_id, pid, &e).await;
            }
        });
    }

    /// Publishes the agent's OOM notices as TaskOOM events: only for this shim's
    /// containers, at most one per container per second (see [`crate::oom`]). After a
    /// notice it drops, the loop pauses [`OOM_DROP_PAUSE`], so an agent answering
    /// `GetOOMEvent` at once, forever, costs the shim little CPU.
    fn watch_oom(&self, sb: Arc<Sandbox>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut gate = OomGate::default();
            let mut warned_unknown = false;
            loop {
                let ev = match sb
                    .agent()
                    .agent
                    .get_oom_event(ctx_no_timeout(), &GetOOMEventRequest::new())
                    .await
                {
                    Ok(ev) => ev,
                    Err(_) => return,
                };
                let cid = ev.container_id;
                let known = this
                    .inner
                    .containers
                    .lock()
                    .expect("containers lock")
                    .contains_key(&cid);
                match gate.check(&cid, known, std::time::Instant::now()) {
                    OomVerdict::Publish => {
                        info!("sandbox={} container={cid}: OOM", sb.id());
                        let mut e = TaskOOM::new();
                        e.container_id = cid;
                        this.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
                            .await;
                        continue;
                    }
                    OomVerdict::UnknownContainer if !warned_unknown => {
                        warned_unknown = true;
                        warn!(
                            "sandbox={}: the agent reported an OOM of {cid:?}, not a container \
                             of this pod; ignored (further ones are logged at debug level)",
                            sb.id()
                        );
                    }
                    verdict => log::debug!(
                        "sandbox={} container={cid:?}: OOM notice dropped ({verdict:?})",
                        sb.id()
                    ),
                }
                tokio::time::sleep(OOM_DROP_PAUSE).await;
            }
        });
    }

    async fn publish_exit(&self, cid: &str, exec_id: &str, pid: u32, e: &Exit) {
        let mut ev = TaskExit::new();
        ev.container_id = cid.to_string();
        ev.id = if exec_id.is_empty() { cid } else { exec_id }.to_string();
        ev.pid = pid;
        ev.exit_status = e.status;
        ev.exited_at = Some(e.at.clone()).into();
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// Waits in the agent for a started process and records its exit.
    fn spawn_waiter(&self, sb: Arc<Sandbox>, cid: String, exec_id: String, pid: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut req = WaitProcessRequest::new();
            req.container_id = cid.clone();
            req.exec_id = exec_id.clone();
            let code = match sb.agent().agent.wait_process(ctx_no_timeout(), &req).await {
                Ok(r) => r.exit_status as u32,
                Err(e) => {
                    warn!(
                        "sandbox={} container={cid} exec={exec_id}: wait failed: {}",
                        sb.id(),
                        rpc_message(&e)
                    );
                    128 + libc::SIGKILL as u32
                }
            };
            // The exit is told only once the process's output has reached containerd's
            // FIFOs: output still in flight (the guest's pipe, the vsock stream, the shim's
            // buffer) would otherwise be cut off by the Delete that a client sends as soon
            // as it sees the exit. Bounded, for a client that never reads.
            let limit = ember_runtime::sandbox::exit_output_drain(&exec_id);
            let copiers = this.with_proc(&cid, &exec_id, |p, _| Ok(p.copiers.take()));
            if let Ok(mut copiers) = copiers {
                if !copiers.drain_outputs(limit).await {
                    warn!(
                        "sandbox={} container={cid} exec={exec_id}: output not all copied within {limit:?} of the exit; the rest is dropped",
                        sb.id()
                    );
                }
            }
            let exit = this.with_proc(&cid, &exec_id, |p, _| {
                let first = p.exit().is_none();
                Ok((p.set_exit(code), first))
            });
            if let Ok((e, true)) = exit {
                info!(
                    "sandbox={} container={cid} exec={exec_id}: exited with {}",
                    sb.id(),
                    e.status
                );
                this.publish_exit(&cid, &exec_id, pid, &e).await;
            }
        });
    }

    /// A sandbox made for container `id` alone goes again when that container could not be
    /// created, so a failed create leaves nothing behind.
    async fn drop_unused_sandbox(&self, sb: &Sandbox, id: &str) {
        if self.inner.containers.lock().expect("lock").is_empty() && sb.id() == id {
            if let Err(e) = sb.destroy().await {
                warn!("sandbox={id}: destroy after a failed create: {e}");
            }
            *self.inner.sandbox.lock().await = None;
        }
    }

    async fn attach_stdio(
        &self,
        sb: &Sandbox,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
        ids: &StdioStreams,
    ) -> TtrpcResult<()> {
        let copiers = stdio::attach(
            sb,
            ids,
            paths,
            format!("sandbox={} container={cid} exec={exec_id}", sb.id()),
        )
        .await
        .map_err(|e| status(Code::UNKNOWN, e))?;
        self.with_proc(cid, exec_id, |p, _| {
            p.copiers = copiers;
            Ok(())
        })
    }
}

fn rootfs_mounts(req: &api::CreateTaskRequest) -> Vec<MountSpec> {
    req.rootfs
        .iter()
        .map(|m| MountSpec {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

#[async_trait]
impl Task for EmberTask {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        if self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&id)
        {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id}: already exists"),
            ));
        }
        let spec = BundleSpec::load(std::path::Path::new(&req.bundle))
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        if req.rootfs.is_empty() {
            spec.check_rootfs()
                .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        }
        let sb = self.sandbox_for(&id, &spec, req.options.as_ref()).await?;
        let record = serde_json::json!({
            "sandbox_id": sb.id(),
            "state_dir": sb.state_dir(),
        });
        let _ = std::fs::write(
            PathBuf::from(&req.bundle).join(BUNDLE_RECORD),
            record.to_string(),
        );
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let ids = match stdio::stream_ids(&id, "", &paths) {
            Ok(ids) => ids,
            Err(e) => {
                self.drop_unused_sandbox(&sb, &id).await;
                return Err(status(Code::INTERNAL, e));
            }
        };
        let created = sb
            .create_container(ContainerRequest {
                id: id.clone(),
                spec,
                rootfs_mounts: rootfs_mounts(&req),
                stdio: ids.clone(),
            })
            .await;
        if let Err(e) = created {
            self.drop_unused_sandbox(&sb, &id).await;
            return Err(status(Code::INVALID_ARGUMENT, e));
        }
        let mut init = Proc::new("", paths.clone());
        init.pid = sb.pid();
        self.inner.containers.lock().expect("lock").insert(
            id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
            },
        );
        if let Err(e) = self.attach_stdio(&sb, &id, "", &paths, &ids).await {
            let _ = sb.remove_container(&id, true).await;
            self.inner.containers.lock().expect("lock").remove(&id);
            self.drop_unused_sandbox(&sb, &id).await;
            return Err(e);
        }
        info!("sandbox={} container={id}: created", sb.id());
        let mut ev = TaskCreate::new();
        ev.container_id = id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin;
        io.stdout = req.stdout;
        io.stderr = req.stderr;
        io.terminal = req.terminal;
        ev.io = Some(io).into();
        ev.pid = sb.pid();
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::CreateTaskResponse {
            pid: sb.pid(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let sb = self.sandbox().await?;
        let (cid, exec_id) = (req.id.clone(), req.exec_id.clone());
        if exec_id.is_empty() {
            self.with_proc(&cid, "", |p, _| match p.status {
                Status::CREATED => Ok(()),
                s => Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {cid}: cannot start in state {s:?}"),
                )),
            })?;
            let mut r = StartContainerRequest::new();
            r.container_id = cid.clone();
            sb.agent()
                .agent
                .start_container(ctx(), &r)
                .await
                .map_err(|e| agent_err("StartContainer", e))?;
            let pid = sb.pid();
            self.with_proc(&cid, "", |p, _| {
                p.status = Status::RUNNING;
                Ok(())
            })?;
            self.spawn_waiter(sb.clone(), cid.clone(), String::new(), pid);
            info!("sandbox={} container={cid}: started", sb.id());
            let mut ev = TaskStart::new();
            ev.container_id = cid;
            ev.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
            Ok(api::StartResponse {
                pid,
                ..Default::default()
            })
        } else {
            let (spec_json, paths) = self.with_proc(&cid, &exec_id, |p, _| {
                if p.status != Status::CREATED {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("exec {exec_id}: already started"),
                    ));
                }
                Ok((p.spec_json.clone().unwrap_or_default(), p.stdio.clone()))
            })?;
            let mut r = ExecProcessRequest::new();
            r.container_id = cid.clone();
            r.exec_id = exec_id.clone();
            r.process_json = spec_json;
            let ids =
                stdio::stream_ids(&cid, &exec_id, &paths).map_err(|e| status(Code::INTERNAL, e))?;
            r.stdio = Some(ids.clone()).into();
            let resp = sb
                .agent()
                .agent
                .exec_process(ctx(), &r)
                .await
                .map_err(|e| agent_err("ExecProcess", e))?;
            let pid = resp.pid as u32;
            self.with_proc(&cid, &exec_id, |p, _| {
                p.pid = pid;
                p.status = Status::RUNNING;
                Ok(())
            })?;
            self.attach_stdio(&sb, &cid, &exec_id, &paths, &ids).await?;
            self.spawn_waiter(sb.clone(), cid.clone(), exec_id.clone(), pid);
            info!(
                "sandbox={} container={cid} exec={exec_id}: started",
                sb.id()
            );
            let mut ev = TaskExecStarted::new();
            ev.container_id = cid;
            ev.exec_id = exec_id;
            ev.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
            Ok(api::StartResponse {
                pid,
                ..Default::default()
            })
        }
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (cid, exec_id) = (req.id.clone(), req.exec_id.clone());
        if !exec_id.is_empty() {
            let mut p = {
                let mut cs = self.inner.containers.lock().expect("lock");
                let c = cs.get_mut(&cid).ok_or_else(|| not_found(&cid))?;
                match c.execs.get(&exec_id).map(|p| p.status) {
                    None => return Err(not_found(&format!("exec {exec_id}"))),
                    Some(Status::RUNNING) | Some(Status::PAUSED) => {
                        return Err(status(
                            Code::FAILED_PRECONDITION,
                            format!("exec {exec_id}: cannot delete a running process"),
                        ))
                    }
                    _ => c.execs.remove(&exec_id).expect("present"),
                }
            };
            p.copiers.wait_outputs().await;
            let e = p.exit().unwrap_or(Exit {
                status: 0,
                at: now(),
            });
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: e.status,
                exited_at: Some(e.at).into(),
                ..Default::default()
            });
        }
        let st = self.with_proc(&cid, "", |p, _| Ok(p.status))?;
        if matches!(st, Status::RUNNING | Status::PAUSED) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {cid}: cannot delete a running task; kill it first"),
            ));
        }
        let sb = self.sandbox().await?;
        let mut c = self
            .inner
            .containers
            .lock()
            .expect("lock")
            .remove(&cid)
            .ok_or_else(|| not_found(&cid))?;
        // Output written before the exit reaches containerd before the task goes.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.init.copiers.wait_outputs(),
        )
        .await;
        c.init.copiers.abort();
        for p in c.execs.values_mut() {
            p.copiers.abort();
        }
        if let Err(e) = sb.remove_container(&cid, true).await {
            warn!("sandbox={} container={cid}: remove: {e}", sb.id());
        }
        let _ = std::fs::remove_file(PathBuf::from(&c.bundle).join(BUNDLE_RECORD));
        let e = c.init.exit().unwrap_or(Exit {
            status: 128 + libc::SIGKILL as u32,
            at: now(),
        });
        info!("sandbox={} container={cid}: deleted", sb.id());
        if self.inner.containers.lock().expect("lock").is_empty() {
            if let Err(e) = sb.destroy().await {
                error!("sandbox={}: destroy: {e}", sb.id());
            }
            *self.inner.sandbox.lock().await = None;
        }
        let mut ev = TaskDelete::new();
        ev.container_id = cid.clone();
        ev.id = cid;
        ev.pid = c.init.pid;
        ev.exit_status = e.status;
        ev.exited_at = Some(e.at.clone()).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::DeleteResponse {
            pid: c.init.pid,
            exit_status: e.status,
            exited_at: Some(e.at).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let sb = self.sandbox().await?;
        let mut r = ListProcessesRequest::new();
        r.container_id = req.id;
        let resp = sb
            .agent()
            .agent
            .list_processes(ctx(), &r)
            .await
            .map_err(|e| agent_err("ListProcesses", e))?;
        Ok(api::PidsResponse {
            processes: resp
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let sb = self.sandbox().await?;
        let mut r = PauseContainerRequest::new();
        r.container_id = req.id.clone();
        sb.agent()
            .agent
            .pause_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("PauseContainer", e))?;
        self.with_proc(&req.id, "", |p, _| {
            p.status = Status::PAUSED;
            Ok(())
        })?;
        let mut ev = TaskPaused::new();
        ev.container_id = req.id;
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let sb = self.sandbox().await?;
        let mut r = ResumeContainerRequest::new();
        r.container_id = req.id.clone();
        sb.agent()
            .agent
            .resume_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("ResumeContainer", e))?;
        self.with_proc(&req.id, "", |p, _| {
            if p.status == Status::PAUSED {
                p.status = Status::RUNNING;
            }
            Ok(())
        })?;
        let mut ev = TaskResumed::new();
        ev.container_id = req.id;
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let sb = self.sandbox().await?;
        let exited = self.with_proc(&req.id, &req.exec_id, |p, _| Ok(p.exit().is_some()))?;
        if exited && !req.all {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        let mut r = SignalProcessRequest::new();
        r.container_id = req.id;
        r.exec_id = req.exec_id;
        r.signal = req.signal;
        r.all = req.all;
        sb.agent()
            .agent
            .signal_process(ctx(), &r)
            .await
            .map_err(|e| agent_err("SignalProcess", e))?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let (cid, exec_id) = (req.id.clone(), req.exec_id.clone());
        let spec_json = String::from_utf8(req.spec.value.clone())
            .map_err(|_| status(Code::INVALID_ARGUMENT, "exec spec: not UTF-8 JSON"))?;
        {
            let mut cs = self.inner.containers.lock().expect("lock");
            let c = cs
                .get_mut(&cid)
                .ok_or_else(|| not_found(&format!("container {cid}")))?;
            if c.execs.contains_key(&exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {exec_id}: already exists"),
                ));
            }
            let mut p = Proc::new(
                &exec_id,
                StdioPaths {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                },
            );
            p.spec_json = Some(spec_json);
            c.execs.insert(exec_id.clone(), p);
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = cid;
        ev.exec_id = exec_id;
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let sb = self.sandbox().await?;
        let mut r = TtyWinResizeRequest::new();
        r.container_id = req.id;
        r.exec_id = req.exec_id;
        r.rows = req.height;
        r.cols = req.width;
        sb.agent()
            .agent
            .tty_win_resize(ctx(), &r)
            .await
            .map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            let streamed = self.with_proc(&req.id, &req.exec_id, |p, _| {
                p.copiers.close_stdin();
                Ok(!p.stdio.stdin.is_empty())
            })?;
            if !streamed {
                let sb = self.sandbox().await?;
                let mut r = CloseStdinRequest::new();
                r.container_id = req.id;
                r.exec_id = req.exec_id;
                let _ = sb.agent().agent.close_stdin(ctx(), &r).await;
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let sb = self.sandbox().await?;
        let mut r = UpdateContainerRequest::new();
        r.container_id = req.id;
        r.resources_json = String::from_utf8(req.resources.value.clone())
            .map_err(|_| status(Code::INVALID_ARGUMENT, "resources: not UTF-8 JSON"))?;
        sb.agent()
            .agent
            .update_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut w = self.with_proc(&req.id, &req.exec_id, |p, _| Ok(p.exit_watch()))?;
        let e = w
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| status(Code::UNAVAILABLE, "process was deleted while waiting"))?
            .clone()
            .expect("waited for Some");
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(e.at).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_proc(&req.id, &req.exec_id, |p, bundle| {
            let e = p.exit();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: bundle.to_string(),
                pid: p.pid,
                status: p.status.into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: e.as_ref().map(|e| e.status).unwrap_or(0),
                exited_at: e.map(|e| e.at).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let sb = self.sandbox().await?;
        let mut r = StatsContainerRequest::new();
        r.container_id = req.id;
        let s = sb
            .agent()
            .agent
            .stats_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("StatsContainer", e))?;
        Ok(api::StatsResponse {
            stats: Some(crate::metrics::to_any(&crate::metrics::to_metrics(&s))).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = match self.inner.sandbox.lock().await.as_ref() {
            Some(sb) => sb.pid(),
            None => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if !self.inner.containers.lock().expect("lock").is_empty() {
            return Ok(api::Empty::new());
        }
        if let Some(sb) = self.inner.sandbox.lock().await.take() {
            let _ = sb.destroy().await;
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
