//! Creating a container's processes (its init or an exec) through the spawn helper, with
//! their stdio or terminal, and watching for their exit.

use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::spawn::SpawnRequest;
use crate::tty::{ConsoleSocket, TtyError};

use super::{ContainerError, Containers, Process, StreamIds};

impl Containers {
    /// Watches `pid` and publishes its exit status.
    pub(super) fn watch_exit(&self, pid: i32) -> watch::Receiver<Option<i32>> {
        let (tx, rx) = watch::channel(None);
        let reaped = self.reaper.watch(pid);
        tokio::spawn(async move {
            if let Ok(status) = reaped.await {
                let _ = tx.send(Some(status));
            }
        });
        rx
    }

    /// Creates the process of `req` with stdio on `ids`, a terminal when `terminal`.
    pub(super) async fn spawn_process(
        &self,
        id: &str,
        terminal: bool,
        ids: &StreamIds,
        make_req: impl FnOnce(Option<PathBuf>) -> SpawnRequest,
    ) -> Result<Process, ContainerError> {
        if terminal {
            self.streams
                .check_terminal_ids(&ids.stdin, &ids.stdout, &ids.stderr)?;
            let n = self
                .console_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let console_name = format!("c{n}.sock");
            let sock =
                ConsoleSocket::bind(&self.consoles.join(&console_name)).map_err(|source| {
                    ContainerError::Tty {
                        id: id.to_string(),
                        source,
                    }
                })?;
            let req = make_req(Some(sock.path().to_path_buf()));
            let (child, _) = self.streams.pipes("", "", "")?;
            let receive = tokio::spawn(sock.receive());
            let pid = match self.spawner.spawn(&req, child).await {
                Ok(pid) => pid,
                Err(source) => {
                    receive.abort();
                    let _ = std::fs::remove_file(self.consoles.join(&console_name));
                    return Err(ContainerError::Spawn {
                        id: id.to_string(),
                        source,
                    });
                }
            };
            let exit = self.watch_exit(pid);
            let master = receive
                .await
                .map_err(|e| ContainerError::Tty {
                    id: id.to_string(),
                    source: TtyError::Receive {
                        path: self.consoles.join(&console_name),
                        reason: e.to_string(),
                    },
                })?
                .map_err(|source| ContainerError::Tty {
                    id: id.to_string(),
                    source,
                });
            let master = match master {
                Ok(m) => m,
                Err(e) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(e);
                }
            };
            let stdio = self.streams.terminal(&master, &ids.stdin, &ids.stdout)?;
            Ok(Process {
                pid,
                exit,
                stdio,
                pty: Some(master),
            })
        } else {
            let (child, stdio) = self.streams.pipes(&ids.stdin, &ids.stdout, &ids.stderr)?;
            let req = make_req(None);
            match self.spawner.spawn(&req, child).await {
                Ok(pid) => Ok(Process {
                    pid,
                    exit: self.watch_exit(pid),
                    stdio,
                    pty: None,
                }),
                Err(source) => {
                    self.streams.release(&stdio.ids);
                    Err(ContainerError::Spawn {
                        id: id.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs a libcontainer operation that waits for child processes (hooks) in the
    /// single-threaded helper, where no reaper races it.
    pub(super) async fn in_helper(
        &self,
        id: &str,
        req: SpawnRequest,
    ) -> Result<(), ContainerError> {
        let (child, _) = self.streams.pipes("", "", "")?;
        self.spawner
            .spawn(&req, child)
            .await
            .map(|_| ())
            .map_err(|source| ContainerError::Spawn {
                id: id.to_string(),
                source,
            })
    }
}
