//! The seam between the task service and containerd's event service: what
//! [`crate::task::EmberTask`] needs to publish an event ([`EventPublisher`]), implemented
//! for containerd-shim's [`RemotePublisher`]. The task service's unit tests record events
//! instead (`crate::testing`).

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;

/// Publishes task events to containerd.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes `event` on `topic` in containerd namespace `namespace`.
    async fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()>;
}

#[async_trait]
impl EventPublisher for RemotePublisher {
    async fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()> {
        RemotePublisher::publish(self, Default::default(), topic, namespace, event).await
    }
}
