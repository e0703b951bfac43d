//! Running containers' processes: start, exec, signal, wait, terminal resize and
//! close-stdin.

use libcontainer::container::Container as LcContainer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slog::info;

use crate::spawn::SpawnRequest;
use crate::spec::{self, SpecError};
use crate::stdio;
use crate::tty;

use super::{blocking, lc_err, ContainerError, Containers, StreamIds};

impl Containers {
    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<i32, ContainerError> {
        let (pid, hooks) = self.with(id, |c| {
            if c.started {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: "is already started".into(),
                });
            }
            Ok((c.init.pid, c.hooks))
        })?;
        if hooks {
            self.in_helper(
                id,
                SpawnRequest::Start {
                    id: id.to_string(),
                    root: self.root.clone(),
                },
            )
            .await?;
        } else {
            let dir = self.root.join(id);
            let idc = id.to_string();
            blocking(move || {
                LcContainer::load(dir)
                    .and_then(|mut c| c.start())
                    .map_err(|e| lc_err(&idc, "start", e))
            })
            .await?;
        }
        self.with(id, |c| {
            c.started = true;
            Ok(())
        })?;
        info!(self.log, "container started"; "container" => id, "pid" => pid);
        Ok(pid)
    }

    /// Runs an additional process (an OCI `process` JSON) in a running container. The
    /// exec id must not name a process that is still running.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
        ids: &StreamIds,
    ) -> Result<i32, ContainerError> {
        spec::check_id("exec_id", exec_id)?;
        let process: oci_spec::runtime::Process = spec::parse("process_json", process_json)?;
        spec::check_process(&process, "process_json: ")?;
        let streams = &self.streams;
        let bundle = self.with(id, |c| {
            // An exec id is free again once its process has exited (containerd reuses ids).
            if let Some(old) = c.execs.get(exec_id) {
                if old.exit.borrow().is_none() {
                    return Err(ContainerError::ExecExists {
                        container: id.to_string(),
                        exec: exec_id.to_string(),
                    });
                }
                if let Some(old) = c.execs.remove(exec_id) {
                    streams.release(&old.stdio.ids);
                }
            }
            if !c.started || c.init.exit.borrow().is_some() {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: "is not running; exec needs a started, running container".into(),
                });
            }
            Ok(c.bundle.clone())
        })?;
        let terminal = process.terminal().unwrap_or(false);
        let path = bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).expect("process serializes");
        std::fs::write(&path, json).map_err(|source| ContainerError::Io {
            id: id.to_string(),
            path: path.clone(),
            source,
        })?;
        let (root, id_s, p) = (self.root.clone(), id.to_string(), path.clone());
        let result = self
            .spawn_process(id, terminal, ids, move |console_socket| {
                SpawnRequest::Exec {
                    id: id_s,
                    root,
                    process: p,
                    console_socket,
                }
            })
            .await;
        let _ = std::fs::remove_file(&path);
        let proc = result?;
        let pid = proc.pid;
        let inserted = self.with(id, |c| {
            if c.execs.contains_key(exec_id) {
                return Err(ContainerError::ExecExists {
                    container: id.to_string(),
                    exec: exec_id.to_string(),
                });
            }
            c.execs.insert(exec_id.to_string(), proc);
            Ok(())
        });
        if let Err(e) = inserted {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        info!(self.log, "process executed"; "container" => id, "exec" => exec_id, "pid" => pid);
        Ok(pid)
    }

    /// Sends `signal` to one process, or with `all` to every process of the container.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal as i32).map_err(|_| SpecError::Field {
            field: "signal".into(),
            message: format!("{signal} is not a valid signal number"),
        })?;
        if all {
            self.with(id, |_| Ok(()))?;
            let dir = self.root.join(id);
            let idc = id.to_string();
            return blocking(move || {
                LcContainer::load(dir)
                    .and_then(|mut c| c.kill(sig, true))
                    .map_err(|e| lc_err(&idc, "kill", e))
            })
            .await;
        }
        let pid = self.with_process(id, exec_id, |p| {
            if p.exit.borrow().is_some() {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: format!("process {exec_id:?} has already exited"),
                });
            }
            Ok(p.pid)
        })?;
        kill(Pid::from_raw(pid), sig).map_err(|e| ContainerError::State {
            id: id.to_string(),
            message: format!("cannot signal pid {pid}: {e}"),
        })
    }

    /// Waits for a process to exit; returns its exit status (128 + N for signal N).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let mut rx = self.with_process(id, exec_id, |p| Ok(p.exit.clone()))?;
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| ContainerError::State {
                id: id.to_string(),
                message: "was removed while waiting".into(),
            })?;
        Ok(status.expect("waited for Some"))
    }

    /// Resizes a process's terminal.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p| {
            let master = p.pty.as_ref().ok_or_else(|| ContainerError::State {
                id: id.to_string(),
                message: format!("process {exec_id:?} has no terminal (terminal: false)"),
            })?;
            tty::resize(
                master,
                rows.min(u16::MAX as u32) as u16,
                cols.min(u16::MAX as u32) as u16,
            )
            .map_err(|source| ContainerError::Tty {
                id: id.to_string(),
                source,
            })
        })
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p| {
            if let Some(h) = &p.stdio.stdin {
                stdio::close_stdin(h);
            }
            Ok(())
        })
    }
}
