//! The shim's lifecycle with containerd: `start` (one shim per pod), serving, and `delete`
//! (cleanup after the shim is gone, e.g. killed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use ember_runtime::state::SandboxState;
use log::{info, warn};

use crate::process::now;
use crate::task::{EmberTask, BUNDLE_RECORD, CONTAINER_TYPE, SANDBOX_ID};

/// The shim.
pub struct EmberShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

/// The pod a container belongs to, from CRI's annotations in its bundle (a container
/// without them is its own pod).
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let annotation = |k: &str| {
        spec.as_ref()
            .and_then(|s| s.get("annotations")?.get(k)?.as_str().map(str::to_string))
    };
    match annotation(CONTAINER_TYPE).as_deref() {
        Some("container") => annotation(SANDBOX_ID).unwrap_or_else(|| id.to_string()),
        _ => id.to_string(),
    }
}

#[async_trait]
impl Shim for EmberShim {
    type T = EmberTask;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        EmberShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let group = grouping(&self.bundle, &opts.id);
        // containerd-shim's spawn reuses the running shim of the group when its socket
        // answers, so every container of a pod reaches the same shim.
        spawn(opts, &group, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // containerd calls this when the shim is gone (or never served): remove what the
        // container's sandbox left on the host if its owner is dead.
        let record = self.bundle.join(BUNDLE_RECORD);
        if let Ok(text) = std::fs::read_to_string(&record) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(dir) = v.get("state_dir").and_then(|d| d.as_str()) {
                    match SandboxState::open(Path::new(dir)) {
                        Ok(s) if !s.owner_alive() => match s.cleanup() {
                            Ok(()) => {
                                info!(container = self.id.as_str(); "cleaned up sandbox state {dir}")
                            }
                            Err(e) => warn!(container = self.id.as_str(); "cleanup of {dir}: {e}"),
                        },
                        Ok(_) => info!(
                            container = self.id.as_str();
                            "sandbox {dir} still has a running shim; left to it"
                        ),
                        Err(e) => info!(container = self.id.as_str(); "{e}"),
                    }
                }
            }
            let _ = std::fs::remove_file(&record);
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(now()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        EmberTask::new(&self.namespace, publisher, self.exit.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_containers_group_by_pod() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |v: serde_json::Value| {
            std::fs::write(tmp.path().join("config.json"), v.to_string()).unwrap()
        };
        write(serde_json::json!({"annotations": {
            CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"}}));
        assert_eq!(grouping(tmp.path(), "c1"), "pod1");
        write(serde_json::json!({"annotations": {CONTAINER_TYPE: "sandbox"}}));
        assert_eq!(grouping(tmp.path(), "pod1"), "pod1");
        write(serde_json::json!({}));
        assert_eq!(grouping(tmp.path(), "solo"), "solo");
        std::fs::remove_file(tmp.path().join("config.json")).unwrap();
        assert_eq!(grouping(tmp.path(), "solo"), "solo");
    }
}
