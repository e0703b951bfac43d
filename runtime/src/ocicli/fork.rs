//! Forking a long-lived child (the holder, an exec relay) that tells its parent when it is
//! ready, so that `create` and `exec --detach` return only once the container or process
//! exists, with the child's error when it could not be made.
//!
//! The fork happens before this process starts any thread (no tokio runtime yet), which is
//! what makes forking sound; the child builds its own runtime.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use super::error::OciCliError;

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Ready(Option<std::fs::File>);

impl Ready {
    /// Tells the parent the child is ready (the parent then returns success).
    pub fn ok(&mut self) {
        self.send("ok");
    }

    /// Tells the parent why the child failed (the parent prints it and fails).
    pub fn fail(&mut self, message: &str) {
        self.send(&format!("error: {message}"));
    }

    /// Whether the parent was told already.
    pub fn sent(&self) -> bool {
        self.0.is_none()
    }

    fn send(&mut self, text: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Forks. The child starts a new session, runs `child` (which gets the readiness pipe and
/// returns the exit status) and exits; the parent waits until the child reports ready and
/// returns its pid, or returns the child's error after reaping it.
pub fn spawn(child: impl FnOnce(Ready) -> i32) -> Result<i32, OciCliError> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| OciCliError::Holder(format!("pipe: {e}")))?;
    // SAFETY: no other thread runs in this process (see the module docs); the child only
    // returns through std::process::exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| OciCliError::Holder(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            let ready = Ready(Some(std::fs::File::from(w)));
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(ready)))
                .unwrap_or(1);
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut text = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut text);
            if text == "ok" {
                return Ok(child.as_raw());
            }
            let status = nix::sys::wait::waitpid(child, None);
            Err(OciCliError::Holder(match text.strip_prefix("error: ") {
                Some(msg) => msg.to_string(),
                None => {
                    format!("the holder process exited before the container was ready ({status:?})")
                }
            }))
        }
    }
}

/// Writes `pid` to `path` atomically (a temporary file in the same directory, renamed), as
/// runc does, so a caller polling the file never reads a partial pid.
pub fn write_pid_file(path: &std::path::Path, pid: i32) -> Result<(), OciCliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, pid.to_string()).map_err(OciCliError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(OciCliError::io(path))
}

/// Points fds 0–2 at `/dev/null`. A relay whose process has a terminal talks to the
/// caller through the console socket's master only, and must not keep the pipes the caller
/// gave `create`/`exec` as stdio: containerd's runc shim reads those to their end (it
/// collects runc's output), so a holder keeping them would make `create` hang.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
