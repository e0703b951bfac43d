//! The ttrpc services: `Health` and `Agent` of `agent.proto`, translated onto
//! [`crate::container::Containers`] and [`crate::sandbox`].

use std::sync::Arc;

use async_trait::async_trait;
use ember_agent_protocol::agent::{self as pb, check_response::ServingStatus};
use ember_agent_protocol::agent_ttrpc;
use ember_agent_protocol::PROTOCOL_VERSION;
use slog::{debug, warn, Logger};
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError};

use crate::container::{ContainerError, Containers, StreamIds};
use crate::sandbox::{Sandbox, SandboxError};

/// State shared by the services.
pub struct AgentService {
    log: Logger,
    containers: Arc<Containers>,
    sandbox: Sandbox,
}

fn status(code: Code, msg: String) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(code, msg))
}

fn to_ttrpc(e: ContainerError) -> TtrpcError {
    let code = match &e {
        ContainerError::NotFound(_) | ContainerError::ExecNotFound { .. } => Code::NOT_FOUND,
        ContainerError::Exists(_) | ContainerError::ExecExists { .. } => Code::ALREADY_EXISTS,
        ContainerError::Spec(_) | ContainerError::Stdio(_) | ContainerError::Storage(_) => {
            Code::INVALID_ARGUMENT
        }
        ContainerError::State { .. } => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn sandbox_err(e: SandboxError) -> TtrpcError {
    let code = match &e {
        SandboxError::Storage(_) | SandboxError::Sysctl { .. } => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn ids(s: &protobuf::MessageField<pb::StdioStreams>) -> StreamIds {
    match s.as_ref() {
        Some(s) => StreamIds {
            stdin: s.stdin.clone(),
            stdout: s.stdout.clone(),
            stderr: s.stderr.clone(),
        },
        None => StreamIds::default(),
    }
}

impl AgentService {
    /// Services over `containers` and `sandbox`.
    pub fn new(log: Logger, containers: Arc<Containers>, sandbox: Sandbox) -> Arc<Self> {
        Arc::new(AgentService {
            log,
            containers,
            sandbox,
        })
    }

    fn log_err<T>(&self, rpc: &str, id: &str, r: Result<T, ContainerError>) -> ttrpc::Result<T> {
        r.map_err(|e| {
            warn!(self.log, "request failed"; "rpc" => rpc, "container" => id, "error" => %e);
            to_ttrpc(e)
        })
    }
}

#[async_trait]
impl agent_ttrpc::Health for AgentService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::CheckRequest,
    ) -> ttrpc::Result<pb::CheckResponse> {
        let mut r = pb::CheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::VersionRequest,
    ) -> ttrpc::Result<pb::VersionResponse> {
        let mut r = pb::VersionResponse::new();
        r.protocol_version = PROTOCOL_VERSION;
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CreateSandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        debug!(self.log, "CreateSandbox"; "sandbox" => &req.sandbox_id);
        self.sandbox.create(&req).map_err(sandbox_err)?;
        Ok(pb::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::DestroySandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        debug!(self.log, "DestroySandbox"; "sandbox" => &req.sandbox_id);
        for id in self.containers.ids() {
            let r = self.containers.remove(&id, true).await;
            self.log_err("DestroySandbox", &id, r)?;
        }
        self.containers.settle().await;
        self.sandbox.destroy();
        Ok(pb::Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> ttrpc::Result<pb::CreateContainerResponse> {
        debug!(self.log, "CreateContainer"; "container" => &req.container_id);
        let r = self
            .containers
            .create(
                &req.container_id,
                &req.spec_json,
                &req.bundle_path,
                &req.storages,
                &ids(&req.stdio),
            )
            .await;
        let pid = self.log_err("CreateContainer", &req.container_id, r)?;
        let mut resp = pb::CreateContainerResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::StartContainerRequest,
    ) -> ttrpc::Result<pb::StartContainerResponse> {
        let r = self.containers.start(&req.container_id).await;
        let pid = self.log_err("StartContainer", &req.container_id, r)?;
        let mut resp = pb::StartContainerResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ExecProcessRequest,
    ) -> ttrpc::Result<pb::ExecProcessResponse> {
        debug!(self.log, "ExecProcess"; "container" => &req.container_id, "exec" => &req.exec_id);
        let r = self
            .containers
            .exec(
                &req.container_id,
                &req.exec_id,
                &req.process_json,
                &ids(&req.stdio),
            )
            .await;
        let pid = self.log_err("ExecProcess", &req.container_id, r)?;
        let mut resp = pb::ExecProcessResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> ttrpc::Result<pb::Empty> {
        debug!(self.log, "SignalProcess"; "container" => &req.container_id, "exec" => &req.exec_id, "signal" => req.signal, "all" => req.all);
        let r = self
            .containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .await;
        self.log_err("SignalProcess", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> ttrpc::Result<pb::WaitProcessResponse> {
        let r = self.containers.wait(&req.container_id, &req.exec_id).await;
        let s = self.log_err("WaitProcess", &req.container_id, r)?;
        debug!(self.log, "process exited"; "container" => &req.container_id, "exec" => &req.exec_id, "status" => s);
        let mut resp = pb::WaitProcessResponse::new();
        resp.exit_status = s;
        Ok(resp)
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::RemoveContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self.containers.remove(&req.container_id, req.force).await;
        self.log_err("RemoveContainer", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ListProcessesRequest,
    ) -> ttrpc::Result<pb::ListProcessesResponse> {
        let r = self.containers.list_processes(&req.container_id).await;
        let pids = self.log_err("ListProcesses", &req.container_id, r)?;
        let mut resp = pb::ListProcessesResponse::new();
        resp.pids = pids;
        Ok(resp)
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::StatsContainerRequest,
    ) -> ttrpc::Result<pb::StatsContainerResponse> {
        let r = self.containers.stats(&req.container_id).await;
        self.log_err("StatsContainer", &req.container_id, r)
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::PauseContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self.containers.set_paused(&req.container_id, true).await;
        self.log_err("PauseContainer", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ResumeContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self.containers.set_paused(&req.container_id, false).await;
        self.log_err("ResumeContainer", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self
            .containers
            .update(&req.container_id, &req.resources_json)
            .await;
        self.log_err("UpdateContainer", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: pb::TtyWinResizeRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self
            .containers
            .resize(&req.container_id, &req.exec_id, req.rows, req.cols);
        self.log_err("TtyWinResize", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CloseStdinRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let r = self.containers.close_stdin(&req.container_id, &req.exec_id);
        self.log_err("CloseStdin", &req.container_id, r)?;
        Ok(pb::Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::GetOOMEventRequest,
    ) -> ttrpc::Result<pb::OOMEvent> {
        let id = self
            .containers
            .next_oom()
            .await
            .ok_or_else(|| status(Code::UNAVAILABLE, "the agent is shutting down".into()))?;
        let mut ev = pb::OOMEvent::new();
        ev.container_id = id;
        Ok(ev)
    }

    async fn update_network(
        &self,
        _ctx: &TtrpcContext,
        req: pb::UpdateNetworkRequest,
    ) -> ttrpc::Result<pb::Empty> {
        debug!(self.log, "UpdateNetwork"; "interfaces" => req.interfaces.len(), "routes" => req.routes.len());
        let (nics, routes) = crate::network::plan(&req)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        // Blocking netlink calls, off the async threads.
        tokio::task::spawn_blocking(move || crate::network::apply(&nics, &routes))
            .await
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?
            .map_err(|e| {
                let code = match e {
                    crate::network::NetworkError::NoSuchNic { .. } => Code::NOT_FOUND,
                    _ => Code::INTERNAL,
                };
                status(code, e.to_string())
            })?;
        Ok(pb::Empty::new())
    }
}
