//! The `ember-vmm` process of a microVM sandbox: spawned per sandbox, driven over its
//! control channel ([`ember_vmm::ControlChannel`]), watched until it ends.
//!
//! The process is spawned by a dedicated thread that lives exactly as long as it: the
//! child's `PR_SET_PDEATHSIG(SIGKILL)` fires when the *thread* that forked it ends, so a
//! tokio blocking thread (which ends when idle) would kill the VMM; this thread forks,
//! then waits for the child and publishes how it ended. The VMM is killed if the shim
//! dies, and `ember cleanup` kills a survivor through the sandbox's state.
//!
//! Each request carries an id (increasing from 1) that its reply carries back; a reply
//! with another id (to a request the runtime gave up waiting for) is discarded, so it is
//! never taken for the answer to the next one.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_vmm::{
    ControlChannel, ControlChannelError, ControlReply, ControlReplyMessage, ControlRequest,
    ControlRequestMessage, ExitReason,
};
use tokio::sync::watch;

/// The fd number the VMM finds its control channel on.
pub const CONTROL_FD: i32 = 3;
/// How long the runtime waits for an answer to a request other than `Start`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the VMM process and its channel.
#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    /// The binary was not found.
    #[error("ember-vmm not found (looked at $EMBER_VMM, next to this program, and on PATH); install it with `make install`")]
    NotFound,
    /// The process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The control channel failed (the VMM died, or answered nothing in time).
    #[error("the VMM's control channel: {0}")]
    Channel(String),
    /// The VMM refused the request.
    #[error("{message}")]
    Refused {
        /// What it said.
        message: String,
        /// Whether the request was at fault.
        bad_input: bool,
    },
    /// The VMM answered something else than the request's answer.
    #[error("the VMM answered {0} unexpectedly")]
    Unexpected(String),
}

/// The VMM binary: `$EMBER_VMM`, else `ember-vmm` next to the running executable, else on
/// `PATH`.
pub fn vmm_binary() -> Option<PathBuf> {
    super::companion_binary("EMBER_VMM", "ember-vmm")
}

/// The runtime's end of the channel and what it learnt from it.
struct Control {
    channel: ControlChannel,
    /// `Exited`'s reason, once read (by a request or after the process ended).
    exited: Option<ExitReason>,
    /// The id of the last request sent (0: none yet).
    last_id: u64,
}

/// How the VMM process ended: `Exited`'s reason, or its wait status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmEnd {
    /// The VMM said why the VM ended.
    Exited(ExitReason),
    /// The VMM died without saying: its wait status, described.
    Died(String),
}

/// A running (or ended) `ember-vmm` process.
pub struct VmmProcess {
    pid: i32,
    pidfd: OwnedFd,
    control: Arc<Mutex<Control>>,
    end: watch::Receiver<Option<VmmEnd>>,
}

