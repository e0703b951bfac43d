//! Task events published to containerd.

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use log::warn;

use super::EmberTask;
use crate::pod::PodStarter;
use crate::process::Exit;
use crate::publisher::EventPublisher;

impl<P: PodStarter, E: EventPublisher> EmberTask<P, E> {
    pub(super) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(topic, &self.inner.namespace, event)
            .await
        {
            warn!("publishing {topic}: {e}");
        }
    }

    pub(super) async fn publish_exit(&self, cid: &str, exec_id: &str, pid: u32, e: &Exit) {
        let mut ev = TaskExit::new();
        ev.container_id = cid.to_string();
        ev.id = if exec_id.is_empty() { cid } else { exec_id }.to_string();
        ev.pid = pid;
        ev.exit_status = e.status;
        ev.exited_at = Some(e.at.clone()).into();
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }
}
