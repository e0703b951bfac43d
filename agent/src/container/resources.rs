//! A container's cgroup: its processes, stats, resource updates, pause and resume.

use ember_agent_protocol::agent::StatsContainerResponse;
use libcontainer::container::Container as LcContainer;

use crate::cgroup;
use crate::spec;

use super::{blocking, lc_err, ContainerError, Containers};

impl Containers {
    /// Pids in the container's cgroup.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<i32>, ContainerError> {
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::pids(&idc, &cg).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Resource usage from the container's cgroup.
    pub async fn stats(&self, id: &str) -> Result<StatsContainerResponse, ContainerError> {
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::stats(&idc, &cg).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Applies new `linux.resources`.
    pub async fn update(&self, id: &str, resources_json: &str) -> Result<(), ContainerError> {
        let res = spec::resources(resources_json)?;
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::update(&idc, &cg, &res).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Freezes (`pause`) or thaws the container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<(), ContainerError> {
        self.with(id, |_| Ok(()))?;
        let dir = self.root.join(id);
        let idc = id.to_string();
        blocking(move || {
            let mut c = LcContainer::load(dir).map_err(|e| lc_err(&idc, "load", e))?;
            if pause {
                c.pause().map_err(|e| lc_err(&idc, "pause", e))
            } else {
                c.resume().map_err(|e| lc_err(&idc, "resume", e))
            }
        })
        .await
    }
}
