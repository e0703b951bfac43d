//! Sandbox-wide setup of CreateSandbox: hostname, DNS (a resolv.conf under the agent's
//! state directory, which the runtime bind-mounts into containers), sysctls and shared
//! storages; DestroySandbox unmounts them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ember_agent_protocol::agent::CreateSandboxRequest;

use crate::storage::{self, Mounted, StorageError};

/// Errors of sandbox setup.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// sethostname failed.
    #[error("hostname {name:?}: {source}")]
    Hostname {
        /// The requested name.
        name: String,
        /// Why.
        source: nix::Error,
    },
    /// A sysctl key is malformed or could not be written.
    #[error("sysctls[{key}]: {message}")]
    Sysctl {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// Writing resolv.conf failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A storage could not be mounted.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The sandbox's state.
pub struct Sandbox {
    dir: PathBuf,
    storages: Mutex<Vec<Mounted>>,
}

/// The /proc/sys path of a dotted sysctl key, refusing keys that escape /proc/sys.
pub fn sysctl_path(key: &str) -> Result<PathBuf, SandboxError> {
    let bad = |m: &str| SandboxError::Sysctl {
        key: key.to_string(),
        message: m.to_string(),
    };
    if key.is_empty() || key.split(['.', '/']).any(|p| p.is_empty() || p == "..") {
        return Err(bad("not a sysctl name (expected e.g. net.ipv4.ip_forward)"));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// The text of a resolv.conf for `dns` nameservers and `search` domains.
pub fn resolv_conf(dns: &[String], search: &[String]) -> String {
    let mut s = String::new();
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    s
}

impl Sandbox {
    /// A sandbox keeping its files in `dir`.
    pub fn new(dir: PathBuf) -> Sandbox {
        Sandbox {
            dir,
            storages: Mutex::new(Vec::new()),
        }
    }

    /// Applies CreateSandbox.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<(), SandboxError> {
        for key in req.sysctls.keys() {
            sysctl_path(key)?;
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|source| SandboxError::Hostname {
                name: req.hostname.clone(),
                source,
            })?;
        }
        if !req.dns.is_empty() || !req.dns_search.is_empty() {
            let path = self.dir.join("resolv.conf");
            std::fs::create_dir_all(&self.dir)
                .and_then(|_| std::fs::write(&path, resolv_conf(&req.dns, &req.dns_search)))
                .map_err(|source| SandboxError::Write { path, source })?;
        }
        for (key, value) in &req.sysctls {
            std::fs::write(sysctl_path(key)?, value).map_err(|e| SandboxError::Sysctl {
                key: key.clone(),
                message: e.to_string(),
            })?;
        }
        let mounted = storage::mount_all(&req.storages)?;
        self.storages.lock().expect("sandbox lock").extend(mounted);
        Ok(())
    }

    /// Unmounts the sandbox storages.
    pub fn destroy(&self) {
        let mounted = std::mem::take(&mut *self.storages.lock().expect("sandbox lock"));
        storage::unmount_all(&mounted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_into_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("../../etc/passwd").is_err());
    }

    #[test]
    fn resolv_conf_lists_servers_and_search() {
        let s = resolv_conf(&["10.0.0.1".into()], &["example.org".into()]);
        assert_eq!(s, "nameserver 10.0.0.1\nsearch example.org\n");
    }
}
