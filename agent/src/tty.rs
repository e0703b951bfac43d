//! Terminals: receiving a process's pseudo-terminal master over the console socket that
//! libcontainer connects to, and resizing it.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::net::UnixListener;

/// How long the process may take to hand over its terminal.
const MASTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors around a process terminal.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// The console socket could not be bound.
    #[error("cannot listen on console socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process never sent its terminal.
    #[error("the process did not send its terminal on {0} in time")]
    Timeout(PathBuf),
    /// Receiving the fd failed.
    #[error("cannot receive the terminal master on {path}: {reason}")]
    Receive {
        /// Socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// TIOCSWINSZ failed.
    #[error("cannot resize the terminal: {0}")]
    Resize(std::io::Error),
}

/// A bound console socket waiting for one terminal master.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds `path` (removing a stale socket first).
    pub fn bind(path: &Path) -> Result<ConsoleSocket, TtyError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| TtyError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// The socket path to give libcontainer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the process's connection and returns the master fd it sends.
    pub async fn receive(self) -> Result<OwnedFd, TtyError> {
        let path = self.path.clone();
        let result = tokio::time::timeout(MASTER_TIMEOUT, async {
            let (conn, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| TtyError::Receive {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let std_conn = conn.into_std().map_err(|e| TtyError::Receive {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            std_conn
                .set_nonblocking(false)
                .map_err(|e| TtyError::Receive {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let p = path.clone();
            tokio::task::spawn_blocking(move || recv_fd(&std_conn, &p))
                .await
                .map_err(|e| TtyError::Receive {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
        })
        .await;
        let _ = std::fs::remove_file(&self.path);
        result.map_err(|_| TtyError::Timeout(self.path.clone()))?
    }
}

fn recv_fd(conn: &std::os::unix::net::UnixStream, path: &Path) -> Result<OwnedFd, TtyError> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| TtyError::Receive {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for c in msg.cmsgs().map_err(|e| TtyError::Receive {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS delivered a new fd that nobody else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(TtyError::Receive {
        path: path.to_path_buf(),
        reason: "the message carried no file descriptor".into(),
    })
}

/// Sets the terminal size of `master`.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), TtyError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(TtyError::Resize(std::io::Error::last_os_error()));
    }
    Ok(())
}
