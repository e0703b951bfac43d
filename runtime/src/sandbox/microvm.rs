//! The `microvm` backend (being written).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ember_agent_protocol::agent::Storage;
use ember_config::Backend as BackendKind;

use super::{Backend, SandboxError, SandboxExit, StartContext};
use crate::endpoint::AgentEndpoint;

/// The `microvm` backend.
#[derive(Default)]
pub struct MicrovmBackend {}

#[async_trait]
impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }
    async fn start(&mut self, ctx: StartContext<'_>) -> Result<AgentEndpoint, SandboxError> {
        Err(SandboxError::Backend {
            id: ctx.id.to_string(),
            message: "microvm backend not built yet".into(),
        })
    }
    fn agent_shared_dir(&self) -> PathBuf {
        PathBuf::from("/run/ember/shared")
    }
    fn sandbox_storages(&self) -> Vec<Storage> {
        Vec::new()
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn log_path(&self) -> Option<PathBuf> {
        None
    }
    async fn wait(&self) -> SandboxExit {
        std::future::pending().await
    }
    async fn stop(&self, _grace: Duration) {}
}
