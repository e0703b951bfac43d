//! The container table: reserving an id while a container is created, and finding a
//! container or one of its processes.

use std::collections::HashSet;
use std::sync::Mutex;

use super::{Container, ContainerError, Containers, Process};

/// Frees an id reservation when creation ends, whichever way.
pub(super) struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("reserved lock").remove(&self.id);
    }
}

impl Containers {
    pub(super) fn reserve(&self, id: &str) -> Result<Reservation<'_>, ContainerError> {
        let table = self.table.lock().expect("table lock");
        let mut reserved = self.reserved.lock().expect("reserved lock");
        if table.contains_key(id) || !reserved.insert(id.to_string()) {
            return Err(ContainerError::Exists(id.to_string()));
        }
        Ok(Reservation {
            set: &self.reserved,
            id: id.to_string(),
        })
    }

    pub(super) fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        let mut table = self.table.lock().expect("table lock");
        let c = table
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        f(c)
    }

    pub(super) fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        self.with(id, |c| {
            let p = if exec_id.is_empty() {
                &mut c.init
            } else {
                c.execs
                    .get_mut(exec_id)
                    .ok_or_else(|| ContainerError::ExecNotFound {
                        container: id.to_string(),
                        exec: exec_id.to_string(),
                    })?
            };
            f(p)
        })
    }

    /// Ids of every container.
    pub fn ids(&self) -> Vec<String> {
        self.table
            .lock()
            .expect("table lock")
            .keys()
            .cloned()
            .collect()
    }
}
