//! The VMM's side of the control channel: [`run`] is a confined `ember-vmm`'s whole life
//! (`ember-vmm --control-fd N`), [`open`] reads a request's id, [`handle`] answers one
//! request after `Start`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use super::channel::{Channel, ChannelError, MessageError};
use super::protocol::{Reply, ReplyMessage, Request, RequestMessage, SlotInfo};
use crate::devices::legacy::power::{ExitLatch, ExitReason};
use crate::devices::virtio::block::BlockSlot;
use crate::jail::{self, JailConfig};
use crate::seccomp::{restrict_capabilities, Filter, ThreadKind};
use crate::vcpu::Pauser;
use crate::vm::Vm;
use crate::VmConfig;

/// How a controlled VMM ended: what it tells the runtime last and its exit status.
#[derive(Debug)]
pub enum Outcome {
    /// The VM ran and ended.
    Exited(ExitReason),
    /// The VM never ran: the start failed (bad input or not), already answered.
    StartFailed {
        /// Whether the runtime's request was at fault.
        bad_input: bool,
    },
    /// The channel failed; nothing can be answered.
    Channel(ChannelError),
}

/// Whether the request loop goes on after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Serve the next request.
    Continue,
    /// The VM is to stop.
    Stop,
}

/// A received message's request id and request (or why the request is refused, to be
/// answered with that id); `Err` is the answer, without an id, to a message whose `id`
/// cannot be read (the runtime gives every request one).
pub fn open(
    message: Result<serde_json::Value, MessageError>,
) -> Result<(u64, Result<Request, MessageError>), ReplyMessage> {
    let unanswerable = |message: String| ReplyMessage {
        id: None,
        reply: Reply::error(message, true),
    };
    let value = message.map_err(|e| unanswerable(e.to_string()))?;
    let id = match value.get("id") {
        Some(id) => id.as_u64().ok_or_else(|| {
            unanswerable(format!(
                "the request's `id` is {id}, not an unsigned 64-bit integer; the request is refused"
            ))
        })?,
        None => {
            return Err(unanswerable(
                "the request has no `id` (an unsigned 64-bit integer its reply carries back); the request is refused"
                    .into(),
            ))
        }
    };
    let request = serde_json::from_value::<RequestMessage>(value)
        .map(|m| m.request)
        .map_err(|e| MessageError::Malformed(e.to_string()));
    Ok((id, request))
}

/// Answer one request after `Start`, with the fd that came with it. Never panics on any
/// input: a bad request is an `Error` answer.
pub fn handle(
    slots: &[BlockSlot],
    pauser: &Pauser,
    request: Result<Request, MessageError>,
    fd: Option<OwnedFd>,
) -> (Reply, Next) {
    let request = match request {
        Ok(r) => r,
        Err(e) => return (Reply::error(e, true), Next::Continue),
    };
    let slot_of = |slot: usize| {
        slots.get(slot).ok_or_else(|| {
            Reply::error(
                format!(
                    "no virtio-blk slot {slot}: the VM has {} (0 to {})",
                    slots.len(),
                    slots.len().saturating_sub(1)
                ),
                true,
            )
        })
    };
    let reply = match request {
        Request::Start { .. } => Reply::error("the VM is already started", true),
        Request::Attach {
            slot,
            read_only,
            path,
        } => match (slot_of(slot), fd) {
            (Err(e), _) => e,
            (Ok(_), None) => Reply::error(
                format!(
                    "attach {}: the disk's fd did not come with the request",
                    path.display()
                ),
                true,
            ),
            (Ok(s), Some(fd)) => match s.attach_file(std::fs::File::from(fd), &path, read_only) {
                Ok(a) => Reply::Attached {
                    slot,
                    capacity: a.capacity,
                },
                Err(e) => Reply::error(e, true),
            },
        },
        Request::Detach { slot } if fd.is_none() => match slot_of(slot) {
            Ok(s) => Reply::Detached {
                slot,
                held: s.detach().is_some(),
            },
            Err(e) => e,
        },
        Request::Stop if fd.is_none() => return (Reply::Stopping, Next::Stop),
        Request::Pause if fd.is_none() => match pauser.pause() {
            Ok(()) => Reply::Paused,
            Err(e) => Reply::error(e, false),
        },
        Request::Resume if fd.is_none() => {
            pauser.resume();
            Reply::Resumed
        }
        Request::Detach { .. } | Request::Stop | Request::Pause | Request::Resume => {
            Reply::error("only Attach carries an fd; the request is refused", true)
        }
    };
    (reply, Next::Continue)
}

