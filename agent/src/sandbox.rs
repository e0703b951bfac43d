//! Sandbox-wide setup of CreateSandbox: hostname, DNS (a resolv.conf under the agent's
//! state directory, which the runtime bind-mounts into containers), sysctls and shared
//! storages; DestroySandbox unmounts them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ember_agent_protocol::agent::CreateSandboxRequest;

use crate::storage::{self, Mounted, StorageError};
use crate::syscall::Syscall;

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
    sys: Arc<dyn Syscall>,
    storages: Mutex<Vec<Mounted>>,
}

/// Writes sysctl `key` (dotted) in the agent's namespaces.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), SandboxError> {
    std::fs::write(sysctl_path(key)?, value).map_err(|e| SandboxError::Sysctl {
        key: key.to_string(),
        message: e.to_string(),
    })
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
    /// A sandbox keeping its files in `dir`, making its system calls through `sys`.
    pub fn new(dir: PathBuf, sys: Arc<dyn Syscall>) -> Sandbox {
        Sandbox {
            dir,
            sys,
            storages: Mutex::new(Vec::new()),
        }
    }

    /// Applies CreateSandbox.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<(), SandboxError> {
        for key in req.sysctls.keys() {
            sysctl_path(key)?;
        }
        if !req.hostname.is_empty() {
            self.sys
                .sethostname(&req.hostname)
                .map_err(|source| SandboxError::Hostname {
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
            write_sysctl(key, value)?;
        }
        let mounted = storage::mount_all(&*self.sys, &req.storages)?;
        self.storages.lock().expect("sandbox lock").extend(mounted);
        Ok(())
    }

    /// Unmounts the sandbox storages.
    pub fn destroy(&self) {
        let mounted = std::mem::take(&mut *self.storages.lock().expect("sandbox lock"));
        storage::unmount_all(&*self.sys, &mounted);
    }
}

#[cfg(test)]
mod tests {
    use ember_agent_protocol::agent::{storage::Driver, Storage};
    use nix::errno::Errno;
    use nix::mount::{MntFlags, MsFlags};

    use super::*;
    use crate::syscall::{Call, Recorder};

    fn request(hostname: &str, tmpfs_at: &Path) -> CreateSandboxRequest {
        let mut s = Storage::new();
        s.driver = Driver::TMPFS.into();
        s.mount_point = tmpfs_at.display().to_string();
        let mut req = CreateSandboxRequest::new();
        req.hostname = hostname.into();
        req.storages = vec![s];
        req
    }

    #[test]
    fn create_sets_the_hostname_then_mounts_the_storages_and_destroy_unmounts_them() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        let sys = Arc::new(Recorder::new());
        let sandbox = Sandbox::new(d.path().join("sandbox"), sys.clone());
        sandbox.create(&request("pod-a", &shared)).unwrap();
        let mount = Call::mount(
            Some("tmpfs"),
            &shared,
            Some("tmpfs"),
            MsFlags::empty(),
            None,
        );
        assert_eq!(
            sys.calls(),
            [Call::Sethostname("pod-a".into()), mount.clone()]
        );
        sandbox.destroy();
        assert_eq!(
            sys.calls()[2..],
            [Call::Umount(shared.clone(), MntFlags::MNT_DETACH)]
        );
        assert!(!shared.exists());
    }

    #[test]
    fn a_refused_hostname_is_named_and_nothing_is_mounted() {
        let d = tempfile::tempdir().unwrap();
        let sys = Arc::new(Recorder::new());
        sys.fail_when(|c| matches!(c, Call::Sethostname(_)), Errno::EPERM);
        let sandbox = Sandbox::new(d.path().join("sandbox"), sys.clone());
        let e = sandbox
            .create(&request("pod-a", &d.path().join("shared")))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "hostname \"pod-a\": EPERM: Operation not permitted");
        assert_eq!(sys.mounts(), []);
    }

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
