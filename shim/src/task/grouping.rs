//! Pod grouping: which sandbox a container goes to, starting the pod's sandbox for its
//! first container, and dropping a sandbox its container could not be created in.

use std::sync::Arc;

use containerd_shim::TtrpcResult;
use containerd_shim_protos::ttrpc::Code;
use ember_runtime::oci::BundleSpec;
use log::warn;

use super::status::{start_err, status};
use super::{EmberTask, CONTAINER_TYPE, SANDBOX_ID};
use crate::pod::{PodSandbox, PodStart, PodStarter};
use crate::publisher::EventPublisher;

impl<P: PodStarter, E: EventPublisher> EmberTask<P, E> {
    pub(super) async fn sandbox(&self) -> TtrpcResult<Arc<P::Pod>> {
        self.inner.sandbox.lock().await.clone().ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                "the pod's sandbox is not running",
            )
        })
    }

    /// Gets the pod's sandbox, starting it for the first container.
    pub(super) async fn sandbox_for(
        &self,
        id: &str,
        spec: &BundleSpec,
        options: Option<&protobuf::well_known_types::any::Any>,
    ) -> TtrpcResult<Arc<P::Pod>> {
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
        let sb = self
            .inner
            .starter
            .start(PodStart {
                id: wanted.clone(),
                config_path: opts.config_path,
                netns: spec.network_namespace_path(),
                hostname: spec.hostname().map(str::to_string),
                namespace: self.inner.namespace.clone(),
            })
            .await
            .map_err(start_err)?;
        let sb = Arc::new(sb);
        *guard = Some(sb.clone());
        drop(guard);
        self.watch_sandbox(sb.clone());
        self.watch_oom(sb.clone());
        Ok(sb)
    }

    /// A sandbox made for container `id` alone goes again when that container could not be
    /// created, so a failed create leaves nothing behind.
    pub(super) async fn drop_unused_sandbox(&self, sb: &P::Pod, id: &str) {
        if self.inner.containers.lock().expect("lock").is_empty() && sb.id() == id {
            if let Err(e) = sb.destroy().await {
                warn!(sandbox = id; "destroy after a failed create: {e}");
            }
            *self.inner.sandbox.lock().await = None;
        }
    }
}
