//! An `ember-vmm` process driven over its control channel, as the runtime drives it (fd 3,
//! `--control-fd 3`), for tests and benchmarks of the VMM binary itself. The runtime's own
//! spawn adds the PID namespace and the parent-death watch; these callers need neither.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ember_vmm::control::{Channel, Reply, ReplyMessage, Request, RequestMessage};

/// Starts `bin` (the `ember-vmm` binary) with its control channel on fd 3 and logging at
/// `log_level`; returns the process and this side of the channel.
pub fn spawn(bin: &Path, log_level: &str) -> std::io::Result<(Child, Channel)> {
    let (ours, theirs) = Channel::pair().map_err(std::io::Error::other)?;
    let fd = theirs.as_fd().as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.args(["--control-fd", "3", "--log-level", log_level])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 only, between fork and exec; `theirs` stays open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// Sends `request` with `id` and returns the reply, which must carry that id.
pub fn ask(channel: &mut Channel, id: u64, request: Request) -> Reply {
    channel
        .send(&RequestMessage { id, request }, None)
        .expect("send a control request");
    let reply: ReplyMessage = channel.recv().expect("an answer").message.expect("a reply");
    assert_eq!(reply.id, Some(id), "{reply:?}");
    reply.reply
}