/// Serve requests until the VM ends or the runtime asks it to stop (or goes away); the
/// exit latch says why.
pub fn serve(
    channel: &mut Channel,
    slots: &[BlockSlot],
    pauser: &Pauser,
    latch: &ExitLatch,
) -> Result<ExitReason, ChannelError> {
    loop {
        if let Some(reason) = latch.reason() {
            return Ok(reason);
        }
        let mut fds = [
            libc::pollfd {
                fd: channel.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: latch.event().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            latch.trigger(ExitReason::Error);
            return Err(ChannelError::Io {
                what: "poll",
                source: e,
            });
        }
        if fds[0].revents == 0 {
            continue;
        }
        let received = match channel.recv::<serde_json::Value>() {
            Ok(r) => r,
            Err(e) => {
                // The runtime is gone: nobody is left to run the VM for.
                latch.trigger(ExitReason::Stopped);
                return Err(e);
            }
        };
        let answer = match open(received.message) {
            Ok((id, request)) => {
                let (reply, next) = handle(slots, pauser, request, received.fd);
                if next == Next::Stop {
                    latch.trigger(ExitReason::Stopped);
                }
                ReplyMessage {
                    id: Some(id),
                    reply,
                }
            }
            Err(answer) => answer,
        };
        if let Err(e) = channel.send(&answer, None) {
            latch.trigger(ExitReason::Stopped);
            return Err(e);
        }
    }
}

/// A controlled VMM's life: take `Start`, build the VM, jail the process, start the
/// VM, answer `Ready`, serve requests, and send `Exited`. The caller exits next (with
/// [`Outcome`]'s status): the VM's threads are not joined, the process's end ends them.
pub fn run(channel: &mut Channel) -> Outcome {
    let received = match channel.recv::<serde_json::Value>() {
        Ok(r) => r,
        Err(e) => return Outcome::Channel(e),
    };
    drop(received.fd);
    let (id, request) = match open(received.message) {
        Ok(opened) => opened,
        Err(answer) => {
            log::error!("control: cannot start: {:?}", answer.reply);
            return match channel.send(&answer, None) {
                Ok(()) => Outcome::StartFailed { bad_input: true },
                Err(e) => Outcome::Channel(e),
            };
        }
    };
    let (mut config, jail_config) = match request {
        Ok(Request::Start { config, jail }) => (config, jail),
        Ok(other) => {
            return refuse(
                channel,
                id,
                format!("the first request must be Start, not {other:?}"),
                true,
            )
        }
        Err(e) => return refuse(channel, id, e, true),
    };
    match start(&mut config, &jail_config) {
        Ok(vm) => {
            let slots: Vec<SlotInfo> = vm
                .block_slots()
                .iter()
                .map(|s| SlotInfo {
                    index: s.index(),
                    mmio_addr: s.mmio_addr(),
                })
                .collect();
            let ready = Reply::Ready {
                cmdline: vm.cmdline().to_string(),
                slots,
            };
            let latch = vm.exit_latch();
            let ready = ReplyMessage {
                id: Some(id),
                reply: ready,
            };
            if let Err(e) = channel.send(&ready, None) {
                latch.trigger(ExitReason::Stopped);
                return Outcome::Channel(e);
            }
            let reason = match serve(channel, vm.block_slots(), &vm.pauser(), &latch) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("control: {e}; stopping the VM");
                    return Outcome::Channel(e);
                }
            };
            // The VM is not dropped: its devices would clean up on this thread (a vsock
            // device removes its socket file) with calls its filter forbids. The process
            // exits next, which ends every thread; the runtime removes the files.
            std::mem::forget(vm);
            let exited = ReplyMessage {
                id: None,
                reply: Reply::Exited { reason },
            };
            match channel.send(&exited, None) {
                Ok(()) => Outcome::Exited(reason),
                Err(e) => Outcome::Channel(e),
            }
        }
        Err((message, bad_input)) => refuse(channel, id, message, bad_input),
    }
}

/// Answer `Start` (request `id`) with an error.
fn refuse(channel: &Channel, id: u64, message: impl std::fmt::Display, bad_input: bool) -> Outcome {
    log::error!("control: cannot start: {message}");
    let answer = ReplyMessage {
        id: Some(id),
        reply: Reply::error(message, bad_input),
    };
    match channel.send(&answer, None) {
        Ok(()) => Outcome::StartFailed { bad_input },
        Err(e) => Outcome::Channel(e),
    }
}

