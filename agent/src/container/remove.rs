//! Removing a container: killing what is left of it, deleting its cgroup and state (in the
//! background once everything in it has exited), releasing its streams and storages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::{Container as LcContainer, ContainerStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slog::{info, o, warn};
use tokio::sync::watch;

use crate::cgroup;
use crate::spawn::SpawnRequest;
use crate::storage;

use super::spare::recycle_bundle;
use super::{blocking, lc_err, Container, ContainerError, Containers};

/// How long removal waits for a killed init process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often removal retries libcontainer's delete when the cgroup is still busy.
pub(super) const DELETE_RETRIES: u32 = 5;

/// Deletes a hook-less container's libcontainer state and cgroup. A stopped container on a
/// cgroup v1 or hybrid host is deleted here: its cgroup through [`cgroup::remove_v1`] (which
/// does not re-read the mount table for each controller, as a libcontainer delete does),
/// then its state directory; anything else (a process still alive, Intel RDT, cgroup v2)
/// goes through libcontainer's own delete.
fn delete_state(id: &str, dir: PathBuf, cgroup: &Path) -> Result<(), ContainerError> {
    let mut c = LcContainer::load(dir.clone()).map_err(|e| lc_err(id, "delete", e))?;
    if c.status() == ContainerStatus::Stopped && c.intel_rdt_dir().is_none() {
        let removed = cgroup::remove_v1(cgroup).map_err(|source| ContainerError::Cgroup {
            id: id.to_string(),
            source,
        })?;
        if removed {
            return std::fs::remove_dir_all(&dir).map_err(|source| ContainerError::Io {
                id: id.to_string(),
                path: dir,
                source,
            });
        }
    }
    c.delete(true).map_err(|e| lc_err(id, "delete", e))
}

impl Containers {
    /// Removes a container: kills it (only with `force` if it is running), deletes its
    /// cgroup and state, closes its streams and unmounts its storages.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let (running, init_exit) = self.with(id, |c| {
            Ok((
                c.started && c.init.exit.borrow().is_none(),
                c.init.exit.clone(),
            ))
        })?;
        // The init had exited by itself: nothing is left to kill, and the cgroup and state
        // are deleted in the background.
        let exited = init_exit.borrow().is_some();
        if running && !force {
            return Err(ContainerError::State {
                id: id.to_string(),
                message: "is running; stop it first or remove it with force".into(),
            });
        }
        // Kill whatever still runs (the init of a created container or, with force, of a
        // running one; execs that outlive an init without a pid namespace) and let the
        // reaper collect it before the cgroup goes: a killed but unreaped process keeps
        // its cgroup busy.
        let (init_pid, mut waits) = self.with(id, |c| {
            let mut waits = vec![c.init.exit.clone()];
            for p in c.execs.values() {
                if p.exit.borrow().is_none() {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                    waits.push(p.exit.clone());
                }
            }
            Ok((c.init.pid, waits))
        })?;
        let dir = self.root.join(id);
        if init_exit.borrow().is_none() && dir.exists() {
            let (d, idc) = (dir.clone(), id.to_string());
            // libcontainer's kill of all processes also copes with a frozen (paused) cgroup.
            let killed = blocking(move || {
                LcContainer::load(d)
                    .and_then(|mut c| c.kill(Signal::SIGKILL, true))
                    .map_err(|e| lc_err(&idc, "kill", e))
            })
            .await;
            if let Err(e) = killed {
                warn!(self.log, "kill before removal failed"; "container" => id, "error" => %e);
            }
            let _ = kill(Pid::from_raw(init_pid), Signal::SIGKILL);
        }
        for w in waits.iter_mut() {
            let _ = tokio::time::timeout(REAP_TIMEOUT, w.wait_for(|s| s.is_some())).await;
        }
        let (hooks, execs_done) = self.with(id, |c| {
            Ok((c.hooks, c.execs.values().all(|p| p.exit.borrow().is_some())))
        })?;
        if exited && execs_done && !hooks && dir.exists() {
            return self.remove_in_background(id, dir);
        }
        if dir.exists() && hooks {
            self.in_helper(
                id,
                SpawnRequest::Delete {
                    id: id.to_string(),
                    root: self.root.clone(),
                },
            )
            .await?;
        } else if dir.exists() {
            let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
            let mut attempt = 0;
            loop {
                let (d, idc, cg) = (dir.clone(), id.to_string(), cg.clone());
                let r = blocking(move || delete_state(&idc, d, &cg)).await;
                match r {
                    Ok(()) => break,
                    // A process in uninterruptible sleep can hold the cgroup a while longer.
                    Err(e) if attempt < DELETE_RETRIES && dir.exists() => {
                        warn!(self.log, "delete failed, retrying"; "container" => id, "error" => %e);
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let c = self
            .table
            .lock()
            .expect("table lock")
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        c.oom_task.abort();
        self.streams.release(&c.init.stdio.ids);
        for p in c.execs.values() {
            self.streams.release(&p.stdio.ids);
        }
        storage::unmount_all(&*self.sys, &c.storages);
        recycle_bundle(&self.spares, &self.bundles, &c.bundle);
        info!(self.log, "container removed"; "container" => id);
        Ok(())
    }

    /// Removes a hook-less container whose processes have all exited and been reaped: it
    /// leaves the table, its streams and storages are released at once, and its cgroup,
    /// libcontainer state and bundle copy are deleted by a background task. Nothing of the
    /// container is running any more, so the client need not wait for that; a create with
    /// the same id waits for it, and [`Containers::settle`] waits for every pending one.
    fn remove_in_background(&self, id: &str, dir: PathBuf) -> Result<(), ContainerError> {
        let (tx, rx) = watch::channel(false);
        let c = {
            let mut table = self.table.lock().expect("table lock");
            let c = table
                .remove(id)
                .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
            // Registered before the table lock is released: the id is always either in
            // the table or pending, so a create with it either fails or waits.
            self.cleanups
                .lock()
                .expect("cleanups lock")
                .insert(id.to_string(), rx);
            c
        };
        c.oom_task.abort();
        self.streams.release(&c.init.stdio.ids);
        for p in c.execs.values() {
            self.streams.release(&p.stdio.ids);
        }
        storage::unmount_all(&*self.sys, &c.storages);
        // Its pipes and terminal close now, as with a synchronous removal.
        let Container { cgroup, bundle, .. } = c;
        let (log, cleanups, spares, bundles) = (
            self.log.new(o!("container" => id.to_string())),
            self.cleanups.clone(),
            self.spares.clone(),
            self.bundles.clone(),
        );
        let id = id.to_string();
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let (d, idc, cg) = (dir.clone(), id.clone(), cgroup.clone());
                match blocking(move || delete_state(&idc, d, &cg)).await {
                    Ok(()) => break,
                    // A process in uninterruptible sleep can hold the cgroup a while longer.
                    Err(e) if attempt < DELETE_RETRIES && dir.exists() => {
                        warn!(log, "delete failed, retrying"; "error" => %e);
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        warn!(log, "delete failed"; "error" => %e);
                        break;
                    }
                }
            }
            recycle_bundle(&spares, &bundles, &bundle);
            cleanups.lock().expect("cleanups lock").remove(&id);
            let _ = tx.send(true);
            info!(log, "container removed");
        });
        Ok(())
    }

    /// Waits until every background cleanup of removed containers has finished.
    pub async fn settle(&self) {
        let pending: Vec<_> = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .values()
            .cloned()
            .collect();
        for mut done in pending {
            let _ = done.wait_for(|d| *d).await;
        }
    }
}
