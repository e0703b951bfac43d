//! The control channel's transport: a `SOCK_SEQPACKET` Unix socket pair, one JSON line
//! per packet, at most one fd per packet in `SCM_RIGHTS`.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so a message and the fd sent with it
//! arrive together and a receiver never buffers a partial line: a packet longer than
//! [`MAX_MESSAGE`] is cut by the kernel (`MSG_TRUNC`) and refused, never allocated for.
//! `recvmsg` is called through libc rather than nix: with more fds than the control
//! buffer holds (`MSG_CTRUNC`) nix's iterator refuses to list the ones that did arrive,
//! which would leak them; here every fd received is owned, and closed unless it is the
//! one the message may carry.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// The longest message, newline included: 64 KiB.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// How many fds the receive buffer has room for: one more than a message may carry,
/// so that an extra fd is seen (and closed) rather than cut off.
const FD_ROOM: usize = 2;

/// A failure of the channel itself: it cannot be used any more.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The peer closed its end.
    #[error("the control channel's peer closed it")]
    Closed,
    /// Nothing came in time (see [`Channel::set_timeout`]).
    #[error("no message from the peer in time")]
    Timeout,
    /// A system call on the socket failed.
    #[error("control channel: {what}: {source}")]
    Io {
        /// Which call.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A message to send does not fit [`MAX_MESSAGE`] or cannot be encoded.
    #[error("control channel: cannot send {what}: {why}")]
    Send {
        /// The message's kind.
        what: String,
        /// Why.
        why: String,
    },
}

/// A message that arrived but cannot be taken: the message fails, the channel stays.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// Not one line ending in a newline.
    #[error("message is not one line ending in a newline")]
    NotALine,
    /// Not a known message, or malformed JSON.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// More than one fd came with the message.
    #[error("a message carries at most one fd; {0} came")]
    TooManyFds(usize),
}

/// One end of the control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// What one receive gave: the message (or why it is refused) and the fd sent with it.
#[derive(Debug)]
pub struct Received<T> {
    /// The decoded message.
    pub message: Result<T, MessageError>,
    /// The fd that came with it (closed on drop if unused).
    pub fd: Option<OwnedFd>,
}

