//! The task v2 service: containerd's calls mapped onto the pod's sandbox and its agent.
//!
//! One shim serves one pod. The first Create starts the sandbox (for CRI that is the pod's
//! sandbox container); later containers of the pod are created in the same sandbox. When
//! the last container is deleted the sandbox is destroyed, and Shutdown ends the shim.
//!
//! By concern: [`grouping`] (which sandbox a container goes to, starting it, dropping an
//! unused one), [`events`] (publishing to containerd), [`watchers`] (the sandbox's exit,
//! the agent's OOM notices, process waiters), [`status`] (errors as ttrpc statuses) and
//! [`rpc`] (the `Task` calls themselves).
//!
//! The service is generic over its two seams: how a pod's sandbox is started and driven
//! ([`PodStarter`], [`crate::pod::PodSandbox`]) and where events go ([`EventPublisher`]).
//! The defaults are the runtime's sandbox and containerd's publisher; the unit tests
//! (`tests`) run it against a fake pod and an event recorder.

mod events;
mod grouping;
mod rpc;
mod status;
#[cfg(test)]
mod tests;
mod watchers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::ttrpc::Code;
use ember_agent_protocol::agent::StdioStreams;

use crate::pod::{PodSandbox, PodStarter, RuntimeStarter};
use crate::process::Proc;
use crate::publisher::EventPublisher;
use crate::stdio::{self, StdioPaths};
use status::{not_found, status};

pub use ember_runtime::oci::{CRI_CONTAINER_TYPE as CONTAINER_TYPE, CRI_SANDBOX_ID as SANDBOX_ID};

/// Name of the file in a bundle that tells `containerd-shim-ember-v2 delete` where the
/// container's sandbox state is.
pub const BUNDLE_RECORD: &str = "ember-sandbox.json";

/// A container of the pod.
#[derive(Debug)]
struct Container {
    bundle: String,
    init: Proc,
    execs: HashMap<String, Proc>,
}

/// The task service: pods started by `P`, events published through `E`.
pub struct EmberTask<P: PodStarter = RuntimeStarter, E: EventPublisher = RemotePublisher> {
    inner: Arc<Inner<P, E>>,
}

impl<P: PodStarter, E: EventPublisher> Clone for EmberTask<P, E> {
    fn clone(&self) -> Self {
        EmberTask {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P: PodStarter, E> {
    namespace: String,
    starter: P,
    publisher: E,
    exit: Arc<ExitSignal>,
    sandbox: tokio::sync::Mutex<Option<Arc<P::Pod>>>,
    containers: Mutex<HashMap<String, Container>>,
}

impl EmberTask {
    /// A service running the runtime's sandbox and publishing events to containerd for
    /// containerd namespace `namespace`.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> EmberTask {
        EmberTask::with_seams(namespace, RuntimeStarter, publisher, exit)
    }
}

impl<P: PodStarter, E: EventPublisher> EmberTask<P, E> {
    /// A service whose pods `starter` starts and whose events for containerd namespace
    /// `namespace` go to `publisher`; `exit` is signalled when Shutdown ends the shim.
    pub fn with_seams(
        namespace: &str,
        starter: P,
        publisher: E,
        exit: Arc<ExitSignal>,
    ) -> EmberTask<P, E> {
        EmberTask {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                starter,
                publisher,
                exit,
                sandbox: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
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

    async fn attach_stdio(
        &self,
        sb: &P::Pod,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
        ids: &StdioStreams,
    ) -> TtrpcResult<()> {
        let copiers = stdio::attach(
            sb,
            ids,
            paths,
            stdio::LogIds {
                sandbox: sb.id().to_string(),
                container: cid.to_string(),
                exec: exec_id.to_string(),
            },
        )
        .await
        .map_err(|e| status(Code::UNKNOWN, e))?;
        self.with_proc(cid, exec_id, |p, _| {
            p.copiers = copiers;
            Ok(())
        })
    }
}
