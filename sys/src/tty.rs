//! Terminals.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The window size of the terminal `fd` as (rows, columns); `None` when `fd` is no
/// terminal or the terminal has no size set (0 rows).
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a winsize struct, which `ws` is, owned here; `fd` is
    // open for the borrow's lifetime.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((u32::from(ws.ws_row), u32::from(ws.ws_col)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    #[test]
    fn a_file_has_no_window_size() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(window_size(f.as_fd()), None);
    }

    #[test]
    fn a_pty_reports_the_size_set_on_it() {
        // SAFETY: posix_openpt returns a new fd or -1; it is owned at once.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(master >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `master` is a fresh fd nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let ws = libc::winsize {
            ws_row: 42,
            ws_col: 132,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ only reads the winsize struct it is given.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(window_size(master.as_fd()), Some((42, 132)));
    }
}