impl Channel {
    /// A connected pair (close-on-exec; the runtime clears that flag on the end it hands
    /// to `ember-vmm` by `dup2`ing it to fd 3).
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| ChannelError::Io {
            what: "socketpair",
            source: e.into(),
        })?;
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    /// The channel over `fd`, a connected `SOCK_SEQPACKET` Unix socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            buf: vec![0; MAX_MESSAGE],
        }
    }

    /// Bound how long [`Channel::recv`] waits (`SO_RCVTIMEO`; `None`: forever). Past it,
    /// `recv` fails with [`ChannelError::Timeout`].
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), ChannelError> {
        let tv = nix::sys::time::TimeVal::from(timeout.map_or(
            libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            |t| libc::timeval {
                tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_usec: t.subsec_micros().into(),
            },
        ));
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| ChannelError::Io {
                what: "setsockopt(SO_RCVTIMEO)",
                source: e.into(),
            })
    }

    /// Make [`Channel::recv`] return at once ([`ChannelError::Timeout`]) when nothing is
    /// queued, or wait again.
    pub fn set_nonblocking(&self, on: bool) -> Result<(), ChannelError> {
        let io = |e: nix::errno::Errno| ChannelError::Io {
            what: "fcntl(O_NONBLOCK)",
            source: e.into(),
        };
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags =
            OFlag::from_bits_truncate(fcntl(self.fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io)?);
        let flags = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        fcntl(self.fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io)?;
        Ok(())
    }

    /// Send `message` as one JSON line, with `fd` if given.
    pub fn send<T: Serialize + std::fmt::Debug>(
        &self,
        message: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ChannelError> {
        let mut line = serde_json::to_vec(message).map_err(|e| ChannelError::Send {
            what: kind_of(message),
            why: e.to_string(),
        })?;
        line.push(b'\n');
        if line.len() > MAX_MESSAGE {
            return Err(ChannelError::Send {
                what: kind_of(message),
                why: format!("{} bytes, more than {MAX_MESSAGE}", line.len()),
            });
        }
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        let iov = [IoSlice::new(&line)];
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => {
                    return Err(ChannelError::Io {
                        what: "sendmsg",
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Receive one message (blocking).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Received<T>, ChannelError> {
        let (len, truncated, mut fds) = self.recv_packet()?;
        let fd = match fds.len() {
            0 | 1 => fds.pop(),
            n => {
                return Ok(Received {
                    message: Err(MessageError::TooManyFds(n)),
                    fd: None,
                })
            }
        };
        let message = if truncated {
            Err(MessageError::TooLong)
        } else {
            decode(&self.buf[..len])
        };
        Ok(Received { message, fd })
    }

    /// One packet into `buf`: its length, whether it was cut, and the fds that came.
    fn recv_packet(&mut self) -> Result<(usize, bool, Vec<OwnedFd>), ChannelError> {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE((FD_ROOM * std::mem::size_of::<RawFd>()) as u32) };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = vec![0u64; (space as usize).div_ceil(8)];
        loop {
            let mut iov = libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: self.buf.len(),
            };
            // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() * 8;
            // SAFETY: `msg` points at live buffers of the lengths it gives.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(ChannelError::Timeout);
                }
                return Err(ChannelError::Io {
                    what: "recvmsg",
                    source: e,
                });
            }
            let fds = received_fds(&msg);
            if n == 0 && msg.msg_flags & libc::MSG_TRUNC == 0 {
                // A zero-length packet is never sent (every message ends in a newline):
                // this is the peer's end of stream.
                return Err(ChannelError::Closed);
            }
            let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
            return Ok((n as usize, truncated, fds));
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Every fd in the `SCM_RIGHTS` messages of `msg`, owned.
fn received_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: walks the control buffer the kernel filled, with the libc macros, which
    // stay within msg_controllen; each SCM_RIGHTS payload is an array of fds that this
    // process now owns.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

/// A message from one line of JSON.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let line = bytes.strip_suffix(b"\n").ok_or(MessageError::NotALine)?;
    if line.contains(&b'\n') {
        return Err(MessageError::NotALine);
    }
    serde_json::from_slice(line).map_err(|e| MessageError::Malformed(e.to_string()))
}

/// A message's kind for error messages: its Debug form up to the first brace or space.
fn kind_of<T: std::fmt::Debug>(message: &T) -> String {
    let s = format!("{message:?}");
    s.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Seek;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Msg {
        text: String,
    }

    fn raw_send(ch: &Channel, bytes: &[u8], fds: &[RawFd]) {
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<()>(
            ch.fd.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_message_and_its_fd_arrive_together() {
        let (a, mut b) = Channel::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"12345").unwrap();
        a.send(&Msg { text: "one".into() }, Some(file.as_fd()))
            .unwrap();
        a.send(&Msg { text: "two".into() }, None).unwrap();
        let r = b.recv::<Msg>().unwrap();
        assert_eq!(r.message.unwrap().text, "one");
        let mut got = std::fs::File::from(r.fd.expect("the fd came"));
        assert_eq!(got.seek(std::io::SeekFrom::End(0)).unwrap(), 5);
        let r = b.recv::<Msg>().unwrap();
        assert_eq!(r.message.unwrap().text, "two");
        assert!(r.fd.is_none());
    }

    #[test]
    fn bad_messages_fail_alone_and_the_channel_goes_on() {
        let (a, mut b) = Channel::pair().unwrap();
        let big = vec![b'x'; MAX_MESSAGE + 100];
        raw_send(&a, &big, &[]);
        raw_send(&a, b"{\"text\":\"no newline\"}", &[]);
        raw_send(&a, b"{\"text\":\"a\"}\n{\"text\":\"b\"}\n", &[]);
        raw_send(&a, b"{\"nope\":1}\n", &[]);
        raw_send(&a, b"\xff\xfe\n", &[]);
        let f1 = tempfile::tempfile().unwrap();
        let f2 = tempfile::tempfile().unwrap();
        raw_send(
            &a,
            b"{\"text\":\"fds\"}\n",
            &[f1.as_raw_fd(), f2.as_raw_fd(), f1.as_raw_fd()],
        );
        a.send(&Msg { text: "ok".into() }, None).unwrap();
        let errors: Vec<MessageError> = (0..6)
            .map(|_| b.recv::<Msg>().unwrap().message.unwrap_err())
            .collect();
        assert_eq!(errors[0], MessageError::TooLong);
        assert_eq!(errors[1], MessageError::NotALine);
        assert_eq!(errors[2], MessageError::NotALine);
        assert!(
            matches!(&errors[3], MessageError::Malformed(m) if m.contains("missing field `text`")),
            "{:?}",
            errors[3]
        );
        assert!(matches!(errors[4], MessageError::Malformed(_)));
        assert!(
            matches!(errors[5], MessageError::TooManyFds(n) if n >= 2),
            "{:?}",
            errors[5]
        );
        assert_eq!(b.recv::<Msg>().unwrap().message.unwrap().text, "ok");
        drop(a);
        assert!(matches!(b.recv::<Msg>(), Err(ChannelError::Closed)));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, mut b) = Channel::pair().unwrap();
        b.set_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(ChannelError::Timeout)));
        b.set_timeout(None).unwrap();
        b.set_nonblocking(true).unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(ChannelError::Timeout)));
    }

    #[test]
    fn a_message_over_the_limit_is_not_sent() {
        let (a, _b) = Channel::pair().unwrap();
        let e = a
            .send(
                &Msg {
                    text: "x".repeat(MAX_MESSAGE),
                },
                None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("cannot send Msg"), "{e}");
    }
}
