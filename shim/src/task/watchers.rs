//! Watchers: the sandbox's unexpected exit, the agent's OOM notices, and one waiter per
//! started process, each publishing what it sees.

use std::sync::Arc;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::TaskOOM;
use containerd_shim_protos::topics;
use ember_runtime::sandbox::rpc_message;
use log::{error, info, warn};

use super::EmberTask;
use crate::oom::{OomGate, OomVerdict};
use crate::pod::{PodSandbox, PodStarter};
use crate::publisher::EventPublisher;

/// How long the OOM watcher pauses after dropping a notice from the agent.
const OOM_DROP_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

impl<P: PodStarter, E: EventPublisher> EmberTask<P, E> {
    /// When the agent or VM dies, every process still running has exited (killed).
    pub(super) fn watch_sandbox(&self, sb: Arc<P::Pod>) {
        let this = self.clone();
        tokio::spawn(async move {
            let exit = sb.wait().await;
            if sb.stopping() {
                return;
            }
            error!(sandbox = sb.id(); "ended unexpectedly ({})", exit.status);
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
    pub(super) fn watch_oom(&self, sb: Arc<P::Pod>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut gate = OomGate::default();
            let mut warned_unknown = false;
            loop {
                let cid = match sb.next_oom().await {
                    Ok(cid) => cid,
                    Err(_) => return,
                };
                let known = this
                    .inner
                    .containers
                    .lock()
                    .expect("containers lock")
                    .contains_key(&cid);
                match gate.check(&cid, known, std::time::Instant::now()) {
                    OomVerdict::Publish => {
                        info!(sandbox = sb.id(), container = cid.as_str(); "OOM");
                        let mut e = TaskOOM::new();
                        e.container_id = cid;
                        this.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
                            .await;
                        continue;
                    }
                    OomVerdict::UnknownContainer if !warned_unknown => {
                        warned_unknown = true;
                        warn!(
                            sandbox = sb.id();
                            "the agent reported an OOM of {cid:?}, not a container of this \
                             pod; ignored (further ones are logged at debug level)"
                        );
                    }
                    verdict => log::debug!(
                        sandbox = sb.id(), container = cid.as_str();
                        "OOM notice dropped ({verdict:?})"
                    ),
                }
                tokio::time::sleep(OOM_DROP_PAUSE).await;
            }
        });
    }

    /// Waits in the agent for a started process and records its exit.
    pub(super) fn spawn_waiter(&self, sb: Arc<P::Pod>, cid: String, exec_id: String, pid: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            let code = match sb.wait_process(&cid, &exec_id).await {
                Ok(status) => status as u32,
                Err(e) => {
                    warn!(
                        sandbox = sb.id(), container = cid.as_str(), exec = exec_id.as_str();
                        "wait failed: {}",
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
                        sandbox = sb.id(), container = cid.as_str(), exec = exec_id.as_str();
                        "output not all copied within {limit:?} of the exit; the rest is dropped"
                    );
                }
            }
            let exit = this.with_proc(&cid, &exec_id, |p, _| {
                let first = p.exit().is_none();
                Ok((p.set_exit(code), first))
            });
            if let Ok((e, true)) = exit {
                info!(
                    sandbox = sb.id(), container = cid.as_str(), exec = exec_id.as_str();
                    "exited with {}",
                    e.status
                );
                this.publish_exit(&cid, &exec_id, pid, &e).await;
            }
        });
    }
}
