//! A tap interface (`/dev/net/tun`, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), optionally
//! created inside another network namespace (the pod's).
//!
//! Opened with `ember_sys::tap` (the flags the runtime creates the pod's tap with), in the
//! namespace through `ember_sys::netns`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use thiserror::Error;

/// Size of `virtio_net_hdr_v1`, which the tap exchanges with every frame.
pub const VNET_HDR_LEN: usize = 12;

/// Errors of opening a tap.
#[derive(Debug, Error)]
pub enum TapError {
    /// The network namespace cannot be entered.
    #[error(transparent)]
    Netns(#[from] ember_sys::netns::NetnsError),
    /// The tap cannot be opened or set up.
    #[error(transparent)]
    Tap(#[from] ember_sys::tap::TapError),
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Open (creating if needed) tap `name`, in the network namespace at `netns` if given.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Self, TapError> {
        ember_sys::tap::check_name(name)?;
        match netns {
            None => Self::open_here(name),
            Some(ns) => ember_sys::netns::run_in(ns, || Self::open_here(name))?,
        }
    }

    fn open_here(name: &str) -> Result<Self, TapError> {
        let tap = ember_sys::tap::Tap::open(name, true)?;
        tap.set_vnet_hdr_size(VNET_HDR_LEN)?;
        // No offloads to start with: the guest gets plain frames.
        tap.clear_offloads()?;
        Ok(Self {
            name: name.to_string(),
            file: tap.into_file(),
        })
    }

    /// A device end that behaves as a tap: `file` carries one frame (with its vnet header)
    /// per read and write, as a datagram socket does; tests and fuzzing stand one end of
    /// a socket pair in for a tap they cannot create.
    pub fn from_file(name: &str, file: File) -> Self {
        Self {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame (with its vnet header) into `buf`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Write one frame (with its vnet header).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes frame.len() bytes from frame.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
