//! OOM events: each container's OOM-kill counter is polled, and every new kill is
//! reported by container id.

use std::path::Path;
use std::time::Duration;

use slog::{o, warn};
use tokio::task::JoinHandle;

use crate::cgroup;

use super::Containers;

/// How often a container's OOM-kill counter is read.
const OOM_POLL: Duration = Duration::from_millis(100);

impl Containers {
    pub(super) fn watch_oom(&self, id: &str, cgroup: &Path) -> JoinHandle<()> {
        let file = cgroup::oom_counter_file(cgroup);
        let tx = self.oom_tx.clone();
        let id = id.to_string();
        let log = self.log.new(o!("container" => id.clone()));
        tokio::spawn(async move {
            let mut seen = cgroup::read_oom_kills(&file).unwrap_or(0);
            let mut tick = tokio::time::interval(OOM_POLL);
            loop {
                tick.tick().await;
                let Some(n) = cgroup::read_oom_kills(&file) else {
                    continue;
                };
                if n > seen {
                    warn!(log, "OOM kill in container"; "count" => n);
                    seen = n;
                    if tx.send(id.clone()).is_err() {
                        return;
                    }
                }
            }
        })
    }

    /// Waits for the next OOM kill in any container and returns its id.
    pub async fn next_oom(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }
}
