//! Creating a container: its storages, bundle copy and init process; undone on failure.

use std::collections::HashMap;
use std::time::Duration;

use ember_agent_protocol::agent::Storage;
use libcontainer::container::Container as LcContainer;
use slog::{info, o, warn};

use crate::spawn::SpawnRequest;
use crate::spec;
use crate::storage;

use super::remove::DELETE_RETRIES;
use super::{blocking, Container, ContainerError, Containers, StreamIds};

impl Containers {
    /// Creates a container whose init waits for [`Containers::start`]. On failure nothing
    /// is left behind: no process, mount, cgroup, state or stream.
    pub async fn create(
        &self,
        id: &str,
        spec_json: &str,
        bundle_path: &str,
        storages: &[Storage],
        ids: &StreamIds,
    ) -> Result<i32, ContainerError> {
        spec::check_id("container_id", id)?;
        // A removed container with this id may still be being cleaned up.
        let pending = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .get(id)
            .cloned();
        if let Some(mut done) = pending {
            let _ = done.wait_for(|d| *d).await;
        }
        let _reservation = self.reserve(id)?;
        let log = self.log.new(o!("container" => id.to_string()));
        let (mut spec, cgroup) = spec::prepare(id, spec_json, bundle_path)?;
        if self.pod_network_sysctls {
            for (key, value) in spec::take_shared_network_sysctls(&mut spec) {
                crate::sandbox::write_sysctl(&key, &value).map_err(|e| spec::SpecError::Field {
                    field: format!("linux.sysctl[{key}]"),
                    message: format!("in the pod's network namespace: {e}"),
                })?;
                info!(log, "pod network sysctl"; "key" => &key, "value" => &value);
            }
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let hooks = spec.hooks().as_ref().is_some_and(|h| {
            [
                h.prestart(),
                h.create_runtime(),
                h.create_container(),
                h.start_container(),
                h.poststart(),
                h.poststop(),
            ]
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
        });
        let mounted = if storages.is_empty() {
            Vec::new()
        } else {
            // A block storage may wait for its disk to show a capacity: off the async threads.
            let (sys, storages) = (self.sys.clone(), storages.to_vec());
            blocking(move || storage::mount_all(&*sys, &storages)).await?
        };
        let bundle = self.bundles.join(id);
        let result = async {
            self.take_spare_bundle(&bundle);
            spec::write_bundle(&bundle, &spec)?;
            let (root, bundle_c, id_s) = (self.root.clone(), bundle.clone(), id.to_string());
            self.spawn_process(id, terminal, ids, move |console_socket| {
                SpawnRequest::Create {
                    id: id_s,
                    root,
                    bundle: bundle_c,
                    console_socket,
                }
            })
            .await
        }
        .await;
        let init = match result {
            Ok(p) => p,
            Err(e) => {
                warn!(log, "create failed"; "error" => %e);
                // libcontainer removes its own state and cgroup when its build fails; if the
                // build succeeded and a later step failed (the terminal hand-over), the
                // container exists and is deleted here, processes and cgroup included.
                let dir = self.root.join(id);
                for _ in 0..DELETE_RETRIES {
                    if !dir.exists() {
                        break;
                    }
                    let d = dir.clone();
                    let _ = blocking(move || LcContainer::load(d).and_then(|mut c| c.delete(true)))
                        .await;
                    if dir.exists() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&bundle);
                storage::unmount_all(&*self.sys, &mounted);
                return Err(e);
            }
        };
        let pid = init.pid;
        let oom_task = self.watch_oom(id, &cgroup);
        info!(log, "container created"; "pid" => pid, "terminal" => terminal);
        self.table.lock().expect("table lock").insert(
            id.to_string(),
            Container {
                cgroup,
                bundle,
                init,
                execs: HashMap::new(),
                storages: mounted,
                started: false,
                hooks,
                oom_task,
            },
        );
        Ok(pid)
    }
}
