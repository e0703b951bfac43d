//! A tap interface (`/dev/net/tun`, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), optionally
//! created inside another network namespace (the pod's).
//!
//! Opened with raw ioctls: no crate on ember's rust-vmm line wraps TUNSETIFF with
//! IFF_VNET_HDR and namespaces, and the calls are three ioctls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Size of `virtio_net_hdr_v1`, which the tap exchanges with every frame.
pub const VNET_HDR_LEN: usize = 12;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Errors of opening a tap.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit IFNAMSIZ.
    #[error("tap name `{0}` must be 1 to 15 bytes")]
    BadName(String),
    /// The network namespace cannot be entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// /dev/net/tun cannot be opened.
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded, and do we have CAP_NET_ADMIN?)"
    )]
    OpenTun(io::Error),
    /// An ioctl failed.
    #[error("{what} on tap {name} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The tap.
        name: String,
        /// Why.
        source: io::Error,
    },
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Open (creating if needed) tap `name`, in the network namespace at `netns` if given.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::BadName(name.to_string()));
        }
        match netns {
            None => Self::open_here(name),
            Some(ns) => {
                // setns() changes only the calling thread; a short-lived thread enters the
                // namespace, opens the tap (which stays bound to that namespace) and ends.
                let ns = ns.to_path_buf();
                let name = name.to_string();
                std::thread::spawn(move || {
                    let f = File::open(&ns).map_err(|source| TapError::Netns {
                        path: ns.clone(),
                        source,
                    })?;
                    // SAFETY: setns on a namespace fd we opened; affects this thread only.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(TapError::Netns {
                            path: ns,
                            source: io::Error::last_os_error(),
                        });
                    }
                    Self::open_here(&name)
                })
                .join()
                .expect("tap thread does not panic")
            }
        }
    }

    fn open_here(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl = |what, request, arg: *const libc::c_void| {
            // SAFETY: the tun ioctls read (and TUNSETIFF writes) only the pointed-to value.
            if unsafe { libc::ioctl(file.as_raw_fd(), request, arg) } < 0 {
                Err(TapError::Ioctl {
                    what,
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                })
            } else {
                Ok(())
            }
        };
        ioctl("TUNSETIFF", TUNSETIFF, (&mut req as *mut IfReq).cast())?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl(
            "TUNSETVNETHDRSZ",
            TUNSETVNETHDRSZ,
            (&hdr_len as *const libc::c_int).cast(),
        )?;
        // No offloads to start with: the guest gets plain frames.
        ioctl("TUNSETOFFLOAD", TUNSETOFFLOAD, std::ptr::null())?;
        Ok(Self {
            file,
            name: name.to_string(),
        })
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
