//! The `Task` calls: containerd's task API mapped onto the pod's sandbox and its agent.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api::{self, ProcessInfo, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::Code;
use ember_runtime::mounts::MountSpec;
use ember_runtime::oci::BundleSpec;
use ember_runtime::sandbox::ContainerRequest;
use log::{error, info, warn};

use super::status::{agent_err, not_found, status};
use super::{Container, EmberTask, BUNDLE_RECORD};
use crate::pod::{PodSandbox, PodStarter};
use crate::process::{now, Exit, Proc};
use crate::publisher::EventPublisher;
use crate::stdio::{self, StdioPaths};

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
impl<P: PodStarter, E: EventPublisher> Task for EmberTask<P, E> {
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
        info!(sandbox = sb.id(), container = id.as_str(); "created");
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
            sb.start_container(&cid)
                .await
                .map_err(|e| agent_err("StartContainer", e))?;
            let pid = sb.pid();
            self.with_proc(&cid, "", |p, _| {
                p.status = Status::RUNNING;
                Ok(())
            })?;
            self.spawn_waiter(sb.clone(), cid.clone(), String::new(), pid);
            info!(sandbox = sb.id(), container = cid.as_str(); "started");
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
            let ids =
                stdio::stream_ids(&cid, &exec_id, &paths).map_err(|e| status(Code::INTERNAL, e))?;
            let pid = sb
                .exec_process(&cid, &exec_id, spec_json, ids.clone())
                .await
                .map_err(|e| agent_err("ExecProcess", e))? as u32;
            self.with_proc(&cid, &exec_id, |p, _| {
                p.pid = pid;
                p.status = Status::RUNNING;
                Ok(())
            })?;
            self.attach_stdio(&sb, &cid, &exec_id, &paths, &ids).await?;
            self.spawn_waiter(sb.clone(), cid.clone(), exec_id.clone(), pid);
            info!(
                sandbox = sb.id(), container = cid.as_str(), exec = exec_id.as_str();
                "started"
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
                let c = cs
                    .get_mut(&cid)
                    .ok_or_else(|| not_found(&format!("container {cid}")))?;
                match c.execs.get(&exec_id).map(|p| p.status) {
                    None => return Err(not_found(&format!("exec {exec_id} of container {cid}"))),
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
            .ok_or_else(|| not_found(&format!("container {cid}")))?;
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
            warn!(sandbox = sb.id(), container = cid.as_str(); "remove: {e}");
        }
        let _ = std::fs::remove_file(PathBuf::from(&c.bundle).join(BUNDLE_RECORD));
        let e = c.init.exit().unwrap_or(Exit {
            status: 128 + libc::SIGKILL as u32,
            at: now(),
        });
        info!(sandbox = sb.id(), container = cid.as_str(); "deleted");
        if self.inner.containers.lock().expect("lock").is_empty() {
            if let Err(e) = sb.destroy().await {
                error!(sandbox = sb.id(); "destroy: {e}");
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
        let pids = sb
            .list_processes(&req.id)
            .await
            .map_err(|e| agent_err("ListProcesses", e))?;
        Ok(api::PidsResponse {
            processes: pids
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
        sb.pause_container(&req.id)
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
        sb.resume_container(&req.id)
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
        sb.signal_process(&req.id, &req.exec_id, req.signal, req.all)
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
        sb.resize_tty(&req.id, &req.exec_id, req.height, req.width)
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
                let _ = sb.close_stdin(&req.id, &req.exec_id).await;
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
        let resources_json = String::from_utf8(req.resources.value.clone())
            .map_err(|_| status(Code::INVALID_ARGUMENT, "resources: not UTF-8 JSON"))?;
        sb.update_container(&req.id, resources_json)
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
        let s = sb
            .stats_container(&req.id)
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
