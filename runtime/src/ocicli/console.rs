//! Terminals: for a process with `terminal: true`, a host pseudo-terminal whose master is
//! sent over the caller's `--console-socket` (SCM_RIGHTS, as runc does) and whose slave the
//! relay connects to the agent's stdio streams (the container's own terminal lives in the
//! sandbox; the host one carries its bytes and window size).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::error::OciCliError;

/// A host pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The master (sent to the console socket, then closed here).
    pub master: OwnedFd,
    /// The slave (the relay's side), in raw mode.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal pair with the slave in raw mode: the container's terminal does
/// the line editing and echo, the host one only carries bytes.
pub fn open_pty() -> Result<Pty, OciCliError> {
    let err = |e: nix::Error| OciCliError::Io {
        path: "/dev/ptmx".into(),
        source: std::io::Error::from(e),
    };
    let r = nix::pty::openpty(None, None).map_err(err)?;
    let mut t = nix::sys::termios::tcgetattr(&r.slave).map_err(err)?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&r.slave, nix::sys::termios::SetArg::TCSANOW, &t).map_err(err)?;
    Ok(Pty {
        master: r.master,
        slave: r.slave,
    })
}

/// Sends `fd` over the Unix socket at `path` with SCM_RIGHTS, with `name` as the message
/// (runc sends the terminal's path; callers only take the descriptor).
pub fn send_fd(path: &Path, fd: &OwnedFd, name: &str) -> Result<(), OciCliError> {
    let fail = |message: String| OciCliError::Console {
        path: path.to_path_buf(),
        message,
    };
    let sock = UnixStream::connect(path).map_err(|e| fail(format!("cannot connect: {e}")))?;
    let mut data = name.as_bytes().to_vec();
    if data.is_empty() {
        data.push(0);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsghdr with room for one int (CMSG_SPACE).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: msg is fully initialized above.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(fail(format!(
            "sendmsg: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Makes the terminal `fd` the controlling terminal of this process, which must be a
/// session leader (after setsid): then the kernel sends it SIGWINCH when the caller resizes
/// the master, and the relay passes the new size on.
pub fn make_controlling(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn master_arrives_over_the_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let pty = open_pty().unwrap();
        send_fd(&path, &pty.master, "/dev/pts/x").unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        let mut cbuf = vec![0u8; space];
        // SAFETY: msghdr is plain data; all zeroes is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg points at `iov` and `cbuf`, both alive and of the sizes it names.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) };
        assert!(n > 0);
        assert_eq!(&buf[..n as usize], b"/dev/pts/x");
        // SAFETY: recvmsg filled `cbuf`; the first header is checked for null and type
        // before its data (one int, the fd) is read.
        let fd = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert!(!c.is_null());
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>())
        };
        // SAFETY: SCM_RIGHTS gave this process a new fd that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        // What is written on the received master comes out of the slave.
        nix::unistd::write(&master, b"hi").unwrap();
        let mut out = [0u8; 2];
        nix::unistd::read(pty.slave.as_raw_fd(), &mut out).unwrap();
        assert_eq!(&out, b"hi");
    }
}
