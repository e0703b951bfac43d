//! Child reaping: the agent is PID 1 in the guest, or a child subreaper on the host, so every
//! container process (re-parented to it when the spawn helper exits) and every orphan ends
//! up as its child. One task reaps them all on SIGCHLD and hands each exit status to whoever
//! registered interest in that pid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Errors starting the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// prctl(PR_SET_CHILD_SUBREAPER) failed.
    #[error("cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(std::io::Error),
    /// The SIGCHLD handler could not be installed.
    #[error("cannot install the SIGCHLD handler: {0}")]
    Signal(std::io::Error),
}

/// The exit status as a shell reports it: the exit code, or 128 + the signal number.
pub fn exit_status(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// How long an exit nobody asked for is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    /// Who waits for which pid.
    waiters: HashMap<i32, oneshot::Sender<i32>>,
    /// Exits nobody had registered for yet (the process ended before its pid was known),
    /// with the time they were reaped; entries expire after [`UNCLAIMED_TTL`] so that a
    /// reused pid never inherits an orphan's status.
    unclaimed: HashMap<i32, (i32, Instant)>,
}

/// Hands out exit statuses of the agent's children.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Makes the agent a subreaper (unless it is PID 1) and starts the reaping task.
    pub fn start() -> Result<Reaper, ReaperError> {
        if std::process::id() != 1 {
            // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(ReaperError::Subreaper(std::io::Error::last_os_error()));
            }
        }
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Reaper::default();
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Reaps every child that has exited, without blocking.
    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(ws) => {
                    let (Some(pid), Some(status)) = (ws.pid(), exit_status(ws)) else {
                        continue;
                    };
                    let mut inner = self.inner.lock().expect("reaper lock");
                    match inner.waiters.remove(&pid.as_raw()) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        None => {
                            let now = Instant::now();
                            inner
                                .unclaimed
                                .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
                            inner.unclaimed.insert(pid.as_raw(), (status, now));
                        }
                    }
                }
            }
        }
    }

    /// Registers interest in `pid`'s exit. If it has already been reaped the receiver is
    /// ready at once.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().expect("reaper lock");
        match inner.unclaimed.remove(&pid) {
            Some((status, _)) => {
                let _ = tx.send(status);
            }
            None => {
                inner.waiters.insert(pid, tx);
            }
        }
        rx
    }
}
