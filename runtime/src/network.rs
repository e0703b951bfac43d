//! Pod networking of the `microvm` backend: the tap the VM's virtio-net uses, created in the
//! pod's network namespace. (The `process` backend's agent joins the pod namespace directly
//! and needs none of this.)

use std::path::Path;

/// Errors managing taps.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command of iproute2 failed.
    #[error("{what}: {message}")]
    Command {
        /// What was attempted.
        what: String,
        /// stderr of the command, or why it could not run.
        message: String,
    },
}

/// Deletes tap `name` (in network namespace `netns`, or the host's). A tap that is already
/// gone, or a namespace that no longer exists, counts as deleted.
pub fn delete_tap(name: &str, netns: Option<&Path>) -> Result<(), NetworkError> {
    if let Some(ns) = netns {
        if !ns.exists() {
            return Ok(());
        }
    }
    // iproute2 through nsenter (util-linux) rather than a netlink client: this runs only on
    // cleanup and neither rtnetlink crate is in the dependency set yet.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("ip");
            c
        }
        None => std::process::Command::new("ip"),
    };
    let out = cmd
        .args(["link", "del", name])
        .output()
        .map_err(|e| NetworkError::Command {
            what: format!("ip link del {name}"),
            message: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("Cannot find device") {
        Ok(())
    } else {
        Err(NetworkError::Command {
            what: format!("ip link del {name}"),
            message: stderr.trim().to_string(),
        })
    }
}
