//! Tap interfaces (`/dev/net/tun`) as ember uses them: `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, the one set of flags both the runtime (which creates a persistent tap in
//! the pod's namespace) and the VMM (which attaches to it by name) open it with; the
//! kernel refuses to attach with other flags.
//!
//! Raw ioctls: no crate on ember's dependency line wraps TUNSETIFF with IFF_VNET_HDR, and
//! the calls are a handful. To open a tap in another network namespace, open it inside
//! [`crate::netns::run_in`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// The flags every ember tap has: a tap (Ethernet frames), no packet information header,
/// a virtio-net header on every frame.
pub const FLAGS: libc::c_short = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

/// A tap that cannot be opened or set up.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit IFNAMSIZ.
    #[error("tap name `{0}` must be 1 to 15 bytes")]
    BadName(String),
    /// /dev/net/tun cannot be opened.
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded, and do we have CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] io::Error),
    /// An ioctl failed.
    #[error("{what} on tap {name} failed: {source} (creating or attaching a tap needs CAP_NET_ADMIN; an existing tap must have ember's flags)")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The tap.
        name: String,
        /// Why.
        source: io::Error,
    },
}

/// An open tap: the `/dev/net/tun` file attached to the interface.
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

/// Checks that `name` can name an interface: 1 to 15 bytes (IFNAMSIZ with its NUL).
pub fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::BadName(name.to_string()));
    }
    Ok(())
}

impl Tap {
    /// Opens tap `name` in the calling thread's network namespace with [`FLAGS`], creating
    /// it if it does not exist (non-persistent: it goes with the last fd unless
    /// [`Tap::set_persist`] keeps it). `nonblocking` opens it `O_NONBLOCK`; it is always
    /// `O_CLOEXEC`.
    pub fn open(name: &str, nonblocking: bool) -> Result<Tap, TapError> {
        check_name(name)?;
        let flags = if nonblocking { libc::O_NONBLOCK } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: FLAGS,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        tap.ioctl("TUNSETIFF", TUNSETIFF, (&mut req as *mut IfReq).cast())?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the size of the virtio-net header the tap exchanges with every frame.
    pub fn set_vnet_hdr_size(&self, len: usize) -> Result<(), TapError> {
        let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        self.ioctl(
            "TUNSETVNETHDRSZ",
            TUNSETVNETHDRSZ,
            (&len as *const libc::c_int).cast(),
        )
    }

    /// Turns every offload off: the tap passes plain frames.
    pub fn clear_offloads(&self) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes its flags by value; 0 is none.
        self.ioctl("TUNSETOFFLOAD", TUNSETOFFLOAD, std::ptr::null())
    }

    /// Keeps the interface after its last fd closes (`persist`), or not.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        // TUNSETPERSIST takes its flag by value, passed here as the pointer-sized argument.
        self.ioctl(
            "TUNSETPERSIST",
            TUNSETPERSIST,
            usize::from(persist) as *const libc::c_void,
        )
    }

    /// The open `/dev/net/tun` file.
    pub fn into_file(self) -> File {
        self.file
    }

    fn ioctl(
        &self,
        what: &'static str,
        request: libc::c_ulong,
        arg: *const libc::c_void,
    ) -> Result<(), TapError> {
        // SAFETY: the tun ioctls used here take their argument by value or read (and
        // TUNSETIFF writes) only the pointed-to value, which the caller owns for the call;
        // the fd is ours.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), request, arg) } < 0 {
            return Err(TapError::Ioctl {
                what,
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_ifnamsiz() {
        for bad in ["", "0123456789abcdef", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
            assert!(matches!(Tap::open(bad, true), Err(TapError::BadName(_))));
        }
        check_name("0123456789abcde").unwrap();
        check_name("tap0").unwrap();
    }

    #[test]
    fn opens_a_tap_and_keeps_it_only_when_persistent() {
        if !crate::needs_root("tap::opens_a_tap_and_keeps_it_only_when_persistent") {
            return;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            crate::skip_line(
                "tap::opens_a_tap_and_keeps_it_only_when_persistent",
                "no /dev/net/tun on this host",
            );
            return;
        }
        // On a thread in a network namespace of its own, so no tap is left on the host.
        let name = "embersystest0";
        std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // /sys shows the namespace of whoever mounted it, so ask the kernel by name.
            let index = || {
                let c = std::ffi::CString::new(name).unwrap();
                // SAFETY: a valid NUL-terminated name.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            let tap = Tap::open(name, true).unwrap();
            assert_eq!(tap.name(), name);
            tap.set_vnet_hdr_size(12).unwrap();
            tap.clear_offloads().unwrap();
            assert_ne!(index(), 0);
            drop(tap);
            assert_eq!(index(), 0, "a non-persistent tap goes with its fd");
            let tap = Tap::open(name, false).unwrap();
            tap.set_persist(true).unwrap();
            drop(tap);
            assert_ne!(index(), 0, "a persistent tap stays");
            // Attaching again with the same flags works; then let it go.
            let tap = Tap::open(name, true).unwrap();
            tap.set_persist(false).unwrap();
            drop(tap);
            assert_eq!(index(), 0);
        })
        .join()
        .unwrap();
    }
}
