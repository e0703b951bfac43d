//! Listen/connect addresses of the agent: `unix://PATH` or `vsock://PORT` (`vsock://CID:PORT`
//! when connecting from a guest-side client), and the derived address of the stdio stream
//! listener.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Suffix appended to the ttrpc socket path to name the stdio stream socket.
pub const UNIX_STREAM_SUFFIX: &str = ".stdio";

/// Errors parsing an [`Address`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// The scheme is neither `unix://` nor `vsock://`.
    #[error("address {0:?}: expected unix://PATH or vsock://PORT")]
    Scheme(String),
    /// `unix://` with an empty or relative path.
    #[error("address {0:?}: unix:// needs an absolute socket path")]
    UnixPath(String),
    /// A vsock port or cid that is not a number.
    #[error("address {0:?}: vsock:// needs a numeric port (vsock://PORT or vsock://CID:PORT)")]
    VsockPort(String),
    /// A vsock port whose stdio port (port + 1) would overflow.
    #[error(
        "address {0:?}: vsock port must be below 4294967295 (the stdio listener uses port + 1)"
    )]
    VsockPortRange(String),
}

/// Where the agent listens (or a client connects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A vsock port; `cid` is used only by clients (the agent binds any cid).
    Vsock {
        /// Context id to connect to (ignored when listening).
        cid: u32,
        /// Port number.
        port: u32,
    },
}

impl Address {
    /// The address of the stdio stream listener that belongs to this ttrpc address:
    /// `unix://PATH` → `unix://PATH.stdio`, `vsock://PORT` → `vsock://PORT+1`.
    pub fn stdio_address(&self) -> Address {
        match self {
            Address::Unix(p) => {
                let mut s = p.clone().into_os_string();
                s.push(UNIX_STREAM_SUFFIX);
                Address::Unix(PathBuf::from(s))
            }
            Address::Vsock { cid, port } => Address::Vsock {
                cid: *cid,
                port: port + 1,
            },
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(AddressError::UnixPath(s.to_string()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = match rest.split_once(':') {
                Some((c, p)) => (
                    c.parse::<u32>()
                        .map_err(|_| AddressError::VsockPort(s.to_string()))?,
                    p,
                ),
                None => (u32::MAX, rest), // VMADDR_CID_ANY
            };
            let port = port
                .parse::<u32>()
                .map_err(|_| AddressError::VsockPort(s.to_string()))?;
            if port == u32::MAX {
                return Err(AddressError::VsockPortRange(s.to_string()));
            }
            return Ok(Address::Vsock { cid, port });
        }
        Err(AddressError::Scheme(s.to_string()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Vsock {
                cid: u32::MAX,
                port,
            } => write!(f, "vsock://{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_stdio_addresses() {
        let a: Address = "unix:///run/ember/agent.sock".parse().unwrap();
        assert_eq!(a, Address::Unix("/run/ember/agent.sock".into()));
        assert_eq!(
            a.stdio_address().to_string(),
            "unix:///run/ember/agent.sock.stdio"
        );
        let v: Address = "vsock://1024".parse().unwrap();
        assert_eq!(v.stdio_address().to_string(), "vsock://1025");
        let v: Address = "vsock://3:1024".parse().unwrap();
        assert_eq!(v, Address::Vsock { cid: 3, port: 1024 });
    }

    #[test]
    fn rejects_bad_addresses_naming_them() {
        let e = "tcp://x".parse::<Address>().unwrap_err();
        assert!(e.to_string().contains("tcp://x"));
        assert!(matches!(
            "unix://rel".parse::<Address>(),
            Err(AddressError::UnixPath(_))
        ));
        assert!(matches!(
            "vsock://abc".parse::<Address>(),
            Err(AddressError::VsockPort(_))
        ));
    }
}