impl VmmProcess {
    /// Spawn `binary --control-fd 3` from a thread of its own named `thread_name`, its
    /// messages (stderr) relayed into this process's log with `sandbox=<sandbox>`
    /// ([`relay_log`]). Returns once the process exists; it waits for `Start`.
    pub fn spawn(
        binary: PathBuf,
        sandbox: &str,
        log_level: &str,
        thread_name: String,
    ) -> Result<VmmProcess, VmmProcessError> {
        let sandbox = sandbox.to_string();
        let (ours, theirs) =
            ControlChannel::pair().map_err(|e| VmmProcessError::Channel(e.to_string()))?;
        ours.set_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| VmmProcessError::Channel(e.to_string()))?;
        let control = Arc::new(Mutex::new(Control {
            channel: ours,
            exited: None,
            last_id: 0,
        }));
        let (end_tx, end_rx) = watch::channel(None);
        let (spawned_tx, spawned_rx) = std::sync::mpsc::sync_channel(1);
        let args: Vec<OsString> = vec![
            "--control-fd".into(),
            CONTROL_FD.to_string().into(),
            "--log-level".into(),
            log_level.into(),
        ];
        let watcher = control.clone();
        let shown = binary.clone();
        let thread_binary = binary.clone();
        let thread_err = move |source| VmmProcessError::Spawn {
            binary: thread_binary,
            source,
        };
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let child_end = theirs.as_fd().as_raw_fd();
                // The VMM is the init of a PID namespace of its own (it then mounts that
                // namespace's procfs: `ember_vmm::jail`). The call applies to this thread's
                // children only, and this thread forks nothing but this VMM.
                if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
                    let _ = spawned_tx.send(Err(std::io::Error::other(format!(
                        "unshare(CLONE_NEWPID) for the VMM's PID namespace: {e}"
                    ))));
                    return;
                }
                // In its own PID namespace the child's getppid() is 0 whoever its parent
                // is: whether the runtime still lives is asked of a pidfd of it instead.
                // SAFETY: getpid and pidfd_open in the parent, before the fork.
                let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
                if parent < 0 {
                    let _ = spawned_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                // SAFETY: a fresh fd we own; closed when this thread ends.
                let parent = unsafe { OwnedFd::from_raw_fd(parent as i32) };
                let parent_fd = parent.as_raw_fd();
                let mut cmd = Command::new(&binary);
                cmd.args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                // SAFETY: between fork and exec the closure makes only async-signal-safe
                // system calls (dup2, fcntl, prctl, poll).
                unsafe {
                    cmd.pre_exec(move || {
                        if child_end == CONTROL_FD {
                            let flags = libc::fcntl(CONTROL_FD, libc::F_GETFD);
                            libc::fcntl(CONTROL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                        } else if libc::dup2(child_end, CONTROL_FD) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died before the prctl: then nothing would
                        // ever kill this VMM. Its pidfd is readable once it has exited.
                        let mut p = libc::pollfd {
                            fd: parent_fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        if libc::poll(&mut p, 1, 0) != 0 {
                            return Err(std::io::Error::other("the runtime exited"));
                        }
                        Ok(())
                    });
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = spawned_tx.send(Err(e));
                        return;
                    }
                };
                drop(theirs);
                drop(parent);
                if let Some(stderr) = child.stderr.take() {
                    let name = format!("vmm-log-{sandbox}");
                    let sandbox = sandbox.clone();
                    // Without the relay the VMM's messages are lost, nothing else.
                    let _ = std::thread::Builder::new()
                        .name(name)
                        .spawn(move || relay_log(stderr, &sandbox));
                }
                let pid = child.id() as i32;
                // The pidfd is taken before this thread reaps the child, so it can never
                // name another process.
                // SAFETY: pidfd_open returns a new fd or -1.
                let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                let pidfd = if pidfd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: a fresh fd we own.
                    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
                };
                let ok = pidfd.is_ok();
                let _ = spawned_tx.send(pidfd.map(|fd| (pid, fd)));
                if !ok {
                    let _ = child.kill();
                }
                let status = child.wait();
                let end = {
                    let mut c = lock(&watcher);
                    if c.exited.is_none() {
                        // The VMM's last message stays queued after it exits.
                        let _ = c.channel.set_nonblocking(true);
                        while let Ok(r) = c.channel.recv::<ControlReplyMessage>() {
                            if let Ok(ControlReplyMessage {
                                reply: ControlReply::Exited { reason },
                                ..
                            }) = r.message
                            {
                                c.exited = Some(reason);
                            }
                        }
                    }
                    match c.exited {
                        Some(reason) => VmmEnd::Exited(reason),
                        None => VmmEnd::Died(match status {
                            Ok(s) => describe_status(s),
                            Err(e) => format!("cannot wait for it: {e}"),
                        }),
                    }
                };
                end_tx.send_replace(Some(end));
            })
            .map_err(thread_err)?;
        let (pid, pidfd) = spawned_rx
            .recv()
            .map_err(|_| VmmProcessError::Channel("the VMM's thread ended".into()))?
            .map_err(|source| VmmProcessError::Spawn {
                binary: shown,
                source,
            })?;
        Ok(VmmProcess {
            pid,
            pidfd,
            control,
            end: end_rx,
        })
    }

    /// The VMM's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How the VMM ended, once it has (and been reaped).
    pub fn end(&self) -> watch::Receiver<Option<VmmEnd>> {
        self.end.clone()
    }

    /// Send `request` (with `fd`) and wait for its answer, up to `timeout`
    /// ([`REPLY_TIMEOUT`] if `None`). Blocking.
    pub fn request(
        &self,
        request: &ControlRequest,
        fd: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> Result<ControlReply, VmmProcessError> {
        let mut c = lock(&self.control);
        if let Some(reason) = c.exited {
            return Err(VmmProcessError::Channel(format!(
                "the VM has ended ({reason:?})"
            )));
        }
        c.last_id += 1;
        let id = c.last_id;
        let message = ControlRequestMessage {
            id,
            request: request.clone(),
        };
        let chan = |e: ControlChannelError| VmmProcessError::Channel(e.to_string());
        c.channel.send(&message, fd).map_err(chan)?;
        let deadline = Instant::now() + timeout.unwrap_or(REPLY_TIMEOUT);
        let Control {
            channel, exited, ..
        } = &mut *c;
        let reply = await_reply(channel, id, deadline, exited);
        c.channel.set_timeout(Some(REPLY_TIMEOUT)).map_err(chan)?;
        match reply? {
            ControlReply::Error { message, bad_input } => {
                Err(VmmProcessError::Refused { message, bad_input })
            }
            other => Ok(other),
        }
    }

    /// SIGKILL the VMM (through its pidfd: never another process), if it still runs.
    pub fn kill(&self) {
        // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        // Never leave a VMM behind a dropped backend.
        if self.end.borrow().is_none() {
            self.kill();
        }
    }
}