/// Build, jail, start; on failure the message for the runtime and whether it was bad input.
fn start(config: &mut VmConfig, jail_config: &JailConfig) -> Result<Vm, (String, bool)> {
    // The control thread's filter is compiled first: nothing is built if it cannot be.
    let control_filter = if config.seccomp {
        Some(Filter::new(ThreadKind::Control).map_err(|e| (e.to_string(), false))?)
    } else {
        None
    };
    // The vsock socket lives in the jail's root: its path is made relative to it, and
    // the working directory is the root both now and inside the jail, so that
    // guest-initiated connections (`<path>_<port>`) find their sockets there.
    if let Some(v) = &mut config.vsock {
        let rel = jail::inside(&jail_config.root, &v.path).ok_or_else(|| {
            (
                format!(
                    "the vsock socket {} must be inside the jail's root {}",
                    v.path.display(),
                    jail_config.root.display()
                ),
                true,
            )
        })?;
        v.path = rel;
    }
    // The shared folders too, and for a second reason: fuse-backend-rs opens its root
    // again, by path, at the guest's FUSE_INIT, which comes after the jail. Relative to
    // the working directory, the same path names the host's folder now and the jail's
    // copy of it then, which the host's later mounts below it (the containers' rootfs)
    // reach by propagation (see `jail::enter`).
    for f in &mut config.fs {
        f.dir = jail::inside(&jail_config.root, &f.dir).ok_or_else(|| {
            (
                format!(
                    "the shared folder {} must be inside the jail's root {}",
                    f.dir.display(),
                    jail_config.root.display()
                ),
                true,
            )
        })?;
    }
    // A procfs of the VMM's own PID namespace, before anything opens /proc.
    let mut netns: Vec<&mut PathBuf> = config
        .net
        .iter_mut()
        .filter_map(|n| n.netns.as_mut())
        .collect();
    let (own_proc, _netns_files) =
        jail::own_proc(&mut netns).map_err(|e| (e.to_string(), false))?;
    if !own_proc {
        log::warn!(
            "control: not the init of a PID namespace of its own: the host's /proc stays in view"
        );
    }
    std::env::set_current_dir(&jail_config.root).map_err(|e| {
        (
            format!("jail root {}: {e}", jail_config.root.display()),
            true,
        )
    })?;
    let mut vm = Vm::new(config).map_err(|e| (e.to_string(), e.is_bad_input()))?;
    jail::enter(jail_config).map_err(|e| (e.to_string(), false))?;
    if !vm.confine_thread_capabilities(jail::device_capabilities()) {
        log::warn!("control: seccomp is off: the VM's threads keep the jail's capabilities");
    }
    vm.start().map_err(|e| (e.to_string(), e.is_bad_input()))?;
    // This thread serves the channel: no capabilities, its own filter.
    restrict_capabilities(&caps::CapsHashSet::new())
        .map_err(|e| (format!("control thread capabilities: {e}"), false))?;
    if let Some(f) = control_filter {
        f.apply().map_err(|e| (e.to_string(), false))?;
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pauser of no vCPUs: pausing completes at once.
    fn no_vcpus() -> Pauser {
        Pauser::new(std::sync::Arc::default(), Vec::new())
    }

    fn slots(n: usize) -> Vec<BlockSlot> {
        (0..n)
            .map(|i| BlockSlot::detached(i, 0xd000_0000 + 0x1000 * i as u64).unwrap())
            .collect()
    }

    fn disk(bytes: usize) -> (tempfile::NamedTempFile, OwnedFd) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(bytes as u64).unwrap();
        let fd = OwnedFd::from(f.reopen().unwrap());
        (f, fd)
    }

    fn error(reply: &Reply) -> &str {
        match reply {
            Reply::Error { message, bad_input } => {
                assert!(bad_input, "{message}");
                message
            }
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn attach_and_detach_answer_and_bad_slots_are_errors() {
        let s = slots(2);
        let (file, fd) = disk(8192);
        let attach = |slot| Request::Attach {
            slot,
            read_only: false,
            path: file.path().to_path_buf(),
        };
        let (r, next) = handle(&s, &no_vcpus(), Ok(attach(1)), Some(fd));
        assert_eq!(
            r,
            Reply::Attached {
                slot: 1,
                capacity: 16
            }
        );
        assert_eq!(next, Next::Continue);
        assert_eq!(s[1].attachment().unwrap().path, file.path());
        let (_, fd) = disk(512);
        let (r, _) = handle(&s, &no_vcpus(), Ok(attach(1)), Some(fd));
        assert!(error(&r).contains("already holds"), "{r:?}");
        let (_, fd) = disk(512);
        let (r, _) = handle(&s, &no_vcpus(), Ok(attach(2)), Some(fd));
        assert!(
            error(&r).contains("no virtio-blk slot 2: the VM has 2"),
            "{r:?}"
        );
        let (r, _) = handle(&s, &no_vcpus(), Ok(attach(usize::MAX)), None);
        assert!(error(&r).contains("no virtio-blk slot"), "{r:?}");
        let (r, _) = handle(&s, &no_vcpus(), Ok(attach(0)), None);
        assert!(error(&r).contains("fd did not come"), "{r:?}");
        assert!(s[0].attachment().is_none());
        // A directory is no disk.
        let dir = OwnedFd::from(std::fs::File::open("/").unwrap());
        let (r, _) = handle(&s, &no_vcpus(), Ok(attach(0)), Some(dir));
        assert!(
            error(&r).contains("neither a regular file nor a block device"),
            "{r:?}"
        );
        let (r, _) = handle(&s, &no_vcpus(), Ok(Request::Detach { slot: 1 }), None);
        assert_eq!(
            r,
            Reply::Detached {
                slot: 1,
                held: true
            }
        );
        let (r, _) = handle(&s, &no_vcpus(), Ok(Request::Detach { slot: 1 }), None);
        assert_eq!(
            r,
            Reply::Detached {
                slot: 1,
                held: false
            }
        );
        let (r, _) = handle(&s, &no_vcpus(), Ok(Request::Detach { slot: 9 }), None);
        assert!(error(&r).contains("no virtio-blk slot 9"), "{r:?}");
    }

    #[test]
    fn malformed_unknown_and_repeated_requests_are_errors_and_stop_stops() {
        let s = slots(1);
        let (r, next) = handle(&s, &no_vcpus(), Err(MessageError::TooLong), None);
        assert!(error(&r).contains("longer than 65536"), "{r:?}");
        assert_eq!(next, Next::Continue);
        let (r, _) = handle(
            &s,
            &no_vcpus(),
            Err(MessageError::Malformed("unknown variant `Reboot`".into())),
            None,
        );
        assert!(error(&r).contains("Reboot"), "{r:?}");
        let start = Request::Start {
            config: Box::new(VmConfig::new("/k")),
            jail: JailConfig::new("/s"),
        };
        let (r, _) = handle(&s, &no_vcpus(), Ok(start), None);
        assert!(error(&r).contains("already started"), "{r:?}");
        let (_, fd) = disk(512);
        let (r, next) = handle(&s, &no_vcpus(), Ok(Request::Stop), Some(fd));
        assert!(error(&r).contains("only Attach carries an fd"), "{r:?}");
        assert_eq!(next, Next::Continue);
        assert_eq!(
            handle(&s, &no_vcpus(), Ok(Request::Stop), None),
            (Reply::Stopping, Next::Stop)
        );
    }

    #[test]
    fn pause_and_resume_set_the_gate_and_take_no_fd() {
        let s = slots(1);
        let pauser = no_vcpus();
        assert_eq!(
            handle(&s, &pauser, Ok(Request::Pause), None),
            (Reply::Paused, Next::Continue)
        );
        assert!(pauser.paused());
        let (_, fd) = disk(512);
        let (r, _) = handle(&s, &pauser, Ok(Request::Resume), Some(fd));
        assert!(error(&r).contains("only Attach carries an fd"), "{r:?}");
        assert!(pauser.paused(), "a refused Resume changes nothing");
        assert_eq!(
            handle(&s, &pauser, Ok(Request::Resume), None),
            (Reply::Resumed, Next::Continue)
        );
        assert!(!pauser.paused());
    }

    /// Request `request` with id `id`.
    fn message(id: u64, request: Request) -> RequestMessage {
        RequestMessage { id, request }
    }

    #[test]
    fn the_loop_answers_every_request_with_its_id_and_ends_on_stop_or_a_gone_runtime() {
        let s = slots(1);
        let latch = ExitLatch::new().unwrap();
        let (mut runtime, mut vmm) = Channel::pair().unwrap();
        runtime
            .send(&message(41, Request::Detach { slot: 0 }), None)
            .unwrap();
        runtime.send(&message(42, Request::Stop), None).unwrap();
        assert_eq!(
            serve(&mut vmm, &s, &no_vcpus(), &latch).unwrap(),
            ExitReason::Stopped
        );
        assert_eq!(
            runtime.recv::<ReplyMessage>().unwrap().message.unwrap(),
            ReplyMessage {
                id: Some(41),
                reply: Reply::Detached {
                    slot: 0,
                    held: false
                }
            }
        );
        assert_eq!(
            runtime.recv::<ReplyMessage>().unwrap().message.unwrap(),
            ReplyMessage {
                id: Some(42),
                reply: Reply::Stopping
            }
        );

        // The guest ends the VM: the loop returns its reason.
        let latch = ExitLatch::new().unwrap();
        latch.trigger(ExitReason::PowerOff);
        assert_eq!(
            serve(&mut vmm, &s, &no_vcpus(), &latch).unwrap(),
            ExitReason::PowerOff
        );

        // The runtime goes away: the VM is stopped.
        let latch = ExitLatch::new().unwrap();
        drop(runtime);
        assert!(matches!(
            serve(&mut vmm, &s, &no_vcpus(), &latch),
            Err(ChannelError::Closed)
        ));
        assert_eq!(latch.reason(), Some(ExitReason::Stopped));
    }

    #[test]
    fn a_request_without_a_valid_id_is_an_error_without_one() {
        let s = slots(1);
        let (mut runtime, mut vmm) = Channel::pair().unwrap();
        // No id, a negative one, a string, then a malformed request with a good id, and
        // a Stop that ends the loop.
        runtime
            .send(&serde_json::json!({"type": "Detach", "slot": 0}), None)
            .unwrap();
        runtime
            .send(&serde_json::json!({"id": -1, "type": "Stop"}), None)
            .unwrap();
        runtime
            .send(&serde_json::json!({"id": "7", "type": "Stop"}), None)
            .unwrap();
        runtime
            .send(&serde_json::json!({"id": 8, "type": "Reboot"}), None)
            .unwrap();
        runtime.send(&message(9, Request::Stop), None).unwrap();
        let latch = ExitLatch::new().unwrap();
        assert_eq!(
            serve(&mut vmm, &s, &no_vcpus(), &latch).unwrap(),
            ExitReason::Stopped
        );
        let mut next = || runtime.recv::<ReplyMessage>().unwrap().message.unwrap();
        let r = next();
        assert_eq!(r.id, None);
        assert!(error(&r.reply).contains("the request has no `id`"), "{r:?}");
        let r = next();
        assert_eq!(r.id, None);
        assert!(
            error(&r.reply).contains("the request's `id` is -1, not an unsigned 64-bit integer"),
            "{r:?}"
        );
        let r = next();
        assert_eq!(r.id, None);
        assert!(error(&r.reply).contains("`id` is \"7\""), "{r:?}");
        let r = next();
        assert_eq!(r.id, Some(8));
        assert!(error(&r.reply).contains("Reboot"), "{r:?}");
        assert_eq!(
            next(),
            ReplyMessage {
                id: Some(9),
                reply: Reply::Stopping
            }
        );
        // A line that is no JSON at all: its error, without an id.
        assert!(matches!(
            open(Err(MessageError::NotALine)),
            Err(ReplyMessage { id: None, reply: Reply::Error { message, .. } })
                if message.contains("not one line")
        ));
    }

    #[test]
    fn a_first_request_other_than_start_is_refused() {
        let (mut runtime, mut vmm) = Channel::pair().unwrap();
        runtime.send(&message(1, Request::Stop), None).unwrap();
        assert!(matches!(
            run(&mut vmm),
            Outcome::StartFailed { bad_input: true }
        ));
        let r = runtime.recv::<ReplyMessage>().unwrap().message.unwrap();
        assert_eq!(r.id, Some(1));
        assert!(
            error(&r.reply).contains("the first request must be Start"),
            "{r:?}"
        );
        // A VM config the VMM refuses is answered, as bad input.
        let start = Request::Start {
            config: Box::new(VmConfig::new("/nonexistent/vmlinux")),
            jail: JailConfig::new("/nonexistent/jail"),
        };
        runtime.send(&message(2, start), None).unwrap();
        assert!(matches!(
            run(&mut vmm),
            Outcome::StartFailed { bad_input: true }
        ));
        let r = runtime.recv::<ReplyMessage>().unwrap().message.unwrap();
        assert_eq!(r.id, Some(2));
        assert!(error(&r.reply).contains("/nonexistent/jail"), "{r:?}");
        // A Start without an id is refused, without one.
        runtime
            .send(&serde_json::json!({"type": "Stop"}), None)
            .unwrap();
        assert!(matches!(
            run(&mut vmm),
            Outcome::StartFailed { bad_input: true }
        ));
        let r = runtime.recv::<ReplyMessage>().unwrap().message.unwrap();
        assert_eq!(r.id, None);
        assert!(error(&r.reply).contains("no `id`"), "{r:?}");
    }
}