/// The reply to request `id` on `channel`, read by `deadline`: replies with another id
/// (or none, but for `Exited`) are discarded, with a debug message; `Exited` is recorded
/// in `exited` and ends the wait. Leaves the channel's receive timeout changed.
fn await_reply(
    channel: &mut ControlChannel,
    id: u64,
    deadline: Instant,
    exited: &mut Option<ExitReason>,
) -> Result<ControlReply, VmmProcessError> {
    let chan = |e: ControlChannelError| VmmProcessError::Channel(e.to_string());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout would wait forever.
        if left < Duration::from_millis(1) {
            return Err(chan(ControlChannelError::Timeout));
        }
        channel.set_timeout(Some(left)).map_err(chan)?;
        let message = channel
            .recv::<ControlReplyMessage>()
            .map_err(chan)?
            .message
            .map_err(|e| VmmProcessError::Channel(format!("the VMM's answer: {e}")))?;
        match message {
            ControlReplyMessage {
                reply: ControlReply::Exited { reason },
                ..
            } => {
                *exited = Some(reason);
                return Err(VmmProcessError::Channel(format!(
                    "the VM has ended ({reason:?})"
                )));
            }
            ControlReplyMessage {
                id: Some(got),
                reply,
            } if got == id => return Ok(reply),
            stale => log::debug!(
                "vmm control: discarded a reply to request {:?} while waiting for request {id}'s: {:?}",
                stale.id,
                stale.reply
            ),
        }
    }
}

fn lock(c: &Mutex<Control>) -> MutexGuard<'_, Control> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest VMM message relayed; the rest of a longer line is dropped.
pub const MAX_LOG_LINE: usize = 4096;

/// Relays the VMM's messages (env_logger lines, `[LEVEL ] text`) into this process's log at
/// their level, as `sandbox=<id>: vmm: text`, until the VMM closes its stderr. The VMM's
/// guest-triggered messages are rate limited there; here each line is bounded
/// ([`MAX_LOG_LINE`]), so nothing a guest does makes the relay hold more than one line.
/// Its messages thus reach containerd's log with the shim's, not a file that would grow
/// in the state directory.
pub fn relay_log(stderr: impl std::io::Read, sandbox: &str) {
    relay_lines(stderr, |level, message| {
        log::log!(level, "sandbox={sandbox}: vmm: {message}");
    });
}

/// Reads `input` line by line, each bounded by [`MAX_LOG_LINE`] (a longer one is cut and
/// marked `[cut]`, its rest skipped), and hands each to `emit` with its level.
fn relay_lines(input: impl std::io::Read, mut emit: impl FnMut(log::Level, &str)) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(input);
    let mut buf = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let whole = buf.ends_with(b"\n");
        if cut {
            // The rest of a line already cut.
            cut = !whole;
            continue;
        }
        cut = !whole && buf.len() >= MAX_LOG_LINE;
        let text = String::from_utf8_lossy(&buf);
        let (level, message) = vmm_line(text.trim_end());
        if cut {
            emit(level, &format!("{message} [cut]"));
        } else {
            emit(level, message);
        }
    }
}

/// The level and text of one of the VMM's lines (`[WARN ] text`); lines without a level
/// are info.
fn vmm_line(line: &str) -> (log::Level, &str) {
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((level, text)) = rest.split_once(']') {
            if let Ok(level) = level.trim().parse::<log::Level>() {
                return (level, text.trim_start());
            }
        }
    }
    (log::Level::Info, line)
}

/// A VMM's wait status in words; SIGSYS names the seccomp filter.
pub fn describe_status(s: std::process::ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("the VMM exited with status {code} without saying why"),
        (_, Some(libc::SIGSYS)) => {
            "the VMM was killed by SIGSYS: a system call outside its seccomp filter (the kernel's `audit: type=1326` line in dmesg names it)".into()
        }
        (_, Some(libc::SIGKILL)) => "the VMM was killed by SIGKILL".into(),
        (_, Some(sig)) => format!("the VMM was killed by signal {sig}"),
        _ => format!("the VMM ended: {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_lines_keep_their_level_and_long_ones_are_cut() {
        assert_eq!(
            vmm_line("[WARN ] virtio-fs: bad request"),
            (log::Level::Warn, "virtio-fs: bad request")
        );
        assert_eq!(vmm_line("[ERROR] x"), (log::Level::Error, "x"));
        assert_eq!(vmm_line("no level"), (log::Level::Info, "no level"));
        assert_eq!(vmm_line("[nonsense] y"), (log::Level::Info, "[nonsense] y"));
        // A line far over the bound, then a normal one, then one without its newline.
        let mut input = vec![b'a'; MAX_LOG_LINE * 4];
        input.extend_from_slice(b"\n[ERROR] next\nlast");
        let mut got = Vec::new();
        relay_lines(&input[..], |l, m| got.push((l, m.to_string())));
        assert_eq!(
            got.len(),
            3,
            "{:?}",
            got.iter().map(|g| g.1.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0].1, format!("{} [cut]", "a".repeat(MAX_LOG_LINE)));
        assert_eq!(got[1], (log::Level::Error, "next".to_string()));
        assert_eq!(got[2], (log::Level::Info, "last".to_string()));
    }

    #[test]
    fn replies_to_other_requests_are_skipped_and_exited_ends_the_wait() {
        let (mut ours, theirs) = ControlChannel::pair().unwrap();
        let reply = |id, reply| ControlReplyMessage { id, reply };
        let error = ControlReply::Error {
            message: "late".into(),
            bad_input: true,
        };
        // A late answer to request 1 and an id-less error come before request 2's.
        theirs.send(&reply(Some(1), error.clone()), None).unwrap();
        theirs.send(&reply(None, error), None).unwrap();
        theirs
            .send(&reply(Some(2), ControlReply::Stopping), None)
            .unwrap();
        let soon = || Instant::now() + Duration::from_secs(5);
        let mut exited = None;
        assert_eq!(
            await_reply(&mut ours, 2, soon(), &mut exited).unwrap(),
            ControlReply::Stopping
        );
        // Only a stale reply: the wait times out.
        theirs
            .send(&reply(Some(2), ControlReply::Stopping), None)
            .unwrap();
        let start = Instant::now();
        let e = await_reply(
            &mut ours,
            3,
            Instant::now() + Duration::from_millis(100),
            &mut exited,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("no message from the peer in time"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        // `Exited` has no id and ends any wait.
        let end = ControlReply::Exited {
            reason: ExitReason::PowerOff,
        };
        theirs.send(&reply(None, end), None).unwrap();
        let e = await_reply(&mut ours, 4, soon(), &mut exited).unwrap_err();
        assert!(e.to_string().contains("the VM has ended (PowerOff)"), "{e}");
        assert_eq!(exited, Some(ExitReason::PowerOff));
    }

    #[test]
    fn wait_statuses_are_described() {
        let s = |raw| std::process::ExitStatus::from_raw(raw);
        assert!(describe_status(s(libc::SIGSYS)).contains("seccomp filter"));
        assert_eq!(
            describe_status(s(libc::SIGKILL)),
            "the VMM was killed by SIGKILL"
        );
        assert!(describe_status(s(2 << 8)).contains("status 2"));
    }
}
